"""Ops that move values around without changing them: reshape, transpose, concat, stack.

Their backward undoes the move: a reshape's gradient is reshaped back, a transpose's is
transposed by the inverse permutation, a concat's is split at the same places.

>>> import tinyllm
>>> a = tinyllm.Tensor([[1.0, 2.0]], requires_grad=True)
>>> b = tinyllm.Tensor([[3.0, 4.0], [5.0, 6.0]], requires_grad=True)
>>> (concat([a, b], axis=0) * 2.0).sum().backward()
>>> a.grad, b.grad.shape
(array([[2., 2.]], dtype=float32), (2, 2))
"""

from ..autograd.function import Function


class Reshape(Function):
    @staticmethod
    def forward(ctx, a, shape):
        ctx.in_shape = a.shape
        try:
            return a.reshape(shape)
        except (ValueError, TypeError):
            raise ValueError(
                f"reshape: cannot reshape an array of shape {tuple(a.shape)} "
                f"({a.size} elements) into shape {tuple(shape)}"
            ) from None

    @staticmethod
    def backward(ctx, grad):
        return grad.reshape(ctx.in_shape)


class Transpose(Function):
    """Permute axes; ``axes=None`` reverses them (``x.T``)."""

    @staticmethod
    def forward(ctx, a, axes=None):
        axes = tuple(reversed(range(a.ndim))) if axes is None else tuple(ax % a.ndim for ax in axes)
        if sorted(axes) != list(range(a.ndim)):
            raise ValueError(
                f"transpose: axes {axes} are not a permutation of the {a.ndim} axes of "
                f"an array of shape {tuple(a.shape)}"
            )
        ctx.inverse = tuple(sorted(range(a.ndim), key=axes.__getitem__))
        return ctx.xp.transpose(a, axes)

    @staticmethod
    def backward(ctx, grad):
        return ctx.xp.transpose(grad, ctx.inverse)


class Concat(Function):
    @staticmethod
    def forward(ctx, *arrays, axis=0):
        ctx.axis = axis
        ctx.sizes = [a.shape[axis] for a in arrays]
        return ctx.xp.concatenate(arrays, axis=axis)

    @staticmethod
    def backward(ctx, grad):
        cuts, total = [], 0
        for n in ctx.sizes[:-1]:
            total += n
            cuts.append(total)
        return tuple(ctx.xp.split(grad, cuts, axis=ctx.axis))


class Stack(Function):
    @staticmethod
    def forward(ctx, *arrays, axis=0):
        ctx.axis = axis
        return ctx.xp.stack(arrays, axis=axis)

    @staticmethod
    def backward(ctx, grad):
        xp = ctx.xp
        return tuple(xp.moveaxis(grad, ctx.axis, 0))


def reshape(a, shape):
    return Reshape.apply(a, shape=tuple(shape))


def transpose(a, axes=None):
    return Transpose.apply(a, axes=axes)


def permute(a, axes):
    return Transpose.apply(a, axes=axes)


def concat(tensors, axis=0):
    return Concat.apply(*tensors, axis=axis)


def stack(tensors, axis=0):
    return Stack.apply(*tensors, axis=axis)
