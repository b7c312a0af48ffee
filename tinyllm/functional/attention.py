"""Fused causal scaled-dot-product attention, for multi-head, grouped-query and multi-query.

    S = (q * scale) @ k^T        (B, H, T, S_len)   how much each query likes each key
    P = softmax(S), masked       future keys get probability 0 when ``causal``
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

>>> import numpy as np, tinyllm
>>> q = k = v = tinyllm.Tensor(np.eye(2, dtype=np.float32).reshape(1, 1, 2, 2))
>>> scaled_dot_product_attention(q, k, v).numpy()[0, 0, 0]   # query 0 sees only key 0
array([1., 0.], dtype=float32)
"""

import math

from ..autograd.function import Function


def _check(q, k, v):
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


class ScaledDotProductAttention(Function):
    @staticmethod
    def forward(ctx, q, k, v, causal=True, scale=None, window=None):
        _check(q, k, v)
        xp, backend = ctx.xp, ctx.backend
        B, H, T, D = q.shape
        H_kv, S = k.shape[1], k.shape[2]
        G = H // H_kv
        scale = 1.0 / math.sqrt(D) if scale is None else scale

        q_scaled = (q * scale).reshape(B, H_kv, G * T, D)  # query heads of a group stacked
        scores = q_scaled @ xp.swapaxes(k, -1, -2)  # (B, H_kv, G*T, S)
        if causal:  # add -inf where a key lies in a query's future (or too far in its past)
            visible = xp.tril(xp.ones((T, S), dtype=bool), k=S - T)  # (T, S)
            if window is not None:
                visible &= ~xp.tril(xp.ones((T, S), dtype=bool), k=S - T - window)
            mask = xp.where(visible, 0.0, -xp.inf).astype(scores.dtype)  # (T, S)
            scores = (scores.reshape(B, H_kv, G, T, S) + mask).reshape(B, H_kv, G * T, S)
        e = xp.exp(scores - backend.max_last(scores))  # softmax over the keys
        probs = e / backend.sum_last(e)  # (B, H_kv, G*T, S)
        out = probs @ v  # (B, H_kv, G*T, D)

        ctx.save_for_backward(q_scaled, k, v, probs, out)
        ctx.scale, ctx.q_shape = scale, q.shape
        return out.reshape(B, H, T, D)

    @staticmethod
    def backward(ctx, grad):
        q_scaled, k, v, probs, out = ctx.saved
        xp, backend = ctx.xp, ctx.backend
        grad_out = grad.reshape(out.shape)  # (B, H_kv, G*T, D)
        grad_v = xp.swapaxes(probs, -1, -2) @ grad_out if ctx.needs_grad[2] else None
        grad_probs = grad_out @ xp.swapaxes(v, -1, -2)  # (B, H_kv, G*T, S)
        row_dot = backend.dot_last(grad_out, out)  # (B, H_kv, G*T, 1): rowsum(dO * O)
        grad_scores = probs * (grad_probs - row_dot)  # P * (dP - rowsum(dO * O))
        grad_q = grad_k = None
        if ctx.needs_grad[0]:
            grad_q = ((grad_scores @ k) * ctx.scale).reshape(ctx.q_shape)
        if ctx.needs_grad[1]:
            grad_k = xp.swapaxes(grad_scores, -1, -2) @ q_scaled
        return grad_q, grad_k, grad_v


def scaled_dot_product_attention(q, k, v, causal=True, scale=None, window=None):
    """Attention of ``q`` (B, H, T, D) over ``k``, ``v`` (B, H_kv, S, D); returns (B, H, T, D).

    ``scale`` defaults to 1/sqrt(D); ``causal`` hides keys after each query's position, and
    ``window`` (with ``causal``) those ``window`` or more positions before it.
    """
    if window is not None and (not causal or window < 1):
        raise ValueError(f"attention: window={window} needs causal=True and a window of >= 1 keys")
    return ScaledDotProductAttention.apply(q, k, v, causal=causal, scale=scale, window=window)
