"""Fused causal scaled-dot-product attention, for multi-head, grouped-query and multi-query.

    S = (q * scale) @ k^T + M    (B, H, T, S_len)   how much each query likes each key
    P = softmax(S)                                  M = -inf hides a key: probability 0
    O = P @ v                    (B, H, T, D)       a weighted mix of values

Backward, with dO the incoming gradient (the row-sum trick avoids one (T, S) pass):

    dV = P^T @ dO      dP = dO @ V^T      dS = P * (dP - rowsum(dO * O))
    dQ = dS @ K * scale                  dK = dS^T @ (Q * scale)

Grouped-query attention: ``q`` has H heads, ``k`` and ``v`` have fewer, H_kv, and each
key/value head serves H / H_kv query heads. Instead of copying k and v H / H_kv times, the
query heads of a group are stacked along the time axis, (B, H_kv, G*T, D), so one batched
matmul serves the whole group and dK, dV come out already summed over it.

With ``causal=True`` and more keys than queries (S_len > T, as when a KV cache holds the
past), query i sits at position S_len - T + i and sees keys up to there. A sliding
``window`` (Mistral) hides, in addition, the keys ``window`` or more positions back.

Long causal attention (``QUERY_BLOCKS`` * ``MIN_QUERY_BLOCK`` = 512 queries or more) runs in
four blocks of queries, each against only the keys up to its last query (and, with a window,
from its first query's window on): the tiles of scores wholly in the future are never
computed. The results are those of one block; the work and the probabilities kept are 10/16.

An explicit ``mask``, broadcastable to (B, H, T, S_len), hides more: boolean (True = the
query may see the key) or additive (a float added to the scores: 0, or -inf / a large
negative number). With ``causal`` too, a key is seen only where both allow it. A padded
batch uses it: a (B, 1, 1, S_len) mask that is False on each row's padding keys. The mask
is a constant, never differentiated.

A query that sees no key at all (a padding query, say) has no distribution to average
over; its output row is 0, and so is every gradient through it, rather than NaN.

Mixed precision (``tinyllm.precision("bfloat16")``, see ``backend/precision.py``): the
six products (two forward, four backward) take bfloat16 / float16 inputs and sum and
return float32; the mask, the softmax and ``rowsum(dO * O)`` stay float32. The forward
keeps its product inputs (q, k, v and P) in the compute dtype for backward.

Where a backend has a fused attention kernel (``Backend.flash_attention``: under JAX on an
NVIDIA GPU, cuDNN's FlashAttention through ``jax.nn.dot_product_attention``), causal
self-attention in 16 bits - no ``mask``, no ``window``, as many keys as queries, as in a
training step - runs through it instead, forward and backward. It computes the same thing in
tiles of keys and never writes the (T, S) scores to memory (lesson 13).

>>> import numpy as np, tinyllm
>>> q = k = v = tinyllm.Tensor(np.eye(2, dtype=np.float32).reshape(1, 1, 2, 2))
>>> scaled_dot_product_attention(q, k, v).numpy()[0, 0, 0]   # query 0 sees only key 0
array([1., 0.], dtype=float32)
"""

import functools
import math
import operator

import numpy as np

from ..autograd.function import Function
from ..autograd.tensor import Tensor
from ..backend import fused
from ..backend.precision import lower, matmul_f32, product_dtype


def _check(q, k, v, mask):
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(
            "attention: q, k, v must be (batch, heads, time, head_dim); got shapes "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    (B, H, T, D), (Bk, H_kv, S, Dk) = q.shape, k.shape
    if k.shape != v.shape or Bk != B or Dk != D:
        raise ValueError(
            f"attention: k {tuple(k.shape)} and v {tuple(v.shape)} must both be "
            f"({B}, n_kv_head, seq, {D}) to match q {tuple(q.shape)}"
        )
    if H % H_kv:
        raise ValueError(
            f"attention: {H} query heads cannot be shared evenly among {H_kv} key/value heads"
        )
    if S < T:
        raise ValueError(f"attention: {T} queries but only {S} keys; need at least as many keys")
    if mask is None:
        return
    if mask.dtype != bool and not np.issubdtype(mask.dtype, np.floating):
        raise TypeError(
            f"attention: mask must be boolean (True = may attend) or float (added to the "
            f"scores); got dtype {mask.dtype}"
        )
    try:
        fits = mask.ndim <= 4 and np.broadcast_shapes(mask.shape, (B, H, T, S)) == (B, H, T, S)
    except ValueError:
        fits = False
    if not fits:
        raise ValueError(
            f"attention: mask of shape {tuple(mask.shape)} does not broadcast to "
            f"(batch, heads, queries, keys) = {(B, H, T, S)}"
        )


def _grouped(mask, H_kv, G):
    """``mask`` (..., T, S) broadcastable to (B, H, T, S) -> (B|1, H_kv|1, G|1, T|1, S|1).

    The H query heads are H_kv groups of G, so a per-head mask splits its head axis the same
    way; a mask shared by all heads gets two axes of 1.
    """
    mask = mask.reshape((1,) * (4 - mask.ndim) + mask.shape)  # (B|1, H|1, T|1, S|1)
    b, h, t, s = mask.shape
    return mask.reshape(b, H_kv, G, t, s) if h > 1 else mask.reshape(b, 1, 1, t, s)


# Long causal attention runs in QUERY_BLOCKS blocks of query rows, each block against only the
# keys one of its queries can see: the tiles of scores that lie wholly in every query's future
# are never computed or kept. Four blocks do 10/16 of the products and keep 10/16 of the
# probabilities. Short sequences stay one block, where the smaller products cost what they
# save. Forward and backward on a 2-core CPU (benchmarks/bench_ops.py, benchmarks/README.md):
# at (2, 12, 1024, 64), NumPy 283 -> 150 ms and JAX 208 -> 122 ms in four blocks; at
# (12, 6, 256, 64), two blocks of 128 gained nothing on either.
QUERY_BLOCKS = 4
MIN_QUERY_BLOCK = 128


def query_blocks(T, S, n_blocks, window=None):
    """Causal attention's T queries (the last T of S positions) in ``n_blocks`` blocks of rows
    t0:t1, each with the keys s0:s1 one of its queries can see: [(t0, t1, s0, s1), ...].

    >>> query_blocks(512, 512, 4)
    [(0, 128, 0, 128), (128, 256, 0, 256), (256, 384, 0, 384), (384, 512, 0, 512)]
    >>> query_blocks(512, 512, 4, window=100)   # a sliding window also skips keys long past
    [(0, 128, 0, 128), (128, 256, 29, 256), (256, 384, 157, 384), (384, 512, 285, 512)]
    """
    bounds = [T * i // n_blocks for i in range(n_blocks + 1)]
    blocks = []
    for t0, t1 in zip(bounds, bounds[1:]):  # queries at positions S - T + t0 ... S - T + t1 - 1
        s0 = 0 if window is None else max(0, S - T + t0 - window + 1)
        blocks.append((t0, t1, s0, S - T + t1))
    return blocks


def _blocks(T, S, causal, window):
    """The blocks this op computes in: QUERY_BLOCKS of them for long causal attention, else one
    (which, with a window, still skips the keys before it); without ``causal``, every key.

    >>> _blocks(256, 256, True, None)
    [(0, 256, 0, 256)]
    >>> len(_blocks(512, 512, True, None))
    4
    """
    if not causal:
        return [(0, T, 0, S)]
    return query_blocks(T, S, QUERY_BLOCKS if T >= QUERY_BLOCKS * MIN_QUERY_BLOCK else 1, window)


def _causal_bias(T, S, window, G, block):
    """(G*(t1 - t0), s1 - s0) float32, made with NumPy, for ``block`` = (t0, t1, s0, s1) of
    T queries and S keys: 0 where query i (at position S - T + i) may see key j, -inf where
    the key lies in its future or ``window`` or more positions back; once for each of the G
    query heads a group stacks.

    >>> _causal_bias(2, 3, None, 1, (0, 2, 0, 3))
    array([[  0.,   0., -inf],
           [  0.,   0.,   0.]], dtype=float32)
    """
    t0, t1, s0, s1 = block
    query = np.arange(t0, t1)[:, None] + S - T  # positions
    key = np.arange(s0, s1)[None, :]
    visible = key <= query
    if window is not None:
        visible &= key > query - window
    bias = np.where(visible, 0.0, -np.inf).astype(np.float32)
    return np.tile(bias, (G, 1))


def _block_of(bias, t0, t1, s0, s1):
    """Queries t0:t1 and keys s0:s1 of a (..., T|1, S|1) mask; an axis of 1 broadcasts."""
    rows = slice(t0, t1) if bias.shape[-2] > 1 else slice(None)
    cols = slice(s0, s1) if bias.shape[-1] > 1 else slice(None)
    return bias[..., rows, cols]


def _join_queries(xp, parts):
    """Blocks (B, H_kv, G, t1 - t0, D), in order -> (B, H_kv, G, T, D)."""
    return parts[0] if len(parts) == 1 else xp.concatenate(parts, axis=3)


def _into_keys(xp, part, s0, S):
    """(B, H_kv, s1 - s0, D) gradients of keys s0:s1 -> (B, H_kv, S, D), 0 for the others."""
    if part.shape[2] == S:
        return part
    return xp.pad(part, ((0, 0), (0, 0), (s0, S - s0 - part.shape[2]), (0, 0)))


class ScaledDotProductAttention(Function):
    @staticmethod
    def forward(ctx, q, k, v, causal=True, scale=None, window=None, mask=None):
        xp, backend = ctx.xp, ctx.backend
        if mask is not None and not backend.owns(mask):
            mask = backend.asarray(mask)
        _check(q, k, v, mask)
        B, H, T, D = q.shape
        H_kv, S = k.shape[1], k.shape[2]
        G = H // H_kv
        scale = 1.0 / math.sqrt(D) if scale is None else scale

        dtype = product_dtype(backend)  # None: float32, the policy is off
        if causal and window is None and mask is None and S == T and dtype is not None:
            kernel = backend.flash_attention(q, k, v, scale, dtype)  # None: none here
            if kernel is not None:
                out, ctx.kernel_backward = kernel
                return out
        ctx.kernel_backward = None
        mm = operator.matmul if dtype is None else matmul_f32  # (matmul_f32: float32 out)
        q_scaled = lower((q * scale).reshape(B, H_kv, G, T, D), dtype)  # query heads of a group
        k, v = lower(k, dtype), lower(v, dtype)
        if mask is not None:  # the caller's mask: booleans become 0 / -inf, floats stay
            bias = xp.where(mask, 0.0, -xp.inf) if mask.dtype == bool else mask
            bias = _grouped(bias, H_kv, G).astype(q.dtype)  # (B|1, H_kv|1, G|1, T|1, S|1)

        blocks = _blocks(T, S, causal, window)
        outs, all_probs = [], []
        for t0, t1, s0, s1 in blocks:
            rows = G * (t1 - t0)  # the group's query heads stacked along time
            q_block = q_scaled[:, :, :, t0:t1].reshape(B, H_kv, rows, D)
            scores = mm(q_block, xp.swapaxes(k[:, :, s0:s1], -1, -2))  # (B, H_kv, rows, keys)
            # Masks add 0 where a query may see a key and -inf where not.
            if causal:  # -inf where a key lies in a query's future (or too far in its past)
                key = ("causal attention", T, S, window, G, (t0, t1, s0, s1))
                scores = scores + backend.constant(key, functools.partial(_causal_bias, *key[1:]))
            if mask is not None:
                shape = (B, H_kv, G, t1 - t0, s1 - s0)
                scores = (scores.reshape(shape) + _block_of(bias, t0, t1, s0, s1)).reshape(
                    B, H_kv, rows, s1 - s0
                )
            row_max = backend.max_last(scores)  # (B, H_kv, rows, 1); -inf where no key is seen
            if mask is None:  # every query sees a key (causal keeps the diagonal): plain softmax
                e = backend.fused(fused.shifted_exp)(scores, row_max)  # exp(S - max)
                probs = e / backend.sum_last(e)
            else:  # a query may see no key at all (padding): its row of probabilities stays 0
                e = backend.fused(fused.softmax_exp)(scores, row_max)  # exp(S - max), or 0
                probs = backend.fused(fused.normalise)(e, backend.sum_last(e))
            all_probs.append(lower(probs, dtype))
            out = mm(all_probs[-1], v[:, :, s0:s1])  # (B, H_kv, rows, D)
            outs.append(out.reshape(B, H_kv, G, t1 - t0, D))
        out = _join_queries(xp, outs)  # (B, H_kv, G, T, D)

        ctx.save_for_backward(q_scaled, k, v, out, *all_probs)
        ctx.scale, ctx.q_shape, ctx.mm, ctx.blocks = scale, q.shape, mm, blocks
        return out.reshape(B, H, T, D)

    @staticmethod
    def backward(ctx, grad):
        if ctx.kernel_backward is not None:  # the library kernel's own backward
            return ctx.kernel_backward(grad)
        q_scaled, k, v, out, *all_probs = ctx.saved
        xp, backend, mm = ctx.xp, ctx.backend, ctx.mm
        dtype = None if mm is operator.matmul else v.dtype  # the forward's compute dtype
        B, H_kv, G, T, D = out.shape
        S = k.shape[2]
        grad_out = grad.reshape(out.shape)  # (B, H_kv, G, T, D)
        row_dot = backend.dot_last(grad_out, out)  # (B, H_kv, G, T, 1): rowsum(dO * O)
        grad_out = lower(grad_out, dtype)
        grads_q, grads_k, grads_v = [], [], []
        for (t0, t1, s0, s1), probs in zip(ctx.blocks, all_probs):
            rows = G * (t1 - t0)
            grad_block = grad_out[:, :, :, t0:t1].reshape(B, H_kv, rows, D)
            k_block, v_block = k[:, :, s0:s1], v[:, :, s0:s1]
            if ctx.needs_grad[2]:
                grads_v.append(_into_keys(xp, mm(xp.swapaxes(probs, -1, -2), grad_block), s0, S))
            grad_probs = mm(grad_block, xp.swapaxes(v_block, -1, -2))  # (B, H_kv, rows, keys)
            dots = row_dot[:, :, :, t0:t1].reshape(B, H_kv, rows, 1)
            grad_scores = backend.fused(fused.softmax_backward)(probs, grad_probs, dots)
            # P * (dP - rowsum(dO * O)), one kernel on CuPy
            grad_scores = lower(grad_scores, dtype)
            if ctx.needs_grad[0]:
                grad_q = mm(grad_scores, k_block) * ctx.scale
                grads_q.append(grad_q.reshape(B, H_kv, G, t1 - t0, D))
            if ctx.needs_grad[1]:
                q_block = q_scaled[:, :, :, t0:t1].reshape(B, H_kv, rows, D)
                grads_k.append(_into_keys(xp, mm(xp.swapaxes(grad_scores, -1, -2), q_block), s0, S))
        grad_q = grad_k = grad_v = None
        if grads_q:
            grad_q = _join_queries(xp, grads_q).reshape(ctx.q_shape)
        if grads_k:
            grad_k = functools.reduce(operator.add, grads_k)
        if grads_v:
            grad_v = functools.reduce(operator.add, grads_v)
        return grad_q, grad_k, grad_v


def scaled_dot_product_attention(q, k, v, causal=True, scale=None, window=None, mask=None):
    """Attention of ``q`` (B, H, T, D) over ``k``, ``v`` (B, H_kv, S, D); returns (B, H, T, D).

    ``scale`` defaults to 1/sqrt(D); ``causal`` hides keys after each query's position, and
    ``window`` (with ``causal``) those ``window`` or more positions before it. ``mask``
    (an array or Tensor broadcastable to (B, H, T, S)) hides, in addition, the keys where it
    is False (boolean) or adds itself to the scores (float). A query that sees no key gets 0.

    >>> import numpy as np, tinyllm
    >>> q = k = v = tinyllm.Tensor(np.eye(2, dtype=np.float32).reshape(1, 1, 2, 2))
    >>> padding = np.array([False, True]).reshape(1, 1, 1, 2)    # key 0 is padding
    >>> scaled_dot_product_attention(q, k, v, mask=padding).numpy()[0, 0]
    array([[0., 0.],
           [0., 1.]], dtype=float32)
    """
    if window is not None and (not causal or window < 1):
        raise ValueError(f"attention: window={window} needs causal=True and a window of >= 1 keys")
    mask = mask.data if isinstance(mask, Tensor) else mask
    return ScaledDotProductAttention.apply(
        q, k, v, causal=causal, scale=scale, window=window, mask=mask
    )
