"""Fused softmax, log-softmax and cross-entropy, each with its hand-derived backward.

Built from primitives (max, sub, exp, sum, div) softmax would record five nodes and keep
several arrays of the input's size for backward. Fused, it keeps one - its output ``y`` -
and the backward is a single line of calculus:

    y = softmax(x)            dx = y * (dy - sum(dy * y))             (per row)
    y = log_softmax(x)        dx = dy - softmax(x) * sum(dy)
    loss = -log_softmax(x)[t] dx = softmax(x) - onehot(t)             (per row, / rows)

Every op subtracts the row maximum first, so ``exp`` never overflows, and takes that
maximum and the row sums from the backend: ``backend.max_last(x)`` is
``x.max(axis=-1, keepdims=True)`` and ``backend.sum_last(e)`` is
``e.sum(axis=-1, keepdims=True)``, computed faster on NumPy (``tinyllm/backend/``). The
elementwise steps of softmax and cross-entropy between the sums (``exp(x - max)``,
``e / sum``, ``y * (dy - .)``) are chains of ``backend/fused.py``: one kernel each on CuPy.

>>> import numpy as np, tinyllm
>>> logits = tinyllm.Tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
>>> round(cross_entropy(logits, np.array([0, -100])).item(), 4)   # second row ignored
0.2395
"""

from ..autograd.function import Function
from ..backend import fused


def _move(xp, a, source, destination):
    """``xp.moveaxis``, skipped when the axis is already in place (it costs microseconds)."""
    if source % a.ndim == destination % a.ndim:
        return a
    return xp.moveaxis(a, source, destination)


class Softmax(Function):
    @staticmethod
    def forward(ctx, x, axis=-1):
        xp, backend = ctx.xp, ctx.backend
        x = _move(xp, x, axis, -1)  # (..., n): the softmax axis last (a view)
        e = backend.fused(fused.softmax_exp)(x, backend.max_last(x))  # (..., n)
        y = backend.fused(fused.normalise)(e, backend.sum_last(e))
        ctx.save_for_backward(y)
        ctx.axis = axis
        return _move(xp, y, -1, axis)

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved
        xp, backend = ctx.xp, ctx.backend
        grad = _move(xp, grad, ctx.axis, -1)  # (..., n)
        row_dot = backend.dot_last(grad, y)  # (..., 1)
        grad_x = backend.fused(fused.softmax_backward)(y, grad, row_dot)
        return _move(xp, grad_x, -1, ctx.axis)


class LogSoftmax(Function):
    @staticmethod
    def forward(ctx, x, axis=-1):
        xp, backend = ctx.xp, ctx.backend
        x = _move(xp, x, axis, -1)  # (..., n)
        shifted = x - backend.max_last(x)  # (..., n)
        y = shifted - xp.log(backend.sum_last(xp.exp(shifted)))  # (..., n) - (..., 1)
        ctx.save_for_backward(y)
        ctx.axis = axis
        return _move(xp, y, -1, axis)

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved
        xp, backend = ctx.xp, ctx.backend
        grad = _move(xp, grad, ctx.axis, -1)  # (..., n)
        grad_x = grad - xp.exp(y) * backend.sum_last(grad)  # (..., n) - (..., n) * (..., 1)
        return _move(xp, grad_x, -1, ctx.axis)


class CrossEntropy(Function):
    """Mean (or sum, or per-row) of -log softmax(logits)[target] over rows not ignored.

    ``logits`` (..., V) and integer ``targets`` (...); rows whose target equals
    ``ignore_index`` contribute neither loss nor gradient (padding, prompt tokens in SFT).
    """

    @staticmethod
    def forward(ctx, logits, targets, ignore_index=-100, reduction="mean"):
        xp = ctx.xp
        vocab = logits.shape[-1]
        if tuple(targets.shape) != tuple(logits.shape[:-1]):
            raise ValueError(
                f"cross_entropy: targets of shape {tuple(targets.shape)} do not match logits "
                f"of shape {tuple(logits.shape)}; expected targets of shape "
                f"{tuple(logits.shape[:-1])}"
            )
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(
                f"cross_entropy: reduction must be 'mean', 'sum' or 'none', got {reduction!r}"
            )
        valid = targets != ignore_index
        if ctx.backend.reads_values(targets):
            bad = valid & ((targets < 0) | (targets >= vocab))
            if bool(bad.any()):
                raise IndexError(
                    f"cross_entropy: target {int(targets[bad].ravel()[0])} is outside "
                    f"[0, {vocab}) and is not ignore_index ({ignore_index})"
                )
        rows = logits.reshape(-1, vocab)  # (N, V)
        safe_targets = xp.where(valid, targets, 0).reshape(-1)  # (N,)
        # Where each row's target sits in the flattened (N * V,) logits: one flat index picks
        # the targets here and adds into them in backward, the fastest spelling of both.
        target_at = xp.arange(rows.shape[0]) * vocab + safe_targets  # (N,)
        row_max = ctx.backend.max_last(rows)  # (N, 1)
        picked = rows.reshape(-1)[target_at][:, None] - row_max  # (N, 1): shifted targets
        e = ctx.backend.fused(fused.softmax_exp)(rows, row_max)  # (N, V): exp(rows - max)
        total = ctx.backend.sum_last(e)  # (N, 1)
        valid = valid.reshape(-1, 1)
        losses = (xp.log(total) - picked) * valid  # (N, 1)

        ctx.save_for_backward(e, total, target_at, valid)
        ctx.reduction, ctx.shape = reduction, logits.shape
        if reduction == "none":
            return losses.reshape(targets.shape)
        loss = losses.sum()
        if reduction == "mean":
            ctx.count = xp.maximum(valid.sum(), 1).astype(logits.dtype)
            loss = loss / ctx.count
        return loss

    @staticmethod
    def backward(ctx, grad):
        e, total, target_at, valid = ctx.saved
        if ctx.reduction == "none":
            coef = grad.reshape(-1, 1) * valid  # (N, 1): each row's own upstream gradient
        elif ctx.reduction == "sum":
            coef = grad * valid
        else:
            coef = grad * valid / ctx.count
        coef = coef.astype(e.dtype)
        grad_rows = ctx.backend.fused(fused.cross_entropy_backward)(e, coef, total)  # (N, V)
        grad_rows = grad_rows.reshape(-1)  # softmax * coef, (N * V,)
        grad_rows = ctx.backend.scatter_add(grad_rows, target_at, -coef[:, 0])
        return grad_rows.reshape(ctx.shape), None


def softmax(x, axis=-1):
    return Softmax.apply(x, axis=axis)


def log_softmax(x, axis=-1):
    return LogSoftmax.apply(x, axis=axis)


def cross_entropy(logits, targets, ignore_index=-100, reduction="mean"):
    """Cross-entropy of ``logits`` (..., V) against integer ``targets`` (...)."""
    return CrossEntropy.apply(logits, targets, ignore_index=ignore_index, reduction=reduction)
