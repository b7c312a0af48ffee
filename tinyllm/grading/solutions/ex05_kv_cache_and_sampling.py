"""Reference answers for exercises/ex05_kv_cache_and_sampling.py: tinyllm's cache and sampling.

The exercises take and return NumPy arrays, the library works on Tensors and objects: the
glue wraps, calls the library and unwraps. ``KVCache.update`` (tinyllm/nn/kv_cache.py)
writes the new positions, ``scaled_dot_product_attention`` (tinyllm/functional/attention.py)
applies the offset causal mask, and the sampling rules are ``keep_top_p``, ``keep_min_p``
and ``penalize_repetition`` (tinyllm/infer/sampling.py) - never a second copy of them.
"""

import numpy as np

from tinyllm import Tensor
from tinyllm import functional as F
from tinyllm.infer import KVCache
from tinyllm.infer import keep_min_p as min_p_filter
from tinyllm.infer import keep_top_p as top_p_filter
from tinyllm.infer import penalize_repetition as apply_repetition_penalty

__all__ = [
    "apply_repetition_penalty",
    "cached_attention",
    "kv_cache_update",
    "min_p_filter",
    "top_p_filter",
]


def kv_cache_update(keys, values, k_new, v_new, length):
    B, H_kv, max_len, D = keys.shape
    cache = KVCache(1, B, H_kv, max_len, D, dtype=keys.dtype)  # one layer ...
    cache.keys[0], cache.values[0] = keys, values  # ... holding these very buffers
    cache.length = length
    k, v = cache.update(0, Tensor(np.asarray(k_new)), Tensor(np.asarray(v_new)))
    return k.data, v.data  # (B, H_kv, length + T, D): slices of the buffers


def cached_attention(q, k, v, start, scale=None, window=None):
    end = start + q.shape[2]  # keys after the new queries' last position are stale
    q, k, v = Tensor(q), Tensor(k[:, :, :end]), Tensor(v[:, :, :end])
    out = F.scaled_dot_product_attention(q, k, v, causal=True, scale=scale, window=window)
    return out.numpy()  # (B, H, T, D)
