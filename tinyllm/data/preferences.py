"""Preference data: a prompt with a chosen and a rejected response, as batches of token ids;
and the JSONL shapes people already have (chat ``messages``; TRL's ``prompt`` / ``chosen`` /
``rejected``), from local files or through ``datasets``.

A pair becomes two conversations that share the prompt: ``prompt + chosen`` and ``prompt +
rejected``, each encoded with the chat template. A reward model reads each at its last
token; DPO sums the log-probabilities of each response's tokens (the targets that are not
-100, as in SFT). Rows are padded on the right: attention is causal, so padding after a
sequence changes nothing before it.

>>> pair = {"prompt": [{"role": "user", "content": "add: 1 + 1"}], "chosen": "2", "rejected": "3"}
>>> normalize_pair(pair) == (pair["prompt"], "2", "3")
True
"""

import json
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..tokenizer.chat import check_messages
from .sft import IGNORE, sft_tokens


def read_jsonl(path):
    """The records of a JSON-lines file, naming the line that is not JSON."""
    records = []
    with open(path, encoding="utf-8") as file:
        for number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}, line {number}: not JSON ({err.msg})") from None
    return records


def load_records(source, *, split="train"):
    """Records from a local ``.jsonl`` file, or ``hf:<dataset>`` through ``datasets``."""
    if str(source).startswith("hf:"):
        try:
            import datasets
        except ImportError:
            raise ValueError(
                "hf: sources need the datasets library: pip install 'tinyllm[hf]'"
            ) from None
        return list(datasets.load_dataset(str(source)[3:], split=split))
    if not Path(source).is_file():
        raise ValueError(f"{source!r} is not a file: expected a .jsonl file or hf:<dataset>")
    return read_jsonl(source)


def load_conversations(source, *, split="train"):
    """Conversations (lists of messages) from records with ``messages``, checked."""
    conversations = []
    for index, record in enumerate(load_records(source, split=split)):
        if not isinstance(record, dict) or "messages" not in record:
            raise ValueError(f"record {index} has no 'messages': {str(record)[:80]}")
        try:
            check_messages(record["messages"])
        except (TypeError, ValueError) as err:
            raise ValueError(f"record {index}: {err}") from None
        conversations.append(record["messages"])
    return conversations


def _response(value, index, side):
    """A response as text: a string, or a list of messages ending with the assistant's."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and isinstance(value[-1], dict):
        check_messages(value)
        if value[-1]["role"] == "assistant":
            return value[-1]["content"]
    raise ValueError(
        f"preference record {index}: {side!r} is {str(value)[:60]!r}: expected a string or a "
        "list of messages ending with the assistant's"
    )


def normalize_pair(record, index=0):
    """``(prompt_messages, chosen_text, rejected_text)`` of a record in TRL's shape: the
    prompt a string (one user message) or messages; each response a string or messages."""
    if not isinstance(record, dict):
        raise ValueError(f"preference record {index} is {str(record)[:60]!r}: expected a dict")
    for side in ("prompt", "chosen", "rejected"):
        if side not in record:
            raise ValueError(
                f"preference record {index} has no {side!r}: expected 'prompt', 'chosen' and "
                f"'rejected', got {sorted(record)}"
            )
    prompt = record["prompt"]
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    try:
        check_messages(prompt)
    except (TypeError, ValueError) as err:
        raise ValueError(f"preference record {index}: prompt: {err}") from None
    chosen = _response(record["chosen"], index, "chosen")
    rejected = _response(record["rejected"], index, "rejected")
    return prompt, chosen, rejected


def load_preferences(source, *, split="train"):
    """Preference pairs ``(prompt_messages, chosen, rejected)`` from ``source``."""
    return [normalize_pair(r, i) for i, r in enumerate(load_records(source, split=split))]


class PreferenceRows(NamedTuple):
    """Pairs as padded rows (N, T): ``ids`` and ``targets`` (-100 off the response) of the
    chosen and of the rejected conversation, and each one's ``lengths`` (N,)."""

    chosen_ids: np.ndarray
    chosen_targets: np.ndarray
    chosen_lengths: np.ndarray
    rejected_ids: np.ndarray
    rejected_targets: np.ndarray
    rejected_lengths: np.ndarray


def preference_rows(tokenizer, pairs, context_length, pad_id=0):
    """Encode ``pairs`` (records or ``(prompt, chosen, rejected)`` tuples) into rows padded
    to the longest conversation; one longer than ``context_length`` is refused by name."""
    sides = ([], [])
    for index, pair in enumerate(pairs):
        prompt, *responses = pair if isinstance(pair, tuple) else normalize_pair(pair, index)
        for side, response in zip(sides, responses):
            messages = [*prompt, {"role": "assistant", "content": response}]
            side.append(sft_tokens(tokenizer, messages, context_length=context_length, index=index))
    T = max(len(ids) for side in sides for ids, _ in side)
    arrays = []
    for side in sides:
        ids = np.full((len(side), T), pad_id, np.int64)
        targets = np.full((len(side), T), IGNORE, np.int64)
        for row, (i, t) in enumerate(side):
            ids[row, : len(i)], targets[row, : len(t)] = i, t
        arrays += [ids, targets, np.array([len(i) for i, _ in side], np.int64)]
    return PreferenceRows(*arrays)
