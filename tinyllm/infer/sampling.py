"""Sampling: turning the model's next-token logits into text, one token at a time.

A language model gives, at every position, logits over the vocabulary for the next token.
Generation feeds the prompt, picks a next token from the last position's distribution,
appends it, and repeats. How the token is picked is the *sampling* rule:

| setting                | effect                                                          |
|------------------------|-----------------------------------------------------------------|
| `repetition_penalty=r` | tokens already in the sequence lose likelihood (`r > 1`)        |
| `temperature=0`        | greedy: always the most likely token (deterministic)            |
| `temperature<1`        | sharper distribution, safer text; `>1` flatter, more surprising  |
| `top_k=k`              | only the k most likely tokens can be picked                      |
| `top_p=p`              | only the smallest set of tokens whose probabilities add up to p  |
| `min_p=m`              | only tokens at least m times as likely as the likeliest one      |

The rules apply in the order of the table, the order Hugging Face ``transformers`` chains
its logits processors in: the repetition penalty, then temperature, top-k, top-p, min-p.
Each is a pure function of the (B, V) logits, so a learner can try them one at a time:

>>> logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]]))
>>> sample_next(logits, temperature=0, rng=np.random.default_rng(0))
array([0])
>>> filtered = filter_logits(logits, top_k=2)
>>> np.isinf(filtered).tolist()
[[False, False, True, True]]
>>> np.isinf(filter_logits(logits, top_p=0.7)).tolist()  # 0.5 + 0.3 reaches 0.7
[[False, False, True, True]]
>>> np.isinf(filter_logits(logits, min_p=0.5)).tolist()  # at least 0.5 * 0.5 = 0.25
[[False, False, True, True]]

Generation (the loop that calls ``sample_next`` once a step) is in ``generate.py``.
"""

import math
import numbers

import numpy as np


def check_sampling_settings(
    *, temperature=1.0, top_k=None, top_p=None, min_p=None, repetition_penalty=None
):
    """Raise ``ValueError`` naming the first setting outside its range (None turns a rule off).

    >>> check_sampling_settings(temperature=0.7, top_k=50, min_p=0.05)
    >>> check_sampling_settings(top_p=1.5)
    Traceback (most recent call last):
    ...
    ValueError: top_p=1.5: expected a probability in (0, 1], or None
    """
    if not _is_real(temperature) or not (math.isfinite(temperature) and temperature >= 0):
        raise ValueError(
            f"temperature={temperature!r}: expected a finite number >= 0 (0 is greedy)"
        )
    if top_k is not None and not (_is_integer(top_k) and top_k >= 1):
        raise ValueError(f"top_k={top_k!r}: expected a positive integer, or None")
    for name, value in (("top_p", top_p), ("min_p", min_p)):
        if value is not None and not (_is_real(value) and 0 < value <= 1):
            raise ValueError(f"{name}={value!r}: expected a probability in (0, 1], or None")
    penalty = repetition_penalty
    if penalty is not None and not (_is_real(penalty) and 0 < penalty < math.inf):
        raise ValueError(
            f"repetition_penalty={penalty!r}: expected a finite number > 0 "
            "(1 changes nothing, above 1 discourages repeats), or None"
        )


def penalize_repetition(logits, previous_ids, penalty):
    """``logits`` (B, V) with the tokens in each row of ``previous_ids`` (B, n) penalized.

    The CTRL rule: a token already in the sequence has its logit divided by ``penalty`` when
    positive and multiplied by it when negative, so ``penalty > 1`` always makes it less
    likely (dividing a negative logit would raise it). A token counts once however often it
    appeared.

    >>> logits = np.array([[2.0, -1.0, 0.5]])
    >>> penalize_repetition(logits, np.array([[0, 1, 0]]), 2.0)  # token 2 is new: unchanged
    array([[ 1. , -2. ,  0.5]])
    """
    logits = np.asarray(logits, dtype=np.float64)  # (B, V)
    previous_ids = np.asarray(previous_ids)
    B, V = logits.shape
    if previous_ids.ndim != 2 or len(previous_ids) != B:
        raise ValueError(
            f"previous_ids must be ({B}, n) for logits {logits.shape}, got {previous_ids.shape}"
        )
    if previous_ids.size and not (0 <= previous_ids.min() and previous_ids.max() < V):
        raise ValueError(
            f"previous_ids hold ids outside 0..{V - 1}: {previous_ids.min()}..{previous_ids.max()}"
        )
    seen = np.zeros((B, V), dtype=bool)
    np.put_along_axis(seen, previous_ids.astype(np.int64), True, axis=-1)  # (B, V)
    penalized = np.where(logits < 0, logits * penalty, logits / penalty)  # (B, V)
    return np.where(seen, penalized, logits)


def keep_top_k(logits, top_k):
    """``logits`` (B, V) with all but the ``top_k`` largest of each row set to ``-inf``.

    >>> keep_top_k(np.array([[1.0, 3.0, 2.0]]), 2)
    array([[-inf,   3.,   2.]])
    """
    logits = np.asarray(logits, dtype=np.float64)  # (B, V)
    if top_k >= logits.shape[-1]:
        return logits
    kth = np.partition(logits, -top_k, axis=-1)[:, -top_k, None]  # (B, 1): the k-th largest
    return np.where(logits < kth, -np.inf, logits)


def keep_top_p(logits, top_p):
    """``logits`` (B, V) keeping, in each row, the fewest likeliest tokens whose probabilities
    add up to at least ``top_p`` (nucleus sampling); the others become ``-inf``.

    >>> np.isinf(keep_top_p(np.log(np.array([[0.1, 0.6, 0.3]])), 0.8)).tolist()
    [[True, False, False]]
    """
    logits = np.asarray(logits, dtype=np.float64)  # (B, V)
    order = np.argsort(-logits, axis=-1)  # (B, V) most likely first
    probs = _softmax(np.take_along_axis(logits, order, axis=-1))  # (B, V) in that order
    before = np.cumsum(probs, axis=-1) - probs  # mass of the tokens ahead of each one
    drop = np.zeros(logits.shape, dtype=bool)
    np.put_along_axis(drop, order, before >= top_p, axis=-1)  # keeps at least one token
    return np.where(drop, -np.inf, logits)


def keep_min_p(logits, min_p):
    """``logits`` (B, V) keeping the tokens whose probability is at least ``min_p`` times the
    row's top probability; the others become ``-inf``. The cut follows the model's
    confidence: a sure model keeps few tokens, an unsure one many.

    >>> probs = np.array([[0.5, 0.3, 0.15, 0.05]])
    >>> np.isinf(keep_min_p(np.log(probs), 0.2)).tolist()  # keeps p >= 0.2 * 0.5 = 0.1
    [[False, False, False, True]]
    """
    logits = np.asarray(logits, dtype=np.float64)  # (B, V)
    probs = _softmax(logits)  # (B, V)
    threshold = min_p * probs.max(axis=-1, keepdims=True)  # (B, 1)
    return np.where(probs < threshold, -np.inf, logits)


def filter_logits(logits, *, top_k=None, top_p=None, min_p=None):
    """``logits`` (B, V) after top-k, then top-p, then min-p (each skipped when None)."""
    check_sampling_settings(top_k=top_k, top_p=top_p, min_p=min_p)
    logits = np.array(logits, dtype=np.float64)  # a copy: (B, V)
    if top_k is not None:
        logits = keep_top_k(logits, top_k)
    if top_p is not None:
        logits = keep_top_p(logits, top_p)
    if min_p is not None:
        logits = keep_min_p(logits, min_p)
    return logits


def next_token_probs(
    logits, *, temperature=1.0, top_k=None, top_p=None, min_p=None,
    repetition_penalty=None, previous_ids=None,
):  # fmt: skip
    """The distribution (B, V) that ``sample_next`` draws from, after every rule.

    Greedy (``temperature=0``) is the distribution with all its mass on the likeliest
    token. Speculative decoding compares these distributions of the draft and the target.
    """
    check_sampling_settings(
        temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
        repetition_penalty=repetition_penalty,
    )  # fmt: skip
    logits = np.asarray(logits, dtype=np.float64)  # (B, V)
    if repetition_penalty is not None:
        if previous_ids is None:
            raise ValueError("repetition_penalty needs previous_ids: the (B, n) tokens so far")
        logits = penalize_repetition(logits, previous_ids, repetition_penalty)
    if temperature == 0:
        probs = np.zeros_like(logits)
        np.put_along_axis(probs, logits.argmax(axis=-1)[:, None], 1.0, axis=-1)
        return probs
    return _softmax(filter_logits(logits / temperature, top_k=top_k, top_p=top_p, min_p=min_p))


def draw(probs, rng):
    """One token id per row of ``probs`` (B, V), by inverse-CDF sampling: an int64 (B,).

    One uniform number per row: the first token whose cumulative probability passes it.
    """
    uniform = rng.random((len(probs), 1))  # (B, 1)
    ids = (np.cumsum(probs, axis=-1) < uniform).sum(axis=-1)
    return np.minimum(ids, probs.shape[-1] - 1).astype(np.int64)


def sample_next(
    logits, *, temperature=1.0, top_k=None, top_p=None, min_p=None,
    repetition_penalty=None, previous_ids=None, rng,
):  # fmt: skip
    """One next-token id per row of ``logits`` (B, V), as an int64 array (B,).

    ``previous_ids`` (B, n), the tokens so far, is what ``repetition_penalty`` looks at.
    The penalty applies before greedy picking too (it changes which token is likeliest);
    top-k, top-p and min-p never drop the likeliest token, so greedy ignores them. Greedy
    draws no random number.
    """
    probs = next_token_probs(
        logits, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
        repetition_penalty=repetition_penalty, previous_ids=previous_ids,
    )  # fmt: skip
    if temperature == 0:
        return probs.argmax(axis=-1).astype(np.int64)
    return draw(probs, rng)


def _is_real(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_integer(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _softmax(logits):
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)
