"""Activations and dropout: ReLU, GELU, SiLU, SwiGLU's product, log-sigmoid and dropout.

Each is a ``Function``, its forward and backward side by side. The ones a transformer runs on
every token (GELU, SiLU and SwiGLU's product) are chains of ``backend/fused.py``: one kernel
each way on CuPy. GPT-2's GELU, in its tanh form:

>>> import tinyllm
>>> gelu(tinyllm.Tensor([-1.0, 0.0, 2.0])).numpy().round(4)
array([-0.1588,  0.    ,  1.9546], dtype=float32)
"""

import math

from ..autograd.function import Function
from ..backend import fused


# --- activations --------------------------------------------------------------------------
class Relu(Function):
    @staticmethod
    def forward(ctx, a):
        ctx.save_for_backward(a > 0)
        return ctx.xp.maximum(a, 0)

    @staticmethod
    def backward(ctx, grad):
        (positive,) = ctx.saved
        return grad * positive


class Gelu(Function):
    """GELU(x) = x * Phi(x). ``approximate="tanh"`` is GPT-2's formula; "none" is exact (erf).

    The tanh form is GELU(a) = a s with s = (1 + tanh(u)) / 2 and u = c (a + k a^3). It keeps
    ``s`` for backward: since 1 - tanh(u)^2 = 4 s (1 - s), the slope is
    s + 2 s (1 - s) a u', with u' = c (1 + 3 k a^2). Both directions are chains of
    ``backend/fused.py``: one kernel each on CuPy.
    """

    @staticmethod
    def forward(ctx, a, approximate="tanh"):
        if approximate == "tanh":
            out, s = ctx.backend.fused(fused.gelu_tanh)(a)
            ctx.save_for_backward(a, s)
            ctx.approximate = True
            return out
        if approximate == "none":
            cdf = 0.5 * (1 + ctx.backend.erf(a * (1 / math.sqrt(2.0))))
            ctx.save_for_backward(a, cdf)
            ctx.approximate = False
            return a * cdf
        raise ValueError(f"gelu: approximate must be 'tanh' or 'none', got {approximate!r}")

    @staticmethod
    def backward(ctx, grad):
        a, s_or_cdf = ctx.saved
        if ctx.approximate:
            return ctx.backend.fused(fused.gelu_tanh_backward)(grad, a, s_or_cdf)
        pdf = ctx.xp.exp(-0.5 * a * a) * (1 / math.sqrt(2 * math.pi))
        return grad * (s_or_cdf + a * pdf)


class Silu(Function):
    """SiLU(x) = x * sigmoid(x), the gate of SwiGLU; sigmoid via tanh to avoid overflow."""

    @staticmethod
    def forward(ctx, a):
        out, sig = ctx.backend.fused(fused.silu)(a)
        ctx.save_for_backward(a, sig)
        return out

    @staticmethod
    def backward(ctx, grad):
        a, sig = ctx.saved
        return ctx.backend.fused(fused.silu_backward)(grad, a, sig)


class SwiGLUProduct(Function):
    """``silu(gate) * up``, SwiGLU's product, as one op: one kernel each way on CuPy, and
    no (..., d_ff) ``silu(gate)`` kept for backward."""

    @staticmethod
    def forward(ctx, gate, up):
        if gate.shape != up.shape:
            raise ValueError(
                f"swiglu: gate of shape {tuple(gate.shape)} and up of shape "
                f"{tuple(up.shape)} must have the same shape"
            )
        out, sig = ctx.backend.fused(fused.swiglu)(gate, up)
        ctx.save_for_backward(gate, up, sig)
        return out

    @staticmethod
    def backward(ctx, grad):
        gate, up, sig = ctx.saved
        return ctx.backend.fused(fused.swiglu_backward)(grad, gate, up, sig)


class LogSigmoid(Function):
    """log sigmoid(x) = -log(1 + e^-x), written -(max(-x, 0) + log(1 + e^-|x|)) so that no
    exp overflows; its derivative is sigmoid(-x). The losses of reward models and DPO."""

    @staticmethod
    def forward(ctx, a):
        xp = ctx.xp
        e = xp.exp(-xp.abs(a))  # in (0, 1]: never overflows
        ctx.save_for_backward(a, e)
        return -(xp.maximum(-a, 0) + xp.log1p(e))

    @staticmethod
    def backward(ctx, grad):
        a, e = ctx.saved
        # sigmoid(-a), from e = exp(-|a|): e / (1 + e) for a >= 0 keeps its tiny values exact
        return grad * ctx.xp.where(a >= 0, e, 1.0) / (1 + e)


class Dropout(Function):
    """Zero each element with probability ``p``, scale the rest by 1/(1-p).

    The mask comes from ``seed`` alone, drawn on the host, so it is the same on every backend.
    """

    @staticmethod
    def forward(ctx, a, p, seed):
        keep = ctx.backend.uniform(seed, a.shape, dtype=a.dtype) >= p
        scale = (keep * (1.0 / (1.0 - p))).astype(a.dtype)
        ctx.save_for_backward(scale)
        return a * scale

    @staticmethod
    def backward(ctx, grad):
        (scale,) = ctx.saved
        return grad * scale


# --- the public functions -----------------------------------------------------------------
def relu(a):
    return Relu.apply(a)


def gelu(a, approximate="tanh"):
    return Gelu.apply(a, approximate=approximate)


def silu(a):
    return Silu.apply(a)


def swiglu(gate, up):
    """``silu(gate) * up`` (same shapes), SwiGLU's product, fused.

    >>> import tinyllm
    >>> swiglu(tinyllm.Tensor([0.0, 2.0]), tinyllm.Tensor([3.0, 1.0])).numpy().round(4)
    array([0.    , 1.7616], dtype=float32)
    """
    return SwiGLUProduct.apply(gate, up)


def dropout(a, p, *, seed, training=True):
    """Dropout with an explicit ``seed``; the identity when ``p == 0`` or not ``training``."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout: p must be in [0, 1), got {p}")
    if p == 0.0 or not training:
        return a
    return Dropout.apply(a, p=p, seed=seed)


def log_sigmoid(a):
    """log(sigmoid(a)), finite for any a: -log(2) at 0, about a for very negative a.

    >>> import numpy as np, tinyllm
    >>> log_sigmoid(tinyllm.Tensor(np.array([0.0, -1000.0, 1000.0]))).numpy().round(4)
    array([-6.931e-01, -1.000e+03, -0.000e+00])
    """
    return LogSigmoid.apply(a)
