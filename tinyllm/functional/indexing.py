"""Ops that pick values: ``x[index]``, embedding lookup, and ``where``.

Picking is easy forwards; backwards, each picked position must receive the gradient of
every place it went - and an index may pick the same row twice (the token "the" appears
many times in a batch). So backward starts from zeros and *adds* gradients in at the
indices: ``scatter_add``, which the backend spells in place for NumPy/CuPy and
functionally for JAX.

>>> import tinyllm
>>> table = tinyllm.Tensor([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]], requires_grad=True)
>>> embedding(table, tinyllm.Tensor([2, 0, 2])).sum().backward()
>>> table.grad                     # row 2 was picked twice, so it gets twice the gradient
array([[1., 1.],
       [0., 0.],
       [2., 2.]], dtype=float32)
"""

from ..autograd.function import Function
from ..autograd.tensor import Tensor
from .elementwise import unbroadcast


def _unwrap_index(index):
    """An index with any Tensors in it replaced by their arrays."""
    if isinstance(index, tuple):
        return tuple(i.data if isinstance(i, Tensor) else i for i in index)
    return index.data if isinstance(index, Tensor) else index


class GetItem(Function):
    @staticmethod
    def forward(ctx, a, index):
        ctx.index, ctx.shape = index, a.shape
        return a[index]

    @staticmethod
    def backward(ctx, grad):
        zeros = ctx.xp.zeros(ctx.shape, dtype=grad.dtype)
        return ctx.backend.scatter_add(zeros, ctx.index, grad)


class Embedding(Function):
    """``weight[ids]``: one row of the (vocab, dim) table per token id."""

    @staticmethod
    def forward(ctx, weight, ids):
        vocab = weight.shape[0]
        if ctx.backend.reads_values(ids) and ids.size:
            low, high = int(ids.min()), int(ids.max())
            if low < 0 or high >= vocab:
                bad = low if low < 0 else high
                raise IndexError(
                    f"embedding: token id {bad} is outside the vocabulary [0, {vocab})"
                )
        ctx.save_for_backward(ids)
        ctx.shape = weight.shape
        return ctx.xp.take(weight, ids, axis=0)  # (*ids.shape, dim)

    @staticmethod
    def backward(ctx, grad):
        (ids,) = ctx.saved
        vocab, dim = ctx.shape
        zeros = ctx.xp.zeros((vocab, dim), dtype=grad.dtype)
        return ctx.backend.scatter_add(zeros, ids.reshape(-1), grad.reshape(-1, dim)), None


class Where(Function):
    """``cond ? a : b`` elementwise; ``cond`` is a boolean array (no gradient)."""

    @staticmethod
    def forward(ctx, cond, a, b):
        ctx.save_for_backward(cond)
        ctx.shapes = (getattr(a, "shape", ()), getattr(b, "shape", ()))
        return ctx.xp.where(cond, a, b)

    @staticmethod
    def backward(ctx, grad):
        (cond,) = ctx.saved
        xp, (a_shape, b_shape) = ctx.xp, ctx.shapes
        zero = xp.zeros((), dtype=grad.dtype)
        grad_a = unbroadcast(xp.where(cond, grad, zero), a_shape) if ctx.needs_grad[1] else None
        grad_b = unbroadcast(xp.where(cond, zero, grad), b_shape) if ctx.needs_grad[2] else None
        return None, grad_a, grad_b


def getitem(a, index):
    return GetItem.apply(a, index=_unwrap_index(index))


def embedding(weight, ids):
    """Rows of ``weight`` (vocab, dim) for integer ``ids`` of any shape: (*ids.shape, dim)."""
    return Embedding.apply(weight, ids)


def where(cond, a, b):
    return Where.apply(cond, a, b)
