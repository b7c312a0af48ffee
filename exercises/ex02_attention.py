"""Exercises for lesson 02: embeddings and attention. Replace each ``raise NotImplementedError``.

Everything here is plain NumPy: arrays in, arrays out, no Tensors and no gradients. The
shapes are the library's: ``(B, H, T, D)`` is batch, heads, time (positions), and the
features of one head. Keys and values may have fewer heads than queries (``H_kv``) and,
with a KV cache, more positions (``S >= T``).

RoPE uses the "rotate half" layout of Llama and Hugging Face: feature ``i`` of a head is
paired with feature ``i + D/2``, and pair ``i`` turns at ``inv_freq[i] = theta ** (-2i / D)``
radians per position.

Grade with ``tinyllm grade exercises -k ex02`` (lesson: lessons/02-embeddings-and-attention.md).
"""

import numpy as np  # noqa: F401 - the stubs don't use it yet; your answers will


# --- Exercise 2.1 ---------------------------------------------------------------------------
def apply_rotary(x, positions, theta=10000.0):
    """Rotate ``x`` (..., T, D) by RoPE: the row at time t turns as if at ``positions[t]``.

    ``positions`` is an integer array (T,), not necessarily 0, 1, 2, ... (a KV cache starts
    at the cache's length; exercise 2.4 uses any offset). D is even. Return an array of the
    same shape and dtype as ``x`` (cast cos and sin to ``x.dtype``: float32 in, float32 out).

    Steps: ``inv_freq`` (D/2,); ``angles = positions[:, None] * inv_freq`` (T, D/2); repeat
    them for both halves, (T, D); then ``x * cos + rotate_half(x) * sin``, where
    ``rotate_half([x1, x2]) = [-x2, x1]`` on the last axis.

    With D = 2 there is one pair, turning 1 radian per position:
    apply_rotary([[1.0, 0.0]], positions=[1])  ->  [[cos(1), sin(1)]] = [[0.5403, 0.8415]]
    """
    raise NotImplementedError("Exercise 2.1: rotate x by RoPE at the given positions")


# --- Exercise 2.2 ---------------------------------------------------------------------------
def causal_attention(q, k, v, scale=None):
    """Causal scaled-dot-product attention: ``q`` (B, H, T, D), ``k``, ``v`` (B, H, S, D).

    Return (B, H, T, D). ``scale`` defaults to ``1 / sqrt(D)``.

    1. scores = q @ k^T * scale                    (B, H, T, S)
    2. mask: query i may see key j only if j <= i + S - T (with S == T: j <= i). The T
       queries are the *last* T positions of the S keys, as when a KV cache holds the
       past. Set the hidden scores to -inf (``np.tril(..., k=S - T)`` builds the mask).
    3. softmax over the keys (last axis). Subtract each row's max before ``np.exp``: the
       result is the same and large scores no longer overflow to inf / inf = nan.
    4. out = probs @ v                             (B, H, T, D)
    """
    raise NotImplementedError("Exercise 2.2: scores, causal mask, softmax, weighted sum of v")


# --- Exercise 2.3 ---------------------------------------------------------------------------
def repeat_kv(x, n_rep):
    """Copy each key/value head ``n_rep`` times: (B, H_kv, S, D) -> (B, H_kv * n_rep, S, D).

    In grouped-query attention query head h uses key/value head ``h // n_rep``, so the
    copies of one head must sit next to each other: heads [a, b] with n_rep = 2 become
    [a, a, b, b], not [a, b, a, b].
    """
    raise NotImplementedError("Exercise 2.3: repeat each key/value head n_rep times")


def grouped_query_attention(q, k, v, scale=None):
    """Causal attention with ``q`` (B, H, T, D) and ``k``, ``v`` (B, H_kv, S, D), H_kv | H.

    Each key/value head serves ``H // H_kv`` consecutive query heads (H_kv == H: multi-
    head; H_kv == 1: multi-query). Return (B, H, T, D). ``repeat_kv`` and
    ``causal_attention`` do it in two lines; the library instead reshapes q to
    (B, H_kv, G * T, D) so no copy of k and v is made - try that too if you like.
    """
    raise NotImplementedError("Exercise 2.3: grouped-query attention")


# --- Exercise 2.4 ---------------------------------------------------------------------------
def rope_score(q, k, offset, theta=10000.0):
    """The score ``rope(q, m) . rope(k, n)`` computed from ``offset = m - n`` alone.

    ``q`` and ``k`` are single head vectors (D,); ``offset`` is an int or an integer array,
    and the result has the shape of ``offset`` (a float, or an array of scores).

    Do not rotate both vectors. Treat pair i as a complex number, ``z = x[i] + 1j * x[i + D/2]``:
    rotating it by an angle a is ``z * exp(1j * a)``, and the dot product of two pairs is
    ``Re(z_q * conj(z_k))``. Write out ``rope(q, m) . rope(k, n)`` in these terms and the
    positions m and n appear only as m - n. (``np.multiply.outer`` or broadcasting handles
    an array of offsets.)
    """
    raise NotImplementedError("Exercise 2.4: the RoPE score as a function of m - n")
