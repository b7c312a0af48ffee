"""Evaluating a chat model on checkable tasks: exact match, a property's rate, perplexity.

- ``exact_match``: the share of prompts whose greedy answer is exactly the right one (the
  text the model writes before ``<|end|>``);
- ``property_rate``: the share of *sampled* answers that have a checkable property - what
  preference tuning moves, since it reshapes the whole distribution, not only its top;
- ``response_perplexity``: exp of the mean loss on the assistant's tokens of conversations
  the model did not train on.

Answers are generated in batches of prompts of different lengths (``generate`` pads them),
each stopping at its own ``<|end|>``.
"""

import math

import numpy as np

from ..data.sft import pack, sft_tokens
from ..nn.module import inference
from ..tokenizer.chat import END_OF_TURN, format_chat
from ..train.sft import sft_loss
from .generate import generate


def answer_tokens(model, tokenizer, prompts, *, max_new_tokens=32, batch_size=32, **sampling):
    """``(prompt_ids, new_ids)`` for each prompt (a list of message lists): the prompt as the
    chat template encodes it, with the open assistant turn, and the tokens the model wrote
    after it, up to and including ``<|end|>`` when it came. What a sampled answer's
    log-probability is scored on: its text, encoded again, need not give these tokens back
    (a partly written character decodes to U+FFFD; a special token decodes to its name)."""
    end = tokenizer.special_tokens[END_OF_TURN]
    out = []
    for start in range(0, len(prompts), batch_size):
        chunk = [
            format_chat(tokenizer, messages, add_generation_prompt=True).ids
            for messages in prompts[start : start + batch_size]
        ]
        longest = max(len(ids) for ids in chunk)
        room = min(max_new_tokens, model.config.context_length - longest)
        if room < 1:
            raise ValueError(
                f"a prompt of {longest} tokens leaves no room in the context of "
                f"{model.config.context_length}"
            )
        rows = generate(model, chunk, room, stop_token_ids=[end], **sampling)
        out += [(ids, [int(t) for t in row[len(ids) :] if t >= 0]) for ids, row in zip(chunk, rows)]
    return out


def answer_text(tokenizer, new_ids):
    """The text of an answer's tokens before ``<|end|>``."""
    end = tokenizer.special_tokens[END_OF_TURN]
    return tokenizer.decode(new_ids[: new_ids.index(end)] if end in new_ids else new_ids)


def answers(model, tokenizer, prompts, **options):
    """The model's answer (text before ``<|end|>``) to each prompt, a list of message lists;
    ``options`` are ``answer_tokens``'."""
    return [
        answer_text(tokenizer, new)
        for _, new in answer_tokens(model, tokenizer, prompts, **options)
    ]


def exact_match(model, tokenizer, examples, **options):
    """``(accuracy, answers)``: greedy answers to ``examples`` (``TaskExample``s) compared
    with their right answers, character for character (surrounding spaces ignored)."""
    got = answers(model, tokenizer, [e.messages[:1] for e in examples], temperature=0, **options)
    right = [g.strip() == e.answer for g, e in zip(got, examples)]
    return float(np.mean(right)) if examples else float("nan"), got


def property_rate(
    model, tokenizer, examples, check, *, samples=1, temperature=1.0, seed=0, **options
):
    """The share of sampled answers (``samples`` per example) for which ``check(example,
    answer)`` holds."""
    hits = []
    for k in range(samples):
        got = answers(
            model, tokenizer, [e.messages[:1] for e in examples], temperature=temperature,
            seed=seed + k, **options,
        )  # fmt: skip
        hits += [bool(check(e, g)) for e, g in zip(examples, got)]
    return float(np.mean(hits)) if hits else float("nan")


def response_perplexity(model, tokenizer, conversations, *, batch_size=8):
    """exp(mean cross-entropy on the assistant's tokens) over ``conversations``."""
    context = model.config.context_length
    examples = [
        sft_tokens(tokenizer, c, context_length=context, index=i)
        for i, c in enumerate(conversations)
    ]
    rows = pack(examples, context)
    total = count = 0.0
    with inference(model):
        for start in range(0, len(rows.ids), batch_size):
            batch = tuple(array[start : start + batch_size] for array in rows)
            scored = int((batch[1] != -100).sum())
            loss, _ = sft_loss(model, batch)
            total, count = total + loss.item() * scored, count + scored
    return math.exp(total / count) if count else float("nan")
