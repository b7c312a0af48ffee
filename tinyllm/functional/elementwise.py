"""Elementwise ops: arithmetic with broadcasting, and exp/log/sqrt/tanh.

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
from ..backend import backend_of


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
