"""Evaluating a chat model on checkable tasks: exact match, a property's rate, perplexity.

- ``exact_match``: the share of prompts whose greedy answer is exactly the right one (the
  text the model writes before ``<|end|>``);
- ``property_rate``: the share of *sampled* answers that have a checkable property - what
  preference tuning moves, since it reshapes the whole distribution, not only its top;
- ``response_perplexity``: exp of the mean loss on the assistant's tokens of conversations
  the model did not train on;
- ``text_perplexity``: exp of the mean next-token loss on plain text (a corpus's
  validation split), the measure a language model - quantized or not - is compared by;
- ``preference_accuracy``: the share of preference pairs whose right response the model
  finds more likely than the wrong one;
- ``task_measures``: all that a chat model's run reports before and after training, and
  with a reference model, the KL divergence to it on the model's own samples.

Answers are generated in batches of prompts of different lengths (``generate`` pads them),
each stopping at its own ``<|end|>``.
"""

import math

import numpy as np

from ..autograd import to_numpy
from ..data.preferences import normalize_pair
from ..data.sft import IGNORE, assistant_targets, pack, sft_tokens
from ..nn.module import measuring
from ..tokenizer.chat import END_OF_TURN, format_chat
from ..train.preference import measured_logps
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


def is_right(example, answer):
    """Whether ``answer`` is ``example``'s right answer (surrounding spaces ignored)."""
    return answer.strip() == example.answer


def exact_match(model, tokenizer, examples, **options):
    """``(accuracy, answers)``: greedy answers to ``examples`` (``TaskExample``s) compared
    with their right answers, character for character (surrounding spaces ignored)."""
    got = answers(model, tokenizer, [e.messages[:1] for e in examples], temperature=0, **options)
    right = [is_right(e, g) for e, g in zip(examples, got)]
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


# the assistant-token loss of a packed batch, the next-token loss of a batch (``measuring``)
_measured_sft_loss = measuring(lambda model, batch: sft_loss(model, batch)[0])
_measured_loss = measuring(lambda model, ids, targets: model(ids, targets=targets)[1])


def response_perplexity(model, tokenizer, conversations, *, batch_size=8):
    """exp(mean cross-entropy on the assistant's tokens) over ``conversations``."""
    context = model.config.context_length
    examples = [
        sft_tokens(tokenizer, c, context_length=context, index=i)
        for i, c in enumerate(conversations)
    ]
    rows = pack(examples, context)
    total = count = 0.0
    for start in range(0, len(rows.ids), batch_size):
        batch = tuple(array[start : start + batch_size] for array in rows)
        scored = int((batch[1] != -100).sum())
        total, count = total + float(_measured_sft_loss(model, batch)) * scored, count + scored
    return math.exp(total / count) if count else float("nan")


def text_perplexity(model, tokens, *, batch_size=8, max_windows=None):
    """exp(mean next-token cross-entropy) over ``tokens`` (1-D ids), read in consecutive
    windows of the model's context, each predicting its own next tokens: every token after
    a window's first is scored once, with no randomness. ``max_windows`` keeps the first
    windows only (a quicker, rougher figure).

    >>> from tinyllm.models import Transformer, get_preset
    >>> model = Transformer(get_preset("tiny", vocab_size=10, n_layer=1), seed=0)
    >>> ppl = text_perplexity(model, np.arange(200) % 10)
    >>> abs(math.log(ppl) - math.log(10)) < 0.5     # about 10 (the vocabulary) untrained
    True
    """
    context = model.config.context_length
    n_windows = (len(tokens) - 1) // context
    if max_windows is not None:
        n_windows = min(n_windows, max_windows)
    if n_windows < 1:
        raise ValueError(f"text_perplexity: {len(tokens)} tokens fill no window of {context} + 1")
    ids = np.asarray(tokens[: n_windows * context + 1], np.int64)
    inputs = ids[:-1].reshape(n_windows, context)  # (windows, context)
    targets = ids[1:].reshape(n_windows, context)
    total = 0.0
    for start in range(0, n_windows, batch_size):
        end = start + batch_size
        loss = _measured_loss(model, inputs[start:end], targets[start:end])
        total += float(loss) * len(inputs[start:end])
    return math.exp(total / n_windows)


def response_logps(model, tokenizer, prompts, responses, *, batch_size=32):
    """log p(response | prompt) under ``model`` for each prompt (a message list) and its
    response (text): the sum over the assistant's tokens and its ``<|end|>``, (N,) floats.
    A conversation longer than the context is cut at its end."""
    context = model.config.context_length
    rows = []
    for prompt, response in zip(prompts, responses):
        ids, mask = format_chat(tokenizer, [*prompt, {"role": "assistant", "content": response}])
        ids, mask = ids[:context], mask[:context]
        rows.append((ids, assistant_targets(ids, mask)))
    out = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        T = max(len(ids) for ids, _ in chunk)
        ids = np.array([i + [0] * (T - len(i)) for i, _ in chunk])
        targets = np.array([t + [IGNORE] * (T - len(t)) for _, t in chunk])
        out.append(to_numpy(measured_logps(model, ids, targets)))
    return np.concatenate(out) if out else np.zeros(0)


def preference_accuracy(model, tokenizer, pairs):
    """The share of ``pairs`` (preference records or ``(prompt, chosen, rejected)``
    tuples) whose chosen response is more likely under ``model`` than the rejected one."""
    pairs = [p if isinstance(p, tuple) else normalize_pair(p, i) for i, p in enumerate(pairs)]
    prompts = [prompt for prompt, _, _ in pairs]
    chosen = response_logps(model, tokenizer, prompts, [c for _, c, _ in pairs])
    rejected = response_logps(model, tokenizer, prompts, [r for _, _, r in pairs])
    return float(np.mean(chosen > rejected)) if pairs else float("nan")


def sampled_measures(model, reference, tokenizer, examples, samples, seed=0):
    """On answers sampled from ``model`` (temperature 1, ``samples`` per example): the share
    that are right, and the mean of log model(answer) - log reference(answer) over the
    sampled tokens themselves, a Monte-Carlo estimate of KL(model || reference) (None
    without a reference)."""
    right, gaps = [], []
    prompts = [e.messages[:1] for e in examples]
    for k in range(samples):
        sampled = answer_tokens(model, tokenizer, prompts, temperature=1.0, seed=seed + k)
        right += [
            is_right(e, answer_text(tokenizer, new)) for (_, new), e in zip(sampled, examples)
        ]
        if reference is None:
            continue
        T = max(len(prompt) + len(new) for prompt, new in sampled)
        ids = np.zeros((len(sampled), T), np.int64)  # (N, T), padded on the right
        targets = np.full((len(sampled), T), IGNORE, np.int64)  # only the sampled tokens score
        for row, (prompt, new) in enumerate(sampled):
            ids[row, : len(prompt) + len(new)] = prompt + new
            targets[row, len(prompt) - 1 : len(prompt) - 1 + len(new)] = new
        gap = measured_logps(model, ids, targets) - measured_logps(reference, ids, targets)
        gaps.append(to_numpy(gap))
    kl = float(np.mean(np.concatenate(gaps))) if gaps else None
    return (float(np.mean(right)) if right else float("nan")), kl


def task_measures(model, tokenizer, examples, *, pairs=None, samples=1, reference=None, seed=0):
    """What a chat model does on held-out ``examples`` (``TaskExample``s): ``accuracy`` (of
    greedy answers) overall and per task, ``sampled_right`` (the share of right answers
    among ``samples`` sampled at temperature 1 per prompt) and, given them,
    ``preference_accuracy`` on ``pairs`` and ``kl``, the KL divergence from ``reference``
    estimated on the sampled answers (``sampled_measures``)."""
    accuracy, got = exact_match(model, tokenizer, examples)
    measures = {"accuracy": accuracy}
    for task in dict.fromkeys(e.task for e in examples):
        hits = [is_right(e, g) for e, g in zip(examples, got) if e.task == task]
        measures[f"accuracy_{task}"] = float(np.mean(hits))
    right, kl = sampled_measures(model, reference, tokenizer, examples, samples, seed)
    measures["sampled_right"] = right
    if pairs is not None:
        measures["preference_accuracy"] = preference_accuracy(model, tokenizer, pairs)
    if reference is not None:
        measures["kl"] = kl
    return measures
