"""Elementwise ops: arithmetic with broadcasting, exp/log/sqrt/tanh, activations, dropout.

The one subtle part is broadcasting. ``x + b`` with ``x`` of shape (B, T, C) and ``b`` of
shape (C,) uses ``b`` B*T times, so its gradient is the sum of the B*T incoming gradients:
``unbroadcast`` sums the gradient back down to the input's shape.

>>> import numpy as np
>>> unbroadcast(np.ones((2, 3, 4)), (3, 1)).tolist()
[[8.0], [8.0], [8.0]]
"""

import math

import numpy as np

from ..autograd.function import Function
from ..backend import backend_of, fused


def unbroadcast(grad, shape):
    """Sum ``grad`` over the axes that broadcasting stretched, giving it ``shape``."""
    if tuple(grad.shape) == tuple(shape):
        return grad
    extra = grad.ndim - len(shape)
    if extra > 0 and tuple(grad.shape[extra:]) == tuple(shape):  # a bias: only axes added
        rows = grad.reshape(math.prod(grad.shape[:extra]), math.prod(shape))  # (N, size)
        return backend_of(grad).sum_first(rows).reshape(shape)  # rows.sum(axis=0)
    stretched = [i + extra for i, n in enumerate(shape) if n == 1 and grad.shape[i + extra] != 1]
    axes = tuple(range(extra)) + tuple(stretched)
    return grad.sum(axis=axes, keepdims=True).reshape(shape)


def _shape(x):
    return tuple(getattr(x, "shape", ()))


def _broadcast(op, fn, a, b):
    """``fn(a, b)``, with a clear error naming both shapes when they don't broadcast."""
    try:
        return fn(a, b)
    except (ValueError, TypeError):
        try:
            np.broadcast_shapes(_shape(a), _shape(b))
        except ValueError:
            raise ValueError(
                f"{op}: shapes {_shape(a)} and {_shape(b)} do not broadcast; each axis, "
                "counted from the right, must match or be 1"
            ) from None
        raise


# --- arithmetic ---------------------------------------------------------------------------
class Add(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.shapes = (_shape(a), _shape(b))
        return _broadcast("add", lambda x, y: x + y, a, b)

    @staticmethod
    def backward(ctx, grad):
        a_shape, b_shape = ctx.shapes
        grad_a = unbroadcast(grad, a_shape) if ctx.needs_grad[0] else None
        grad_b = unbroadcast(grad, b_shape) if ctx.needs_grad[1] else None
        return grad_a, grad_b


class Sub(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.shapes = (_shape(a), _shape(b))
        return _broadcast("sub", lambda x, y: x - y, a, b)

    @staticmethod
    def backward(ctx, grad):
        a_shape, b_shape = ctx.shapes
        grad_b = unbroadcast(-grad, b_shape) if ctx.needs_grad[1] else None
        return unbroadcast(grad, a_shape), grad_b


class Mul(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return _broadcast("mul", lambda x, y: x * y, a, b)

    @staticmethod
    def backward(ctx, grad):
        a, b = ctx.saved
        grad_a = unbroadcast(grad * b, _shape(a)) if ctx.needs_grad[0] else None
        grad_b = unbroadcast(grad * a, _shape(b)) if ctx.needs_grad[1] else None
        return grad_a, grad_b


class Div(Function):
    @staticmethod
    def forward(ctx, a, b):
        out = _broadcast("div", lambda x, y: x / y, a, b)
        ctx.save_for_backward(a, b, out)
        return out

    @staticmethod
    def backward(ctx, grad):
        a, b, out = ctx.saved
        grad_a = unbroadcast(grad / b, _shape(a)) if ctx.needs_grad[0] else None
        grad_b = unbroadcast(-grad * out / b, _shape(b)) if ctx.needs_grad[1] else None
        return grad_a, grad_b


class Neg(Function):
    @staticmethod
    def forward(ctx, a):
        return -a

    @staticmethod
    def backward(ctx, grad):
        return -grad


class Pow(Function):
    """``a ** b``; ``b`` is usually a Python number (then only ``a`` gets a gradient)."""

    @staticmethod
    def forward(ctx, a, b):
        out = _broadcast("pow", lambda x, y: x**y, a, b)
        ctx.save_for_backward(a, b, out)
        return out

    @staticmethod
    def backward(ctx, grad):
        a, b, out = ctx.saved
        grad_a = grad_b = None
        if ctx.needs_grad[0]:
            grad_a = unbroadcast(grad * b * a ** (b - 1), _shape(a))
        if ctx.needs_grad[1]:
            grad_b = unbroadcast(grad * out * ctx.xp.log(a), _shape(b))
        return grad_a, grad_b


class Cast(Function):
    """``x.astype(dtype)``; the gradient is cast back to the input's dtype."""

    @staticmethod
    def forward(ctx, a, dtype):
        ctx.in_dtype = a.dtype
        return a.astype(dtype)

    @staticmethod
    def backward(ctx, grad):
        return grad.astype(ctx.in_dtype)


# --- elementwise functions ----------------------------------------------------------------
class Exp(Function):
    @staticmethod
    def forward(ctx, a):
        out = ctx.xp.exp(a)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad):
        (out,) = ctx.saved
        return grad * out


class Log(Function):
    @staticmethod
    def forward(ctx, a):
        ctx.save_for_backward(a)
        return ctx.xp.log(a)

    @staticmethod
    def backward(ctx, grad):
        (a,) = ctx.saved
        return grad / a


class Sqrt(Function):
    @staticmethod
    def forward(ctx, a):
        out = ctx.xp.sqrt(a)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad):
        (out,) = ctx.saved
        return grad * 0.5 / out


class Tanh(Function):
    @staticmethod
    def forward(ctx, a):
        out = ctx.xp.tanh(a)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad):
        (out,) = ctx.saved
        return grad * (1 - out * out)


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
def add(a, b):
    return Add.apply(a, b)


def sub(a, b):
    return Sub.apply(a, b)


def mul(a, b):
    return Mul.apply(a, b)


def div(a, b):
    return Div.apply(a, b)


def neg(a):
    return Neg.apply(a)


def pow(a, b):  # noqa: A001 - NumPy's name
    return Pow.apply(a, b)


def astype(a, dtype):
    return Cast.apply(a, dtype=dtype)


def exp(a):
    return Exp.apply(a)


def log(a):
    return Log.apply(a)


def sqrt(a):
    return Sqrt.apply(a)


def tanh(a):
    return Tanh.apply(a)


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

    >>> import tinyllm
    >>> log_sigmoid(tinyllm.Tensor(np.array([0.0, -1000.0, 1000.0]))).numpy().round(4)
    array([-6.931e-01, -1.000e+03, -0.000e+00])
    """
    return LogSigmoid.apply(a)
