"""A request to the serving engine and what comes back: ``SamplingParams`` (how its prompt
is sampled, checked when made), the ``Request`` with its ``n`` ``Sequence``s, and the
``Output`` of each new token, with its log-probabilities when asked (``token_logprobs``).

>>> SamplingParams(max_tokens=0)
Traceback (most recent call last):
...
ValueError: max_tokens=0: expected an integer >= 1
>>> token_logprobs(np.log(np.array([0.5, 0.25, 0.25])), 1, 1)
(-1.386..., ((0, -0.693...),))
"""

import queue
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from ..backend import get_backend
from .sampling import _is_integer, check_sampling_settings
from .stream import Stops

MAX_LOGPROBS = 20  # alternatives a token's log-probabilities may list (OpenAI's top_logprobs)


@dataclass
class SamplingParams:
    """How one request is sampled: the rules of ``sample_next``, its stops, its seed (None:
    a fresh one), ``max_tokens`` new tokens at most, ``n`` samples of the prompt. Its text
    leaves special tokens out unless ``skip_special_tokens`` is False (vLLM's default).
    ``max_tokens`` may be 0 when ``prompt_logprobs`` is asked: the prompt is only scored.
    ``logprobs`` (an integer, 0 to 20) asks for each new token's log-probability and those of
    the ``logprobs`` likeliest tokens at its step, from the model's own distribution (before
    temperature and the other rules, as vLLM reports them); ``prompt_logprobs`` the same for
    each prompt token after the first (the prompt is then prefilled whole, reusing no
    cached prefix)."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    stop_token_ids: list = field(default_factory=list)
    stop_strings: list = field(default_factory=list)
    seed: int | None = None
    n: int = 1
    skip_special_tokens: bool = True
    logprobs: int | None = None
    prompt_logprobs: int | None = None

    def __post_init__(self):
        check_sampling_settings(**self.rules())
        if not isinstance(self.skip_special_tokens, bool):
            raise ValueError(
                f"skip_special_tokens={self.skip_special_tokens!r}: expected True or False"
            )
        for name in ("max_tokens", "n"):
            value = getattr(self, name)
            if not (_is_integer(value) and value >= 1):
                if name == "max_tokens" and value == 0 and self.prompt_logprobs is not None:
                    continue  # the prompt scored, nothing generated
                raise ValueError(f"{name}={value!r}: expected an integer >= 1")
        if self.seed is not None and not (_is_integer(self.seed) and self.seed >= 0):
            raise ValueError(f"seed={self.seed!r}: expected an integer >= 0, or None")
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            if value is not None and not (_is_integer(value) and 0 <= value <= MAX_LOGPROBS):
                raise ValueError(
                    f"{name}={value!r}: expected an integer in 0..{MAX_LOGPROBS}, or None"
                )

    def rules(self):
        """The keywords of ``sample_next``."""
        return dict(
            temperature=self.temperature, top_k=self.top_k, top_p=self.top_p, min_p=self.min_p,
            repetition_penalty=self.repetition_penalty,
        )  # fmt: skip


@dataclass
class Output:
    """One new token of one sequence: its ``text`` piece (with a tokenizer), and whether it
    ended the sequence (``finish_reason``: "stop", "length" or "cancelled")."""

    request_id: str
    index: int  # which of the request's n samples
    token: int | None  # None when a cancellation ends the sequence
    text: str = ""
    finish_reason: str | None = None
    logprob: float | None = None  # the token's, when the request asked for logprobs
    top_logprobs: tuple = ()  # ((token, logprob), ...) the likeliest at this step, best first


def token_logprobs(logits, token, k):
    """``token``'s log-probability under ``logits`` (V,) and the ``k`` likeliest
    ``((token, logprob), ...)``, best first: the model's distribution, in float64. (A
    partition finds the k: a whole sort of a 50,257-token row took 3.8 ms, this 0.2.)"""
    shifted = logits.astype(np.float64) - logits.max()
    logps = shifted - np.log(np.exp(shifted).sum())
    if k == 0:
        return float(logps[token]), ()
    values, best = get_backend("numpy").top_k(logps, k)
    return float(logps[token]), tuple(zip(best.tolist(), values.tolist()))


class Sequence:
    """One sample being generated: its tokens so far (prompt first) and its own random stream."""

    def __init__(self, seq_id, request, index, decode):
        params = request.params
        self.id, self.request, self.index = seq_id, request, index
        self.tokens = list(request.prompt)
        seed = None if params.seed is None else params.seed + index
        self.rng = np.random.default_rng(seed)
        self.stops = Stops(
            1, len(request.prompt), np.asarray(params.stop_token_ids, dtype=np.int64),
            tuple(params.stop_strings), partial(decode, skip=params.skip_special_tokens), pad_id=-1,
        )  # fmt: skip
        self.finish_reason = None

    @property
    def new_tokens(self):
        return self.tokens[len(self.request.prompt) :]


class Request:
    """A prompt (token ids) and its ``SamplingParams``; ``sequences`` its n samples, and
    ``events`` a queue of its ``Output``s, closed by ``None`` when all have finished."""

    def __init__(self, request_id, prompt, params):
        self.id, self.prompt, self.params = request_id, list(prompt), params
        self.prompt_logprobs = None  # ((logprob, top), ...) of prompt tokens 1.., if asked
        self.sequences = []
        self.events = queue.SimpleQueue()
        self.cancelled = False

    @property
    def finished(self):
        return bool(self.sequences) and all(s.finish_reason for s in self.sequences)
