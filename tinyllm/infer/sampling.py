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

``generate`` keeps a KV cache (``tinyllm.nn.kv_cache``): the prompt runs through the
model once (prefill), then each step runs only the newest token over the cached keys and
values (decode). Once the sequence is longer than the context, the window slides: every
position moves, the cached keys no longer fit, and each further step recomputes the last
``context_length`` tokens without the cache - the same tokens as without a cache, at the
old price. Under JAX every new length would be a new program to compile, so there the
window always has the full context length - the tokens so far, padded after the end - and
one compiled forward reads the logits at the last real position. Attention is causal: the
padding after that position cannot change its logits.
"""

import numpy as np

from ..autograd import Tensor, no_grad, to_numpy
from ..nn.kv_cache import KVCache


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
    restored afterwards. Prompts longer than the context keep their last tokens. A KV cache
    saves recomputing the prefix (see the module doc for what happens past the context).
    """
    ids = np.asarray(ids, dtype=np.int64)
    if ids.ndim != 2 or ids.shape[1] == 0:
        raise ValueError(f"generate: ids must be (batch, time) with time >= 1, got {ids.shape}")
    counts = isinstance(max_new_tokens, (int, np.integer)) and not isinstance(max_new_tokens, bool)
    if not counts or max_new_tokens < 0:
        raise ValueError(f"generate: max_new_tokens={max_new_tokens!r}: expected an integer >= 0")
    context = model.config.context_length
    rng = np.random.default_rng(seed)
    backend = model.token_embedding.weight.backend
    if backend.name == "jax":
        next_logits = _padded_next_logits(model, backend)
    else:
        next_logits = _cached_next_logits(model, len(ids), backend)
    was_training = model.training
    model.eval()
    try:
        with no_grad():
            for _ in range(max_new_tokens):
                window = ids[:, -context:]  # (B, T <= context)
                last = next_logits(window, ids.shape[1] > context)  # (B, V): next-token scores
                next_ids = sample_next(
                    last, temperature=temperature, top_k=top_k, top_p=top_p, rng=rng
                )
                ids = np.concatenate([ids, next_ids[:, None]], axis=1)
    finally:
        model.train(was_training)
    return ids


def _cached_next_logits(model, batch_size, backend):
    """``next_logits(window, slid)``: the (B, V) logits after ``window`` (B, T), the tokens
    so far. The first call runs them all into a KV cache (prefill); later calls run only the
    tokens added since (decode). Once the window has ``slid`` (the sequence outgrew the
    context), positions no longer match the cache, and the whole window is recomputed."""
    weight = model.token_embedding.weight
    cache = KVCache.for_model(model.config, batch_size, dtype=weight.dtype, backend=backend)

    def next_logits(window, slid):
        if slid:
            logits, _ = model(window)  # (B, context, V)
        else:
            logits, _ = model(window[:, cache.length :], cache=cache)  # (B, new tokens, V)
        return to_numpy(logits.data[:, -1, :])

    return next_logits


def _padded_next_logits(model, backend):
    """``next_logits(window, slid)``: the (B, V) logits after ``window`` (B, T), from one
    compiled forward over a window padded to the context length - one shape, one trace."""
    context = model.config.context_length
    params = {name: p.data for name, p in model.named_parameters()}

    def logits_at(params, padded, position):
        with model.bind({name: Tensor(array) for name, array in params.items()}):
            logits, _ = model(padded)  # (B, context, V)
        return logits.data[:, position, :]  # (B, V); ``position`` is traced: no retrace

    compiled = backend.jit(logits_at)

    def next_logits(window, slid):
        B, T = window.shape
        padded = np.zeros((B, context), dtype=window.dtype)  # (B, context)
        padded[:, :T] = window  # the tokens, then padding the causal mask hides from them
        return to_numpy(compiled(params, padded, T - 1))

    return next_logits


def _softmax(logits):
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)
