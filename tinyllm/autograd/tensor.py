"""``Tensor``: an array of the active backend that remembers how it was made.

A Tensor wraps one array (``.data``: NumPy, CuPy or JAX). Ops on Tensors that require
gradients record a node ``(op, ctx, inputs)``; ``loss.backward()`` walks those nodes from
the loss back to the leaves in reverse topological order, calling each op's ``backward``
and summing the gradients that meet at a tensor used more than once.

>>> import tinyllm
>>> w = tinyllm.Tensor([1.0, 2.0, 3.0], requires_grad=True)
>>> loss = (w * w).sum()           # d(loss)/dw = 2w
>>> loss.backward()
>>> w.grad
array([2., 4., 6.], dtype=float32)

Gradients are kept only on leaves (tensors you created with ``requires_grad=True``), as
arrays of the same backend and dtype. The graph is freed as ``backward`` walks it, so
call ``backward`` once per forward pass.
"""

import functools

import numpy as np

from ..backend import backend_of, get_backend
from ..backend import to_numpy as array_to_numpy
from .function import Function

_FREED = ("freed",)  # marks a node whose saved arrays were released by backward()


@functools.cache  # looked up once: an import statement on every operator costs a microsecond
def _ops():
    """The op library. Tensor's operators forward to it; imported late to avoid a cycle."""
    from .. import functional

    return functional


def _place(data, dtype):
    """An array on the right backend: NumPy input and Python values go to the active one."""
    if isinstance(data, Tensor):
        data = data.data
    if not isinstance(data, (np.ndarray, np.generic, list, tuple, bool, int, float)):
        backend_of(data)  # a CuPy or JAX array stays where it is (TypeError for others)
        return data if dtype is None else data.astype(dtype)
    host = np.asarray(data)
    from_python = not isinstance(data, (np.ndarray, np.generic))
    if dtype is None and from_python and host.dtype == np.float64:
        dtype = np.float32  # Python floats become float32, never a silent float64
    return get_backend().asarray(host, dtype=dtype)


class Tensor:
    """An array plus the record of how it was computed. See the module docstring."""

    __slots__ = ("data", "grad", "requires_grad", "_node", "__weakref__")
    __array_ufunc__ = None  # numpy_array * tensor defers to Tensor.__rmul__

    def __init__(self, data, requires_grad=False, dtype=None):
        self.data = _place(data, dtype)
        self.grad = None
        self.requires_grad = bool(requires_grad)
        self._node = None
        if self.requires_grad and not np.issubdtype(self.data.dtype, np.floating):
            raise TypeError(
                f"only floating-point tensors can require gradients, got dtype {self.data.dtype}"
            )

    @classmethod
    def _wrap(cls, array, requires_grad):
        """A Tensor around an array an op produced (no conversion, no checks)."""
        t = cls.__new__(cls)
        t.data = array
        t.grad = None
        t.requires_grad = requires_grad
        t._node = None
        return t

    # --- what it is ---------------------------------------------------------------------
    shape = property(lambda self: tuple(self.data.shape))
    dtype = property(lambda self: self.data.dtype)
    ndim = property(lambda self: self.data.ndim)
    size = property(lambda self: int(np.prod(self.data.shape, dtype=np.int64)))
    backend = property(lambda self: backend_of(self.data))

    def __len__(self):
        return self.data.shape[0]

    def __repr__(self):
        grad = ", requires_grad=True" if self.requires_grad else ""
        body = np.array2string(self.numpy(), separator=", ", threshold=20, precision=4)
        return f"Tensor({body}, dtype={self.dtype}, backend={self.backend.name}{grad})"

    def numpy(self):
        """The values as a NumPy array (a copy when the tensor lives on a GPU)."""
        return self.backend.to_numpy(self.data)

    def item(self):
        """The single value of a one-element tensor, as a Python number."""
        if self.size != 1:
            raise ValueError(f"item() needs a tensor with one element, got shape {self.shape}")
        return self.numpy().reshape(()).item()

    def tolist(self):
        return self.numpy().tolist()

    def detach(self):
        """The same values, cut off from the graph (no gradient flows through)."""
        return Tensor._wrap(self.data, requires_grad=False)

    def to(self, backend):
        """A copy on another backend ('numpy', 'cupy', 'jax'); not differentiable."""
        target = get_backend(backend)
        return Tensor._wrap(target.asarray(self.numpy()), requires_grad=False)

    # --- backpropagation ----------------------------------------------------------------
    def backward(self, grad=None):
        """Fill ``.grad`` of every leaf this tensor depends on with d(self)/d(leaf).

        ``grad`` is d(loss)/d(self); it may be left out when ``self`` has one element.
        """
        if not self.requires_grad:
            raise RuntimeError(
                "backward(): this tensor does not require gradients - none of its inputs "
                "were created with requires_grad=True (or it was computed under no_grad())"
            )
        xp = self.backend.xp
        if grad is None:
            if self.size != 1:
                raise RuntimeError(
                    f"backward() on a non-scalar tensor of shape {self.shape} needs a "
                    "gradient of that shape: call backward(grad) or reduce it first, "
                    "for example loss.sum().backward()"
                )
            grad = xp.ones_like(self.data)
        else:
            if isinstance(grad, Tensor) and grad.backend is not self.backend:
                raise TypeError(
                    f"backward(): gradient is on the '{grad.backend.name}' backend but the "
                    f"tensor is on '{self.backend.name}'"
                )
            grad = grad.data if isinstance(grad, Tensor) else xp.asarray(grad)
            if tuple(grad.shape) != self.shape:
                raise ValueError(
                    f"backward(): gradient has shape {tuple(grad.shape)}, "
                    f"expected the tensor's shape {self.shape}"
                )

        grads = {id(self): grad}
        for t in reversed(_topological_order(self)):
            g = grads.pop(id(t), None)
            if g is None:
                continue
            if t._node is None:  # a leaf: keep its gradient
                g = g.astype(t.data.dtype, copy=False)
                t.grad = g if t.grad is None else t.grad + g
                continue
            if t._node is _FREED:
                raise RuntimeError(
                    "backward() reached a part of the graph that an earlier backward() "
                    "already freed; run the forward pass again before each backward()"
                )
            op, ctx, inputs = t._node
            input_grads = op.backward(ctx, g)
            if not isinstance(input_grads, tuple):
                input_grads = (input_grads,)
            if len(input_grads) != len(inputs):
                raise RuntimeError(
                    f"{op.__name__}.backward returned {len(input_grads)} gradients "
                    f"for {len(inputs)} inputs"
                )
            t._node = _FREED
            for x, gx in zip(inputs, input_grads):
                if gx is None or not (isinstance(x, Tensor) and x.requires_grad):
                    continue
                key = id(x)
                grads[key] = gx if key not in grads else grads[key] + gx

    # --- operators (NumPy's names), defined in tinyllm.functional -----------------------
    def __add__(self, other):
        return _ops().add(self, other)

    def __radd__(self, other):
        return _ops().add(other, self)

    def __sub__(self, other):
        return _ops().sub(self, other)

    def __rsub__(self, other):
        return _ops().sub(other, self)

    def __mul__(self, other):
        return _ops().mul(self, other)

    def __rmul__(self, other):
        return _ops().mul(other, self)

    def __truediv__(self, other):
        return _ops().div(self, other)

    def __rtruediv__(self, other):
        return _ops().div(other, self)

    def __neg__(self):
        return _ops().neg(self)

    def __pow__(self, exponent):
        return _ops().pow(self, exponent)

    def __rpow__(self, base):
        return _ops().pow(base, self)

    def __matmul__(self, other):
        return _ops().matmul(self, other)

    def __rmatmul__(self, other):
        return _ops().matmul(other, self)

    def __getitem__(self, index):
        return _ops().getitem(self, index)

    def sum(self, axis=None, keepdims=False):
        return _ops().sum(self, axis=axis, keepdims=keepdims)

    def mean(self, axis=None, keepdims=False):
        return _ops().mean(self, axis=axis, keepdims=keepdims)

    def max(self, axis=None, keepdims=False):
        return _ops().max(self, axis=axis, keepdims=keepdims)

    def exp(self):
        return _ops().exp(self)

    def log(self):
        return _ops().log(self)

    def sqrt(self):
        return _ops().sqrt(self)

    def tanh(self):
        return _ops().tanh(self)

    def relu(self):
        return _ops().relu(self)

    def reshape(self, *shape):
        shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        return _ops().reshape(self, shape)

    def transpose(self, *axes):
        axes = axes[0] if len(axes) == 1 and isinstance(axes[0], (tuple, list)) else axes
        return _ops().transpose(self, axes or None)

    def permute(self, *axes):
        return self.transpose(*axes)

    @property
    def T(self):
        return _ops().transpose(self, None)

    def astype(self, dtype):
        return _ops().astype(self, dtype)


def to_numpy(x):
    """A NumPy array with the values of ``x``: a Tensor, any backend's array, or numbers."""
    return x.numpy() if isinstance(x, Tensor) else array_to_numpy(x)


def _topological_order(root):
    """Tensors that ``root`` depends on (gradient-requiring only), each after its inputs."""
    order, visited = [], set()
    stack = [(root, False)]
    while stack:
        t, inputs_done = stack.pop()
        if inputs_done:
            order.append(t)
            continue
        if id(t) in visited:
            continue
        visited.add(id(t))
        stack.append((t, True))
        node = t._node
        if node is not None and node is not _FREED:
            for x in node[2]:
                if isinstance(x, Tensor) and x.requires_grad and id(x) not in visited:
                    stack.append((x, False))
    return order


__all__ = ["Function", "Tensor", "to_numpy"]
