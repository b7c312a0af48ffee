"""Supervised fine-tuning data: conversations as token ids whose loss falls on the assistant,
packed into rows that waste no compute on padding.

``sft_tokens`` encodes one conversation with the chat template and marks what the model
learns: a target is the next token where that token is the assistant's (its words and the
``<|end|>`` closing its turn), and -100 (not scored) elsewhere - the prompt is given, not
learned.

Conversations are short and vary in length; padding each to the context would spend most
of a batch on padding. **Packing** puts several whole conversations one after another in a
row. They must not see each other: ``pack`` records, per token, which conversation it
belongs to (``documents``) and its position within it (``positions``, from 0 again at each
start). ``document_mask`` turns that into an attention mask keeping each token to the keys
of its own conversation; with the restarted positions every conversation then gets exactly
the logits - and the loss and gradients - it would get alone.

>>> rows = pack([([1, 2, 3], [2, 3, -100]), ([4, 5], [5, -100])], context_length=6)
>>> rows.ids.tolist(), rows.positions.tolist(), rows.documents.tolist()
([[1, 2, 3, 4, 5, 0]], [[0, 1, 2, 0, 1, 0]], [[0, 0, 0, 1, 1, -1]])
"""

from typing import NamedTuple

import numpy as np

from ..tokenizer.chat import format_chat

IGNORE = -100  # a target that is not scored


def assistant_targets(ids, assistant_mask, ignore_index=IGNORE):
    """The targets of ``ids``: ``targets[i]`` is ``ids[i + 1]`` where that token is the
    assistant's (``assistant_mask[i + 1]``), else ``ignore_index``; the last is never scored.

    >>> assistant_targets([5, 6, 7, 8], [False, False, True, True])
    [-100, 7, 8, -100]
    """
    if len(ids) != len(assistant_mask):
        raise ValueError(
            f"{len(ids)} ids but {len(assistant_mask)} mask entries: expected one per id"
        )
    if not len(ids):
        return []
    pairs = zip(ids[1:], assistant_mask[1:])
    return [t if learned else ignore_index for t, learned in pairs] + [ignore_index]


def sft_tokens(tokenizer, messages, *, context_length=None, index=None):
    """``(ids, targets)`` of one conversation: ``targets[i]`` is ``ids[i + 1]`` where that
    token is the assistant's, else -100. A conversation without an assistant turn, or
    longer than ``context_length`` tokens, is refused, naming it by ``index``."""
    name = "an SFT example" if index is None else f"SFT example {index}"
    if not any(m.get("role") == "assistant" for m in messages if isinstance(m, dict)):
        raise ValueError(f"{name} has no assistant turn: nothing to learn from {messages!r}")
    ids, mask = format_chat(tokenizer, messages)
    if context_length is not None and len(ids) > context_length:
        raise ValueError(
            f"{name} is {len(ids)} tokens, longer than the context_length of "
            f"{context_length}: shorten it or drop it (tinyllm does not cut conversations)"
        )
    return ids, assistant_targets(ids, mask)


class PackedRows(NamedTuple):
    """Rows (N, T) of packed conversations: ``ids``, ``targets``, ``positions`` (restarting
    at 0 with each conversation) and ``documents`` (which conversation of the row; -1 on
    the padding at a row's end)."""

    ids: np.ndarray
    targets: np.ndarray
    positions: np.ndarray
    documents: np.ndarray


def pack(examples, context_length, pad_id=0):
    """Pack ``examples`` (``(ids, targets)`` pairs, in order) into rows of ``context_length``
    tokens: each row takes whole examples while the next one fits."""
    rows, row = [], []
    for index, (ids, _) in enumerate(examples):
        if len(ids) > context_length:
            raise ValueError(
                f"example {index} is {len(ids)} tokens, longer than the context_length of "
                f"{context_length}"
            )
        if sum(len(i) for i, _ in row) + len(ids) > context_length:
            rows.append(row)
            row = []
        row.append(examples[index])
    if row:
        rows.append(row)
    shape = (len(rows), context_length)
    packed = PackedRows(
        np.full(shape, pad_id, np.int64), np.full(shape, IGNORE, np.int64),
        np.zeros(shape, np.int64), np.full(shape, -1, np.int64),
    )  # fmt: skip
    for r, row in enumerate(rows):
        start = 0
        for document, (ids, targets) in enumerate(row):
            span = slice(start, start + len(ids))
            packed.ids[r, span], packed.targets[r, span] = ids, targets
            packed.positions[r, span] = np.arange(len(ids))
            packed.documents[r, span] = document
            start += len(ids)
    return packed


def document_mask(documents):
    """(B, 1, T, T) booleans from ``documents`` (B, T): a token sees only keys of its own
    conversation (padding, -1, sees only padding: a row that is all hidden is not NaN,
    but it has no target anyway). The causal mask is added by attention."""
    return (documents[:, :, None] == documents[:, None, :])[:, None]
