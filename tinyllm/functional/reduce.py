"""Reductions: sum, mean and max over some axes.

Backward of a reduction spreads the incoming gradient back over the axes it removed: every
summed element gets the whole gradient, every averaged one gets 1/n of it, and for max only
the element(s) that won get it (shared equally on a tie).

>>> import tinyllm
>>> x = tinyllm.Tensor([[1.0, 5.0], [7.0, 3.0]], requires_grad=True)
>>> x.max(axis=1).sum().backward()
>>> x.grad
array([[0., 1.],
       [1., 0.]], dtype=float32)
"""

from ..autograd.function import Function


def normalize_axes(axis, ndim):
    """``axis`` (None, an int or a tuple, negatives allowed) as a sorted tuple of axes.

    >>> normalize_axes(-1, 3), normalize_axes(None, 2), normalize_axes((2, 0), 3)
    ((2,), (0, 1), (0, 2))
    """
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    for a in axes:
        if not -ndim <= a < ndim:
            raise ValueError(f"axis {a} is out of range for an array with {ndim} dimensions")
    return tuple(sorted(a % ndim for a in axes))


def _spread(xp, grad, axes, keepdims, shape):
    """``grad`` (reduced over ``axes``) broadcast back to the input ``shape``."""
    if not keepdims:
        grad = xp.expand_dims(grad, axes)
    return xp.broadcast_to(grad, shape)


class Sum(Function):
    @staticmethod
    def forward(ctx, a, axis=None, keepdims=False):
        ctx.axes = normalize_axes(axis, a.ndim)
        ctx.keepdims, ctx.shape = keepdims, a.shape
        return a.sum(axis=ctx.axes, keepdims=keepdims)

    @staticmethod
    def backward(ctx, grad):
        return _spread(ctx.xp, grad, ctx.axes, ctx.keepdims, ctx.shape)


class Mean(Function):
    @staticmethod
    def forward(ctx, a, axis=None, keepdims=False):
        ctx.axes = normalize_axes(axis, a.ndim)
        ctx.keepdims, ctx.shape = keepdims, a.shape
        ctx.count = 1
        for ax in ctx.axes:
            ctx.count *= a.shape[ax]
        return a.mean(axis=ctx.axes, keepdims=keepdims)

    @staticmethod
    def backward(ctx, grad):
        return _spread(ctx.xp, grad * (1.0 / ctx.count), ctx.axes, ctx.keepdims, ctx.shape)


class Max(Function):
    @staticmethod
    def forward(ctx, a, axis=None, keepdims=False):
        axes = normalize_axes(axis, a.ndim)
        out = a.max(axis=axes, keepdims=True)
        if ctx.needs_grad[0]:
            winners = (a == out).astype(a.dtype)  # (shape of a): 1 where the maximum sits
            ctx.save_for_backward(winners / winners.sum(axis=axes, keepdims=True))
        ctx.axes, ctx.keepdims = axes, keepdims
        return out if keepdims else out.squeeze(axis=axes)

    @staticmethod
    def backward(ctx, grad):
        (share,) = ctx.saved
        if not ctx.keepdims:
            grad = ctx.xp.expand_dims(grad, ctx.axes)
        return grad * share


def sum(a, axis=None, keepdims=False):  # noqa: A001 - NumPy's name
    return Sum.apply(a, axis=axis, keepdims=keepdims)


def mean(a, axis=None, keepdims=False):
    return Mean.apply(a, axis=axis, keepdims=keepdims)


def max(a, axis=None, keepdims=False):  # noqa: A001 - NumPy's name
    return Max.apply(a, axis=axis, keepdims=keepdims)
