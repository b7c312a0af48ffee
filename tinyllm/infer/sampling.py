"""Sampling: turning the model's next-token logits into text, one token at a time.

A language model gives, at every position, logits over the vocabulary for the next token.
Generation feeds the prompt, picks a next token from the last position's distribution,
appends it, and repeats. How the token is picked is the *sampling* rule:

| setting          | effect                                                              |
|------------------|---------------------------------------------------------------------|
| `temperature=0`  | greedy: always the most likely token (deterministic)                |
| `temperature<1`  | sharper distribution, safer text; `>1` flatter, more surprising      |
| `top_k=k`        | only the k most likely tokens can be picked                          |
| `top_p=p`        | only the smallest set of tokens whose probabilities add up to p      |

>>> logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]]))
>>> sample_next(logits, temperature=0, rng=np.random.default_rng(0))
array([0])
>>> filtered = filter_logits(logits, top_k=2)
>>> np.isinf(filtered).tolist()
[[False, False, True, True]]
>>> np.isinf(filter_logits(logits, top_p=0.7)).tolist()  # 0.5 + 0.3 reaches 0.7
[[False, False, True, True]]

``generate`` here recomputes the whole window for every new token: simple and correct,
and fast enough for the small models this library trains on a CPU.
"""

import numpy as np

from ..autograd import no_grad, to_numpy


def filter_logits(logits, *, top_k=None, top_p=None):
    """``logits`` (B, V) with every token outside the top-k / top-p set set to ``-inf``."""
    logits = np.array(logits, dtype=np.float64)  # a copy: (B, V)
    vocab_size = logits.shape[-1]
    if top_k is not None:
        if not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"top_k={top_k!r}: expected a positive integer or None")
        if top_k < vocab_size:
            kth = np.partition(logits, -top_k, axis=-1)[:, -top_k, None]  # (B, 1)
            logits[logits < kth] = -np.inf
    if top_p is not None:
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p={top_p!r}: expected a probability in (0, 1]")
        order = np.argsort(-logits, axis=-1)  # (B, V) most likely first
        probs = _softmax(np.take_along_axis(logits, order, axis=-1))
        before = np.cumsum(probs, axis=-1) - probs  # mass of the tokens ahead of each one
        drop = np.zeros_like(logits, dtype=bool)
        np.put_along_axis(drop, order, before >= top_p, axis=-1)  # keeps at least one token
        logits[drop] = -np.inf
    return logits


def sample_next(logits, *, temperature=1.0, top_k=None, top_p=None, rng):
    """One next-token id per row of ``logits`` (B, V), as an int64 array (B,)."""
    if temperature < 0:
        raise ValueError(f"temperature={temperature!r}: expected a number >= 0 (0 is greedy)")
    logits = np.asarray(logits, dtype=np.float64)
    if temperature == 0:
        return logits.argmax(axis=-1).astype(np.int64)
    probs = _softmax(filter_logits(logits / temperature, top_k=top_k, top_p=top_p))  # (B, V)
    uniform = rng.random((len(probs), 1))  # (B, 1): inverse-CDF sampling, one draw per row
    ids = (np.cumsum(probs, axis=-1) < uniform).sum(axis=-1)
    return np.minimum(ids, probs.shape[-1] - 1).astype(np.int64)


def generate(model, ids, max_new_tokens, *, temperature=1.0, top_k=None, top_p=None, seed=0):
    """``ids`` (B, T) followed by ``max_new_tokens`` sampled tokens: an int64 array.

    The model runs in eval mode (no dropout) and without recording gradients; its mode is
    restored afterwards. Prompts longer than the context keep their last tokens.
    """
    ids = np.asarray(ids, dtype=np.int64)
    if ids.ndim != 2 or ids.shape[1] == 0:
        raise ValueError(f"generate: ids must be (batch, time) with time >= 1, got {ids.shape}")
    context = model.config.context_length
    rng = np.random.default_rng(seed)
    was_training = model.training
    model.eval()
    try:
        with no_grad():
            for _ in range(max_new_tokens):
                logits, _ = model(ids[:, -context:])  # (B, T, V)
                last = to_numpy(logits.data[:, -1, :])  # (B, V): the next-token scores
                next_ids = sample_next(
                    last, temperature=temperature, top_k=top_k, top_p=top_p, rng=rng
                )
                ids = np.concatenate([ids, next_ids[:, None]], axis=1)
    finally:
        model.train(was_training)
    return ids


def _softmax(logits):
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)
