"""Reference answers for exercises/ex02_attention.py: tinyllm's RoPE and attention ops.

The exercises take and return NumPy arrays, the library works on Tensors: the glue wraps,
calls the library and unwraps. Two pieces the library does differently on purpose are
spelled out: angles for arbitrary positions (``RotaryEmbedding`` makes tables for a run of
positions from ``start``), and ``repeat_kv`` (the library's attention never copies k and v).
"""

import numpy as np

from tinyllm import Tensor
from tinyllm import functional as F
from tinyllm.nn.rope import RotaryEmbedding


def apply_rotary(x, positions, theta=10000.0):
    x = np.asarray(x)
    positions = np.asarray(positions)
    inv_freq, _ = RotaryEmbedding(x.shape[-1], theta).inverse_frequencies(len(positions))
    angles = np.multiply.outer(positions, inv_freq)  # (T, D/2)
    angles = np.concatenate([angles, angles], axis=-1)  # (T, D): both halves of a pair
    cos, sin = np.cos(angles).astype(x.dtype), np.sin(angles).astype(x.dtype)
    return F.apply_rope(Tensor(x), cos, sin).numpy()


def causal_attention(q, k, v, scale=None):
    q, k, v = Tensor(q), Tensor(k), Tensor(v)
    return F.scaled_dot_product_attention(q, k, v, causal=True, scale=scale).numpy()


def repeat_kv(x, n_rep):
    return np.repeat(x, n_rep, axis=1)  # (B, H_kv * n_rep, S, D): copies side by side


grouped_query_attention = causal_attention  # the library's attention is grouped-query already


def rope_score(q, k, offset, theta=10000.0):
    # rope(q, m) . rope(k, n) == rope(q, m - n) . k: rotate q by the offset, k not at all.
    offset = np.asarray(offset)
    q_rotated = apply_rotary(np.broadcast_to(q, (offset.size, len(q))), offset.ravel(), theta)
    return (q_rotated @ np.asarray(k)).reshape(offset.shape)[()]  # (*offset.shape)


__all__ = ["apply_rotary", "causal_attention", "grouped_query_attention", "repeat_kv", "rope_score"]
