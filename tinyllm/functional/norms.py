"""Fused RMSNorm (Llama) and LayerNorm (GPT-2) over the last axis, with hand-derived backward.

With ``r = 1 / sqrt(mean(x^2) + eps)`` and ``xhat = x * r``, RMSNorm is ``y = xhat * w``.
Its backward, per row of C features (g = dy * w):

    dx = r * (g - xhat * mean(g * xhat))        dw = sum over rows of dy * xhat

LayerNorm first centres x (``xc = x - mean(x)``, r from the variance) and adds a bias; its
centring adds one term: ``dx = r * (g - mean(g) - xhat * mean(g * xhat))``.

>>> import tinyllm, numpy as np
>>> x = tinyllm.Tensor([[3.0, 4.0]])
>>> rms_norm(x, tinyllm.Tensor(np.ones(2, np.float32)), eps=0.0).numpy().round(4)
array([[0.8485, 1.1314]], dtype=float32)
"""

from ..autograd.function import Function


def _sum_rows(a):
    """Sum over every axis but the last: (..., C) -> (C,)."""
    return a.reshape(-1, a.shape[-1]).sum(axis=0)


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
        r = 1.0 / ctx.xp.sqrt((x * x).mean(axis=-1, keepdims=True) + eps)  # (..., 1)
        xhat = x * r
        ctx.save_for_backward(xhat, r, weight)
        return xhat * weight

    @staticmethod
    def backward(ctx, grad):
        xhat, r, weight = ctx.saved
        grad_x = grad_w = None
        if ctx.needs_grad[0]:
            g = grad * weight
            grad_x = r * (g - xhat * (g * xhat).mean(axis=-1, keepdims=True))
        if ctx.needs_grad[1]:
            grad_w = _sum_rows(grad * xhat)
        return grad_x, grad_w


class LayerNorm(Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps=1e-5):
        _check_weight("layer_norm", x, weight)
        centred = x - x.mean(axis=-1, keepdims=True)
        r = 1.0 / ctx.xp.sqrt((centred * centred).mean(axis=-1, keepdims=True) + eps)
        xhat = centred * r
        ctx.save_for_backward(xhat, r, weight)
        out = xhat * weight
        return out if bias is None else out + bias

    @staticmethod
    def backward(ctx, grad):
        xhat, r, weight = ctx.saved
        grad_x = grad_w = grad_b = None
        if ctx.needs_grad[0]:
            g = grad * weight
            g_mean = g.mean(axis=-1, keepdims=True)
            grad_x = r * (g - g_mean - xhat * (g * xhat).mean(axis=-1, keepdims=True))
        if ctx.needs_grad[1]:
            grad_w = _sum_rows(grad * xhat)
        if ctx.needs_grad[2]:
            grad_b = _sum_rows(grad)
        return grad_x, grad_w, grad_b


def rms_norm(x, weight, eps=1e-5):
    return RMSNorm.apply(x, weight, eps=eps)


def layer_norm(x, weight, bias=None, eps=1e-5):
    return LayerNorm.apply(x, weight, bias, eps=eps)
