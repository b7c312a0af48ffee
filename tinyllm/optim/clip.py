"""Gradient clipping by global norm, as ``torch.nn.utils.clip_grad_norm_``.

All gradients are seen as one long vector; when its L2 norm is above ``max_norm``, every
gradient is scaled by the same factor so that the norm becomes ``max_norm``:

    norm = √(Σ_p Σ_i g_pi²)
    g ← g · min(1, max_norm / (norm + 1e-6))

Scaling all gradients alike keeps the direction of the step and only bounds its length,
so one bad batch (a loss spike) cannot throw the weights far away.

>>> import numpy as np
>>> from tinyllm.nn import Parameter
>>> a, b = Parameter(np.zeros(2, np.float32)), Parameter(np.zeros(1, np.float32))
>>> a.grad, b.grad = np.array([3.0, 0.0], np.float32), np.array([4.0], np.float32)
>>> float(clip_grad_norm([a, b], max_norm=1.0))     # the norm before clipping
5.0
>>> a.grad, b.grad
(array([0.6, 0. ], dtype=float32), array([0.8], dtype=float32))

``clip_grad_norm`` works on parameters' ``.grad``; ``clip_grads`` is the pure form on a dict
of gradient arrays, for a compiled (``jax.jit``) training step.
"""

import numbers

from ..autograd import Tensor
from ..backend import backend_of
from ..nn import Module


def global_norm(grads):
    """√(Σ g²) over every array in ``grads`` (an iterable of arrays), as a 0-d array."""
    grads = list(grads)
    xp = backend_of(grads[0]).xp
    squares = [xp.vdot(g.reshape(-1), g.reshape(-1)) for g in grads]  # Σ g², one per array
    return xp.sqrt(xp.asarray(sum(squares[1:], squares[0])))


def clip_grads(grads, max_norm):
    """``(clipped, norm)`` for ``grads`` ({name: array}); pure, so it traces under ``jit``.

    ``norm`` is the global norm before clipping, a 0-d array of the gradients' backend.
    """
    _check_max_norm(max_norm)
    if not grads:
        raise ValueError("clip_grads: got no gradients")
    norm = global_norm(grads.values())
    scale = backend_of(norm).xp.minimum(max_norm / (norm + 1e-6), 1.0)
    return {name: g * scale.astype(g.dtype) for name, g in grads.items()}, norm


def clip_grad_norm(params, max_norm):
    """Scale the ``.grad`` of ``params`` so their global norm is at most ``max_norm``.

    ``params``: a Module, Parameters (or Tensors), or (name, Parameter) pairs; ones
    without a gradient are skipped. Returns the norm before clipping, as a 0-d array
    (``float(norm)`` for a number). Gradients are replaced, not written in place: one
    gradient array may be shared by several tensors.
    """
    _check_max_norm(max_norm)
    if isinstance(params, Module):
        params = params.parameters()
    tensors = [p[1] if isinstance(p, tuple) else p for p in params]
    if not tensors or not all(isinstance(t, Tensor) for t in tensors):
        kinds = sorted({type(t).__name__ for t in tensors}) or ["nothing"]
        raise TypeError(f"clip_grad_norm: expected Parameters or a Module, got {', '.join(kinds)}")
    with_grad = [t for t in tensors if t.grad is not None]
    if not with_grad:
        return tensors[0].backend.xp.zeros((), dtype=tensors[0].dtype)
    norm = global_norm(t.grad for t in with_grad)
    scale = max_norm / (norm + 1e-6)
    if tensors[0].backend.is_traced(norm) or scale < 1:  # a scale of 1 changes nothing
        scale = tensors[0].backend.xp.minimum(scale, 1.0)
        for t in with_grad:
            t.grad = t.grad * scale.astype(t.grad.dtype)
    return norm


def _check_max_norm(max_norm):
    if isinstance(max_norm, bool) or not isinstance(max_norm, numbers.Real) or not max_norm > 0:
        raise ValueError(f"max_norm must be a number > 0, got {max_norm!r}")
