"""Exercises for lesson 05: the KV cache and sampling. Replace each ``raise NotImplementedError``.

Generation runs the prompt through the model once (prefill), then one token a step
(decode). A KV cache keeps every layer's keys and values so a step computes only the new
token's (5.1), and the new queries attend over all of them (5.2). Each step then turns the
last position's logits into a next token: the sampling rules filter and reshape them
(5.3 top-p, 5.4 min-p, 5.5 the repetition penalty).

Everything here is plain NumPy. Attention shapes are the library's: ``(B, H, T, D)`` is
batch, heads, time (positions), and the features of one head; keys and values may have
fewer heads (``H_kv``). Logits are ``(B, V)``: one row of next-token scores per sequence.

Grade with ``tinyllm grade exercises -k ex05`` (lesson: lessons/05-kv-cache-and-sampling.md).
"""

import numpy as np  # noqa: F401 - the stubs don't use it yet; your answers will


# --- Exercise 5.1 ---------------------------------------------------------------------------
def kv_cache_update(keys, values, k_new, v_new, length):
    """Write one layer's new keys and values into its cache; return the keys and values so far.

    keys, values: (B, H_kv, max_len, D) arrays allocated once, up front. Positions
                  ``0 .. length - 1`` hold the keys and values of the tokens seen so far;
                  whatever lies after them is stale and must not be read.
    k_new, v_new: (B, H_kv, T, D), the keys and values of T new tokens.
    length:       how many positions are filled: the new ones go to ``length .. length + T - 1``.

    Write them there *in place* (no new buffer: the point of allocating once is that a
    decode step copies one position, not the whole past), then return ``(k, v)``, the keys
    and values of positions ``0 .. length + T - 1``, each (B, H_kv, length + T, D). Slices
    of the buffers are fine. A ``length`` smaller than before overwrites what was there:
    that is how a cache rolls back rejected tokens.

    If ``length + T`` is more than ``max_len``, raise ``ValueError`` naming the numbers.

    keys = zeros (1, 1, 4, 2); k_new = [[[[1, 1], [2, 2]]]] at length 0 -> k is k_new, and
    keys now holds [1, 1], [2, 2], [0, 0], [0, 0]. Then [[[[3, 3]]]] at length 2 -> k is
    [[[[1, 1], [2, 2], [3, 3]]]].
    """
    raise NotImplementedError("Exercise 5.1: write the new keys and values at `length`")


# --- Exercise 5.2 ---------------------------------------------------------------------------
def cached_attention(q, k, v, start, scale=None, window=None):
    """Attention of T new queries over cached keys: ``q`` (B, H, T, D) at positions
    ``start .. start + T - 1``, ``k``, ``v`` (B, H_kv, S, D) with S >= start + T.

    Return (B, H, T, D). ``scale`` defaults to ``1 / sqrt(D)``.

    ``k`` and ``v`` may be a cache's whole buffer: positions ``0 .. start + T - 1`` are
    filled, any after that are stale (old or unwritten) and must get probability 0. Query i
    sits at position ``p = start + i`` and sees key j only if ``j <= p`` - with
    ``window`` (sliding-window attention, Mistral) also only if ``j > p - window``, the
    ``window`` latest positions, its own included.

    Each key/value head serves ``G = H // H_kv`` consecutive query heads (query head h uses
    key/value head ``h // G``), as in exercise 2.3.

    1. scores = q @ k^T * scale                       (B, H, T, S)
    2. hide (set to -inf) every key query i may not see - build the mask from positions,
       ``np.arange(S)`` against ``start + np.arange(T)``; ``np.tril`` with S - T is not it
       when the buffer is longer than the filled part
    3. softmax over the keys, each row's max subtracted first
    4. out = probs @ v                                (B, H, T, D)

    One query (T = 1) at start = 2 with a zero query vector weighs keys 0, 1, 2 equally:
    its output is the mean of v[0], v[1], v[2], whatever v[3:] holds.
    """
    raise NotImplementedError("Exercise 5.2: new queries over cached keys, offset causal mask")


# --- Exercise 5.3 ---------------------------------------------------------------------------
def top_p_filter(logits, top_p):
    """Nucleus (top-p) filtering: ``logits`` (B, V) -> (B, V), the dropped tokens at -inf.

    In each row, keep the *fewest* likeliest tokens whose probabilities add up to at least
    ``top_p`` (0 < top_p <= 1); the kept logits are unchanged, the others become -inf. The
    likeliest token is always kept.

    1. probs = softmax(logits) per row (max subtracted: logits may be large)
    2. sort each row most likely first; mass *before* each token = cumsum - its own prob
    3. drop a token whose mass before it already reaches top_p (``before >= top_p``)
    4. put the decision back in the original token order (``np.put_along_axis``, or index
       with the sort order) and set the dropped logits to -inf

    probs [0.1, 0.6, 0.3], top_p = 0.8: 0.6 alone is not enough, 0.6 + 0.3 = 0.9 is, so
    token 0 is dropped -> [-inf, log 0.6, log 0.3]. (Keeping only the tokens whose running
    sum stays <= top_p would wrongly drop the 0.3 that crosses the line.)
    """
    raise NotImplementedError("Exercise 5.3: keep the smallest set holding probability top_p")


# --- Exercise 5.4 ---------------------------------------------------------------------------
def min_p_filter(logits, min_p):
    """Min-p filtering: ``logits`` (B, V) -> (B, V), the dropped tokens at -inf.

    Keep each token whose probability is at least ``min_p`` times its row's largest
    probability (0 < min_p <= 1); set the others to -inf, keep the rest unchanged.

        probs = softmax(logits) per row;   drop where probs < min_p * max(probs of the row)

    The cut follows the model's confidence. min_p = 0.1: a sure row [0.9, 0.05, 0.05]
    keeps only the 0.9 (the line is at 0.09); an unsure row [0.4, 0.35, 0.25] keeps all
    three (the line is at 0.04).
    """
    raise NotImplementedError("Exercise 5.4: keep tokens at least min_p times the likeliest")


# --- Exercise 5.5 ---------------------------------------------------------------------------
def apply_repetition_penalty(logits, previous_ids, penalty):
    """The CTRL repetition penalty: ``logits`` (B, V) with the tokens seen so far penalized.

    previous_ids: (B, n) integer token ids already in each row's sequence (prompt included;
                  n may be 0).
    penalty:      a number > 0; above 1 discourages repeats, 1 changes nothing.

    For every token that appears in a row's ``previous_ids`` - once, however often it
    appears - that row's logit becomes ``logit / penalty`` if it is positive and
    ``logit * penalty`` if it is negative (dividing a negative logit would *raise* it).
    Every other logit is unchanged. Return a new array; leave ``logits`` as it was.

    logits [[2.0, -1.0, 0.5]], previous_ids [[0, 1, 0]], penalty 2 -> [[1.0, -2.0, 0.5]]:
    token 0 is halved once although it appears twice, token 2 never appeared.
    """
    raise NotImplementedError("Exercise 5.5: penalize the tokens already in the sequence")
