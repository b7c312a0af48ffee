"""Fused RMSNorm (Llama) and LayerNorm (GPT-2) over the last axis, with hand-derived backward.

With ``r = 1 / sqrt(mean(x^2) + eps)`` and ``xhat = x * r``, RMSNorm is ``y = xhat * w``.
Its backward, per row of C features (g = dy * w):

    dx = r * (g - xhat * mean(g * xhat))        dw = sum over rows of dy * xhat

LayerNorm first centres x (``xc = x - mean(x)``, r from the variance) and adds a bias; its
centring adds one term: ``dx = r * (g - mean(g) - xhat * mean(g * xhat))``.

The per-row sums come from the backend: ``backend.sum_last(x)`` is ``x.sum(axis=-1,
keepdims=True)``, ``backend.dot_last(a, b)`` is ``(a * b).sum(axis=-1, keepdims=True)`` and
``backend.sum_first(rows)`` is ``rows.sum(axis=0)``, computed faster on NumPy
(``tinyllm/backend/``). The elementwise work around those sums - ``1 / sqrt(. + eps)``,
the centring, ``xhat * w (+ b)`` and backward's ``r * (g - ...)`` - are chains of
``backend/fused.py``: one kernel each on CuPy.

>>> import tinyllm, numpy as np
>>> x = tinyllm.Tensor([[3.0, 4.0]])
>>> rms_norm(x, tinyllm.Tensor(np.ones(2, np.float32)), eps=0.0).numpy().round(4)
array([[0.8485, 1.1314]], dtype=float32)
"""

from ..autograd.function import Function
from ..backend import fused


def _sum_rows_of_product(xp, a, b):
    """The sum over rows of ``a * b``, without storing the product: (..., C) x2 -> (C,)."""
    C = a.shape[-1]
    return xp.einsum("nc,nc->c", a.reshape(-1, C), b.reshape(-1, C))


def _check_weight(op, x, weight):
    if weight.shape != (x.shape[-1],):
        raise ValueError(
            f"{op}: weight of shape {tuple(weight.shape)} does not match the last axis of "
            f"x of shape {tuple(x.shape)}; expected shape ({x.shape[-1]},)"
        )


class RMSNorm(Function):
    @staticmethod
    def forward(ctx, x, weight, eps=1e-5):
        _check_weight("rms_norm", x, weight)
        backend = ctx.backend
        C = x.shape[-1]
        r = backend.fused(fused.inverse_rms)(backend.dot_last(x, x), C, eps)  # (..., 1): 1/rms(x)
        xhat, out = backend.fused(fused.norm_scale)(x, r, weight)  # (..., C) each
        ctx.save_for_backward(xhat, r, weight)
        return out

    @staticmethod
    def backward(ctx, grad):
        xhat, r, weight = ctx.saved
        backend = ctx.backend
        C = xhat.shape[-1]
        grad_x = grad_w = None
        if ctx.needs_grad[0]:
            g = grad * weight  # (..., C)
            g_dot_xhat = backend.dot_last(g, xhat)  # (..., 1): C mean(g * xhat)
            grad_x = backend.fused(fused.norm_backward)(g, xhat, r, 0.0, g_dot_xhat, C)
        if ctx.needs_grad[1]:
            grad_w = _sum_rows_of_product(ctx.xp, grad, xhat)
        return grad_x, grad_w


class LayerNorm(Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps=1e-5):
        _check_weight("layer_norm", x, weight)
        backend = ctx.backend
        C = x.shape[-1]
        centred = backend.fused(fused.centre)(x, backend.sum_last(x), C)  # (..., C)
        sum_sq = backend.dot_last(centred, centred)  # (..., 1)
        r = backend.fused(fused.inverse_rms)(sum_sq, C, eps)  # (..., 1): 1 / std(x)
        if bias is None:
            xhat, out = backend.fused(fused.norm_scale)(centred, r, weight)
        else:
            xhat, out = backend.fused(fused.norm_scale_shift)(centred, r, weight, bias)
        ctx.save_for_backward(xhat, r, weight)
        return out

    @staticmethod
    def backward(ctx, grad):
        xhat, r, weight = ctx.saved
        backend = ctx.backend
        C = xhat.shape[-1]
        grad_x = grad_w = grad_b = None
        if ctx.needs_grad[0]:
            g = grad * weight  # (..., C)
            g_sum = backend.sum_last(g)  # (..., 1): C mean(g)
            g_dot_xhat = backend.dot_last(g, xhat)  # (..., 1): C mean(g * xhat)
            grad_x = backend.fused(fused.norm_backward)(g, xhat, r, g_sum, g_dot_xhat, C)
        if ctx.needs_grad[1]:
            grad_w = _sum_rows_of_product(ctx.xp, grad, xhat)
        if ctx.needs_grad[2]:
            grad_b = backend.sum_first(grad.reshape(-1, C))  # (C,): the sum over rows
        return grad_x, grad_w, grad_b


def rms_norm(x, weight, eps=1e-5):
    return RMSNorm.apply(x, weight, eps=eps)


def layer_norm(x, weight, bias=None, eps=1e-5):
    return LayerNorm.apply(x, weight, bias, eps=eps)
