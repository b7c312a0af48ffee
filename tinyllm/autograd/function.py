"""``Function``: one differentiable op, its forward and backward side by side.

Every op in ``tinyllm.functional`` is a small subclass, in the shape of PyTorch's
``torch.autograd.Function``::

    class Mul(Function):
        @staticmethod
        def forward(ctx, a, b):          # arrays in, array out
            ctx.save_for_backward(a, b)
            return a * b

        @staticmethod
        def backward(ctx, grad):         # d(loss)/d(out) in, one gradient per input out
            a, b = ctx.saved
            return grad * b, grad * a

``Mul.apply(x, y)`` unwraps Tensors to arrays, runs ``forward``, and - when gradients are
being recorded - wraps the result in a Tensor that remembers ``(Mul, ctx, inputs)``: one
node of the tape that ``Tensor.backward()`` walks in reverse.

Rules every op follows, so that the same code runs on NumPy, CuPy and JAX (under jit):
arrays are never mutated in place, and the array namespace comes from the inputs
(``ctx.xp``), never from a global.
"""

import contextlib
import contextvars

from ..backend import backend_of

_grad_enabled = contextvars.ContextVar("tinyllm_grad_enabled", default=True)


def is_grad_enabled():
    """True unless inside a ``no_grad()`` block."""
    return _grad_enabled.get()


@contextlib.contextmanager
def no_grad():
    """Run ops without recording them on the tape (for evaluation and parameter updates).

    >>> import tinyllm
    >>> w = tinyllm.Tensor([1.0, 2.0], requires_grad=True)
    >>> with no_grad():
    ...     y = (w * 3.0).sum()
    >>> y.requires_grad
    False
    """
    with _recording(False):
        yield


@contextlib.contextmanager
def enable_grad():
    """Record ops again, even inside a ``no_grad()`` block: activation checkpointing's
    recomputation builds its piece of the tape during a backward pass, wherever that runs."""
    with _recording(True):
        yield


@contextlib.contextmanager
def _recording(enabled):
    token = _grad_enabled.set(enabled)
    try:
        yield
    finally:
        _grad_enabled.reset(token)


class Context:
    """What an op's forward leaves for its backward.

    ``xp`` is the array namespace of the inputs, ``backend`` their backend, and
    ``needs_grad[i]`` says whether input ``i`` wants a gradient, so a backward can skip
    work nobody asked for.
    """

    __slots__ = ("backend", "xp", "needs_grad", "saved", "__dict__")

    def __init__(self, backend, needs_grad):
        self.backend = backend
        self.xp = backend.xp
        self.needs_grad = needs_grad
        self.saved = ()

    def save_for_backward(self, *arrays):
        self.saved = arrays


class Function:
    """Base class of differentiable ops; see the module docstring."""

    @staticmethod
    def forward(ctx, *inputs, **params):
        raise NotImplementedError

    @staticmethod
    def backward(ctx, grad):
        raise NotImplementedError

    @classmethod
    def apply(cls, *inputs, **params):
        """Run the op on Tensors, arrays or Python numbers; return a Tensor.

        ``inputs`` are the values the op is differentiated with respect to; ``params``
        (axis, eps, ...) are constants passed to ``forward`` by keyword.
        """
        from .tensor import Tensor

        arrays = []
        needs_grad = []
        backend = None
        for x in inputs:
            data = x.data if isinstance(x, Tensor) else x
            owner = None if data is None else backend_of(data)  # None: an absent input
            if owner is not None:
                if backend is None:
                    backend = owner
                elif owner is not backend:
                    raise TypeError(
                        f"{cls.__name__}: cannot mix arrays of the '{backend.name}' and "
                        f"'{owner.name}' backends in one op; move one with "
                        f"Tensor.to('{backend.name}') or tinyllm.to_numpy(...)"
                    )
            arrays.append(data)
            needs_grad.append(isinstance(x, Tensor) and x.requires_grad)
        if backend is None:
            raise TypeError(f"{cls.__name__}: needs at least one array or Tensor input")

        record = any(needs_grad) and is_grad_enabled()
        ctx = Context(backend, tuple(needs_grad))
        out = cls.forward(ctx, *arrays, **params)
        if not record:
            return Tensor._wrap(out, requires_grad=False)
        result = Tensor._wrap(out, requires_grad=True)
        result._node = (cls, ctx, inputs)
        return result
