"""Matrix multiplication, batched and broadcast, where almost all of a transformer's time goes.

For ``out = a @ b`` the chain rule gives ``grad_a = grad @ b.T`` and ``grad_b = a.T @ grad``
(transposing the last two axes). Batch axes broadcast like any elementwise op, so their
gradients are summed back with ``unbroadcast``. The common case - activations (B, T, C)
times a weight (C, D) - is handled as one big (B*T, C) x (C, D) product instead of B small
ones summed afterwards.

Mixed precision (``tinyllm.precision("bfloat16")``, see ``backend/precision.py``): the
forward casts its float32 inputs to the compute dtype and keeps those copies for backward
(half the memory); every product, forward and backward, sums and returns float32, so the
output and both gradients are float32. The backward follows the dtype the forward chose,
whatever the policy when it runs.

>>> import tinyllm
>>> a = tinyllm.Tensor([[1.0, 2.0]], requires_grad=True)      # (1, 2)
>>> b = tinyllm.Tensor([[3.0], [4.0]], requires_grad=True)    # (2, 1)
>>> (a @ b).sum().backward()
>>> a.grad, b.grad.ravel()
(array([[3., 4.]], dtype=float32), array([1., 2.], dtype=float32))
"""

import math
import operator

from ..autograd.function import Function
from ..backend.precision import lower, matmul_f32, product_dtype
from .elementwise import unbroadcast


def _check(a, b):
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError(
            f"matmul: both operands need at least one dimension, got shapes "
            f"{tuple(a.shape)} and {tuple(b.shape)}"
        )
    inner_a = a.shape[-1]
    inner_b = b.shape[-2] if b.ndim > 1 else b.shape[0]
    if inner_a != inner_b:
        raise ValueError(
            f"matmul: shapes {tuple(a.shape)} @ {tuple(b.shape)} do not line up - the last "
            f"axis of the left ({inner_a}) must equal the "
            f"{'second-to-last' if b.ndim > 1 else 'only'} axis of the right ({inner_b})"
        )


def _rows_times(a, b, product=operator.matmul):
    """``product(a, b)`` (``a @ b``) for a 2-D ``b``, with all of ``a``'s leading axes folded
    into one.

    (B, T, C) x (C, D) as one (B*T, C) x (C, D) product: NumPy would otherwise run B
    separate small products, noticeably slower.
    """
    if a.ndim <= 2 or b.ndim != 2:
        return product(a, b)
    rows = a.reshape(math.prod(a.shape[:-1]), a.shape[-1])  # (B*T, C)
    return product(rows, b).reshape(*a.shape[:-1], b.shape[-1])


class Matmul(Function):
    @staticmethod
    def forward(ctx, a, b):
        _check(a, b)
        dtype = product_dtype(ctx.backend)  # None: float32, the policy is off
        a, b = lower(a, dtype), lower(b, dtype)  # bfloat16 / float16 copies under the policy
        mixed = dtype is not None and a.dtype == dtype and b.dtype == dtype
        ctx.product = matmul_f32 if mixed else operator.matmul
        ctx.save_for_backward(a, b)
        return _rows_times(a, b, ctx.product)

    @staticmethod
    def backward(ctx, grad):
        a, b = ctx.saved
        xp, product = ctx.xp, ctx.product
        if product is matmul_f32:
            grad = grad.astype(b.dtype)  # the incoming float32 gradient, in the compute dtype
        # Treat vectors as matrices: a (K,) is (1, K), b (K,) is (K, 1).
        a2 = a[None, :] if a.ndim == 1 else a
        b2 = b[:, None] if b.ndim == 1 else b
        g = grad
        if a.ndim == 1:
            g = xp.expand_dims(g, -2)
        if b.ndim == 1:
            g = xp.expand_dims(g, -1)
        grad_a = grad_b = None
        if ctx.needs_grad[0]:
            grad_a = unbroadcast(_rows_times(g, xp.swapaxes(b2, -1, -2), product), a2.shape)
            grad_a = grad_a.reshape(a.shape)
        if ctx.needs_grad[1]:
            if b2.ndim == 2 and a2.ndim > 2:  # weight gradient: one (C, N) x (N, D) product
                rows_a = a2.reshape(-1, a2.shape[-1])
                grad_b = product(rows_a.T, g.reshape(-1, g.shape[-1])).reshape(b.shape)
            else:
                grad_b = unbroadcast(product(xp.swapaxes(a2, -1, -2), g), b2.shape)
                grad_b = grad_b.reshape(b.shape)
        return grad_a, grad_b


def matmul(a, b):
    return Matmul.apply(a, b)
