"""Fused RMSNorm (Llama) and LayerNorm (GPT-2) over the last axis, with hand-derived backward.

With ``r = 1 / sqrt(mean(x^2) + eps)`` and ``xhat = x * r``, RMSNorm is ``y = xhat * w``.
Its backward, per row of C features (g = dy * w):

    dx = r * (g - xhat * mean(g * xhat))        dw = sum over rows of dy * xhat

LayerNorm first centres x (``xc = x - mean(x)``, r from the variance) and adds a bias; its
centring adds one term: ``dx = r * (g - mean(g) - xhat * mean(g * xhat))``.

The per-row means and the bias gradient go through ``backend.row_sum`` / ``row_dot`` /
``column_sum`` (sums in BLAS), and ``backend.overwrite`` reuses arrays the op itself just
made; see ``tinyllm/backend/base.py``.

>>> import tinyllm, numpy as np
>>> x = tinyllm.Tensor([[3.0, 4.0]])
>>> rms_norm(x, tinyllm.Tensor(np.ones(2, np.float32)), eps=0.0).numpy().round(4)
array([[0.8485, 1.1314]], dtype=float32)
"""

from ..autograd.function import Function


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
        xp, backend = ctx.xp, ctx.backend
        C = x.shape[-1]
        r = 1 / xp.sqrt(backend.row_dot(x, x) / C + eps)  # (..., 1)
        xhat = x * r  # (..., C)
        ctx.save_for_backward(xhat, r, weight)
        return xhat * weight

    @staticmethod
    def backward(ctx, grad):
        xhat, r, weight = ctx.saved
        xp, backend = ctx.xp, ctx.backend
        grad_x = grad_w = None
        if ctx.needs_grad[0]:
            g = grad * weight  # (..., C), fresh
            g_dot_xhat = backend.row_dot(g, xhat) / xhat.shape[-1]  # (..., 1): mean(g * xhat)
            g = backend.overwrite(xp.subtract, g, xhat * g_dot_xhat)
            grad_x = backend.overwrite(xp.multiply, g, r)
        if ctx.needs_grad[1]:
            grad_w = _sum_rows_of_product(xp, grad, xhat)
        return grad_x, grad_w


class LayerNorm(Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps=1e-5):
        _check_weight("layer_norm", x, weight)
        xp, backend = ctx.xp, ctx.backend
        C = x.shape[-1]
        centred = x - backend.row_sum(x) / C  # (..., C), fresh
        r = 1 / xp.sqrt(backend.row_dot(centred, centred) / C + eps)  # (..., 1)
        xhat = backend.overwrite(xp.multiply, centred, r)
        ctx.save_for_backward(xhat, r, weight)
        out = xhat * weight  # (..., C), fresh
        return out if bias is None else backend.overwrite(xp.add, out, bias)

    @staticmethod
    def backward(ctx, grad):
        xhat, r, weight = ctx.saved
        xp, backend = ctx.xp, ctx.backend
        C = xhat.shape[-1]
        grad_x = grad_w = grad_b = None
        if ctx.needs_grad[0]:
            g = grad * weight  # (..., C), fresh
            g_mean = backend.row_sum(g) / C  # (..., 1)
            g_dot_xhat = backend.row_dot(g, xhat) / C  # (..., 1): mean(g * xhat)
            correction = backend.overwrite(xp.add, xhat * g_dot_xhat, g_mean)  # (..., C)
            g = backend.overwrite(xp.subtract, g, correction)
            grad_x = backend.overwrite(xp.multiply, g, r)
        if ctx.needs_grad[1]:
            grad_w = _sum_rows_of_product(xp, grad, xhat)
        if ctx.needs_grad[2]:
            grad_b = backend.column_sum(grad.reshape(-1, C))  # (C,): the sum over rows
        return grad_x, grad_w, grad_b


def rms_norm(x, weight, eps=1e-5):
    return RMSNorm.apply(x, weight, eps=eps)


def layer_norm(x, weight, bias=None, eps=1e-5):
    return LayerNorm.apply(x, weight, bias, eps=eps)
