"""Causal self-attention: every position gathers information from the positions before it.

Each of ``n_head`` heads projects the input to queries, keys and values of ``head_dim``
features (``d_model / n_head`` unless given; the output projection maps ``n_head *
head_dim`` back to ``d_model`` either way). With grouped-query attention only
``n_kv_head`` heads of keys and values are made, each shared by ``n_head / n_kv_head``
query heads - the KV cache shrinks by that factor. ``n_kv_head == n_head`` is classic
multi-head attention; ``n_kv_head == 1`` is multi-query attention.

    x (B, T, d_model) -> q (B, n_head, T, head_dim), k, v (B, n_kv_head, T, head_dim)
    [Qwen3: RMSNorm each query and key head]
    [RoPE rotates q and k by their positions]
    [with a KV cache: k, v are appended to the cached ones, and q attends over all of them]
    attention over the past -> (B, n_head, T, head_dim) -> merge heads -> output projection

>>> import numpy as np
>>> attn = CausalSelfAttention(d_model=8, n_head=4, n_kv_head=2, seed=0)
>>> attn.k_proj.weight.shape            # 2 key heads of 2 features each
(8, 4)
>>> attn(np.ones((1, 3, 8), np.float32)).shape
(1, 3, 8)
"""

import numpy as np

from .. import functional as F
from ..autograd import Tensor
from .layers import Dropout, Linear, RMSNorm
from .module import Module


class CausalSelfAttention(Module):
    """Multi-head / grouped-query / multi-query causal attention, with optional RoPE.

    ``rope`` is a ``RotaryEmbedding`` shared by the model's layers, or ``None`` when
    positions are added to the input instead (GPT-2). ``window`` limits how many past keys
    each query sees (sliding-window attention). ``qk_norm_eps`` (a number) gives every
    query and key head an RMSNorm over its ``head_dim`` features before RoPE, as Qwen3 does:
    the scores then cannot grow just because q or k grew.
    """

    def __init__(
        self,
        d_model,
        n_head,
        n_kv_head=None,
        *,
        head_dim=None,
        qk_norm_eps=None,
        qkv_bias=False,
        bias=False,
        rope=None,
        window=None,
        dropout=0.0,
        std=0.02,
        out_std=None,
        seed=None,
    ):
        n_kv_head = n_kv_head or n_head
        if (head_dim is None and d_model % n_head) or n_head % n_kv_head:
            raise ValueError(
                f"CausalSelfAttention: need d_model ({d_model}) divisible by n_head ({n_head}) "
                f"unless head_dim is given, and n_head divisible by n_kv_head ({n_kv_head})"
            )
        rng = np.random.default_rng(seed)
        self.n_head, self.n_kv_head = n_head, n_kv_head
        self.head_dim = head_dim or d_model // n_head
        self.q_proj = Linear(d_model, n_head * self.head_dim, qkv_bias, std=std, seed=rng)
        self.k_proj = Linear(d_model, n_kv_head * self.head_dim, qkv_bias, std=std, seed=rng)
        self.v_proj = Linear(d_model, n_kv_head * self.head_dim, qkv_bias, std=std, seed=rng)
        self.o_proj = Linear(n_head * self.head_dim, d_model, bias, std=out_std or std, seed=rng)
        self.q_norm = self.k_norm = None
        if qk_norm_eps is not None:
            self.q_norm = RMSNorm(self.head_dim, qk_norm_eps)
            self.k_norm = RMSNorm(self.head_dim, qk_norm_eps)
        self.rope = rope
        self.window = window
        self.dropout = Dropout(dropout, seed=rng.integers(2**31))

    def _heads(self, x, n, norm=None):
        B, T, _ = x.shape
        x = x.reshape(B, T, n, self.head_dim)
        if norm is not None:
            x = norm(x)  # over each head's own features
        return x.transpose(0, 2, 1, 3)  # (B, n, T, head_dim)

    def forward(self, x, start=0, cache=None, layer=None, mask=None, positions=None):
        """``x`` (B, T, d_model) at positions ``start .. start + T - 1`` -> (B, T, d_model).

        With a ``cache`` (a ``KVCache``) holding positions ``0 .. start - 1``, this call's
        keys and values are written into its slot ``layer`` and the queries attend over all
        of them: the causal mask, offset by ``start``, lets query i see keys up to
        ``start + i`` (and the sliding ``window`` hides the older ones the cache still holds).
        A cache of fixed shape (``StaticKVCache``) returns every slot, and its ``visible``
        mask replaces the causal one.
        ``mask`` (broadcastable to (B, n_head, T, S); boolean or additive) hides keys on top
        of the causal mask, as ``F.scaled_dot_product_attention`` does with it. ``positions``
        (B, T), where given, are the positions RoPE rotates by instead (packed sequences
        restart at 0).
        """
        B, T, _ = x.shape
        q = self._heads(self.q_proj(x), self.n_head, self.q_norm)  # (B, n_head, T, head_dim)
        k = self._heads(self.k_proj(x), self.n_kv_head, self.k_norm)  # (B, n_kv_head, T, head_dim)
        v = self._heads(self.v_proj(x), self.n_kv_head)  # (B, n_kv_head, T, head_dim)
        if self.rope is not None:  # every token's own position, or the first one's
            at = start if positions is None else positions
            q, k = self.rope(q, at), self.rope(k, at)
        causal, window = True, self.window
        if cache is not None:
            if start is not cache.length and cache.length != start:
                raise ValueError(
                    f"CausalSelfAttention: start={start} but the cache holds {cache.length} "
                    "positions; new positions must follow the cached ones"
                )
            k, v = cache.update(layer, k, v)  # (B, n_kv_head, S, head_dim), S >= start + T
            visible = cache.visible(T, self.window)  # (T, S), or None: causal says it
            if visible is not None:
                mask = visible if mask is None else _both(cache.backend.xp, visible, mask)
                causal, window = False, None
        y = F.scaled_dot_product_attention(q, k, v, causal=causal, window=window, mask=mask)
        y = y.transpose(0, 2, 1, 3).reshape(B, T, self.n_head * self.head_dim)  # merge heads
        return self.dropout(self.o_proj(y))  # (B, T, d_model)


def _both(xp, visible, mask):
    """The keys both ``visible`` (T, S booleans) and the caller's ``mask`` (boolean, or
    additive float) allow, in the caller's kind of mask."""
    mask = xp.asarray(mask.data if isinstance(mask, Tensor) else mask)
    if mask.dtype == bool:
        return visible & mask
    return xp.where(visible, mask, -xp.inf)
