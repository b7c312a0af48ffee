"""What every generation loop shares besides its forwards (``tinyllm.nn.module.inference``
runs those in eval mode without gradients): stop conditions and counts.

``Stops`` turns each new column of tokens into what the stream yields, and says which rows
have stopped; ``GenerationStats`` counts tokens and forward passes, for tokens/s and for
speculative decoding's acceptance rate.
"""

from dataclasses import dataclass

import numpy as np


@dataclass
class GenerationStats:
    """Counts of one generation, filled in as it runs (pass one as ``stats=``).

    ``new_tokens``: tokens produced (the stopping token included; per batch row).
    ``target_forwards``: forward passes of the model generated with (prefill included).
    ``drafted`` and ``accepted``: speculative decoding's proposed and accepted tokens.
    """

    new_tokens: int = 0
    target_forwards: int = 0
    drafted: int = 0
    accepted: int = 0

    @property
    def acceptance_rate(self):
        """The share of proposed tokens the target accepted (nan when none was proposed)."""
        return self.accepted / self.drafted if self.drafted else float("nan")

    @property
    def tokens_per_forward(self):
        """New tokens per forward pass of the target: 1 without speculation, up to k + 1."""
        return self.new_tokens / self.target_forwards if self.target_forwards else float("nan")


class Stops:
    """Which rows have stopped, and the text each has produced so far (with ``decode``)."""

    def __init__(self, batch, prompt_length, stop_token_ids, stop_strings, decode, pad_id):
        self.stopped = np.zeros(batch, dtype=bool)  # (B,)
        self.produced = np.zeros(batch, dtype=np.int64)  # (B,) new tokens, stop token included
        self.prompt_length = prompt_length
        self.stop_token_ids, self.stop_strings = stop_token_ids, stop_strings
        self.decode, self.pad_id = decode, pad_id
        self.shown = [""] * batch  # the text already yielded, per row

    def step(self, ids):
        """What the stream yields after the newest column of ``ids`` (B, T + steps)."""
        was_stopped = self.stopped.copy()  # (B,)
        new_ids = np.where(was_stopped, self.pad_id, ids[:, -1]).astype(np.int64)  # (B,)
        self.produced += ~was_stopped
        self.stopped |= np.isin(ids[:, -1], self.stop_token_ids)
        if self.decode is None:
            return new_ids
        pieces = []
        for row in range(len(ids)):
            if was_stopped[row]:
                pieces.append("")
                continue
            text = self.decode(ids[row, self.prompt_length :].tolist())
            if any(stop in text for stop in self.stop_strings):
                self.stopped[row] = True
            if text.endswith("\ufffd"):
                pieces.append("")  # a character split across tokens: wait for the rest
            else:
                pieces.append(text[len(self.shown[row]) :])
                self.shown[row] = text
        return new_ids, pieces
