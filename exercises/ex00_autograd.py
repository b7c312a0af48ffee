"""Exercises for lesson 00: autograd. Replace each ``raise NotImplementedError`` with code.

Every op is a ``Function``: ``forward(ctx, ...)`` computes the output from arrays and saves
what backward needs on ``ctx``; ``backward(ctx, grad)`` receives d(loss)/d(output) and
returns d(loss)/d(input), one per input, in order. ``ctx.xp`` is the array namespace
(NumPy here) - write ``ctx.xp.exp``, not ``np.exp``, and never modify an array in place.

Grade with ``tinyllm grade exercises -k ex00`` (lesson: lessons/00-autograd.md).
"""

from tinyllm.autograd import Function
from tinyllm.functional.reduce import normalize_axes  # axis=None/int/tuple -> sorted tuple


# --- Exercise 0.1 ---------------------------------------------------------------------------
class Mul(Function):
    """``a * b`` for two arrays of the SAME shape (broadcasting comes in 0.2)."""

    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a * b

    @staticmethod
    def backward(ctx, grad):
        """Return ``(grad_a, grad_b)``: d(loss)/da and d(loss)/db."""
        raise NotImplementedError("Exercise 0.1: implement Mul.backward")


# --- Exercise 0.2 ---------------------------------------------------------------------------
def unbroadcast(grad, shape):
    """Sum ``grad`` down to ``shape``, undoing NumPy broadcasting.

    Broadcasting aligns shapes from the right, adds leading axes, and stretches axes of
    size 1. An input used many times receives the sum of the gradients of all its uses:
    sum over the added leading axes, and over stretched axes keeping them (keepdims).

    Example: grad of shape (2, 3, 4) and shape (3, 1) -> sum axis 0, then axis 2 (kept).
    """
    raise NotImplementedError("Exercise 0.2: implement unbroadcast")


# --- Exercise 0.3 ---------------------------------------------------------------------------
class Tanh(Function):
    """``tanh(a)``. Hint: d tanh(x)/dx = 1 - tanh(x)^2, and forward already has tanh(x)."""

    @staticmethod
    def forward(ctx, a):
        out = ctx.xp.tanh(a)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad):
        raise NotImplementedError("Exercise 0.3: implement Tanh.backward")


# --- Exercise 0.4 ---------------------------------------------------------------------------
class Sum(Function):
    """``a.sum(axis, keepdims)``: every summed element receives the whole gradient."""

    @staticmethod
    def forward(ctx, a, axis=None, keepdims=False):
        ctx.axes = normalize_axes(axis, a.ndim)
        ctx.keepdims, ctx.shape = keepdims, a.shape
        return a.sum(axis=ctx.axes, keepdims=keepdims)

    @staticmethod
    def backward(ctx, grad):
        """Return an array of shape ``ctx.shape``. Without keepdims, first put the summed
        axes back as size-1 axes (``ctx.xp.expand_dims``), then broadcast."""
        raise NotImplementedError("Exercise 0.4: implement Sum.backward")


# --- Exercise 0.5 ---------------------------------------------------------------------------
class Matmul(Function):
    """``a @ b`` for 2-D ``a`` (M, K) and ``b`` (K, N)."""

    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a @ b

    @staticmethod
    def backward(ctx, grad):
        """``grad`` has shape (M, N). Return ``(grad_a, grad_b)`` of shapes (M, K), (K, N)."""
        raise NotImplementedError("Exercise 0.5: implement Matmul.backward")


# --- Exercise 0.6 ---------------------------------------------------------------------------
class Softmax(Function):
    """Fused softmax along ``axis``: y = exp(x - max) / sum(exp(x - max)).

    Forward: subtract the maximum along ``axis`` first so exp never overflows, and save
    only the output y. Backward: with g = grad, dx = y * (g - sum(g * y, axis, keepdims)).
    """

    @staticmethod
    def forward(ctx, x, axis=-1):
        raise NotImplementedError("Exercise 0.6: implement Softmax.forward")

    @staticmethod
    def backward(ctx, grad):
        raise NotImplementedError("Exercise 0.6: implement Softmax.backward")
