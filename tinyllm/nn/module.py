"""``Module`` and ``Parameter``: the containers a model is built from.

A Module is a plain Python object whose attributes may be Parameters, other Modules, or
lists of Modules. That is all the bookkeeping needs: ``named_parameters()`` walks the
attributes in the order they were assigned and names each parameter by its path.

>>> import numpy as np
>>> class Affine(Module):
...     def __init__(self):
...         self.scale = Parameter(np.ones(2, np.float32))
...         self.shift = Parameter(np.zeros(2, np.float32))
...     def forward(self, x):
...         return x * self.scale + self.shift
>>> class Net(Module):
...     def __init__(self):
...         self.layers = [Affine(), Affine()]
>>> [name for name, _ in Net().named_parameters()]
['layers.0.scale', 'layers.0.shift', 'layers.1.scale', 'layers.1.shift']

Parameters are initialised on the host by a seeded NumPy generator and then placed on the
active backend, so one seed gives the same model on NumPy, CuPy and JAX.

``bind(params)`` swaps other arrays in for the parameters for the length of a ``with``
block. That is how a compiled (``jax.jit``) training step runs a module as a pure function
of its parameters: see ``tinyllm.autograd.value_and_grad``.
"""

import contextlib

import numpy as np

from ..autograd import Tensor, to_numpy


class Parameter(Tensor):
    """A Tensor owned by a Module and updated by an optimizer; requires gradients."""

    __slots__ = ()

    def __init__(self, data, requires_grad=True):
        super().__init__(data, requires_grad=requires_grad)


def _children(value, name):
    """(name, item) pairs for a Module's attribute: itself, or each entry of a list."""
    if isinstance(value, (list, tuple)):
        return [(f"{name}.{i}", item) for i, item in enumerate(value)]
    return [(name, value)]


class Module:
    """Base class of layers and models; subclasses define ``forward``."""

    training = True

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} does not define forward()")

    # --- walking the tree -------------------------------------------------------------------
    def named_modules(self, path=""):
        """(path, module) for this module ("" for itself) and every module inside it."""
        yield path, self
        for attr, value in vars(self).items():
            for name, item in _children(value, attr):
                if isinstance(item, Module):
                    yield from item.named_modules(f"{path}.{name}" if path else name)

    def named_parameters(self):
        """(path, parameter) in attribute order; a tied weight once, under its first path."""
        seen = set()
        for name, p in self._walk_parameters(""):
            if id(p) not in seen:
                seen.add(id(p))
                yield name, p

    def _walk_parameters(self, path):
        for attr, value in vars(self).items():
            for name, item in _children(value, attr):
                full = f"{path}.{name}" if path else name
                if isinstance(item, Parameter):
                    yield full, item
                elif isinstance(item, Module):
                    yield from item._walk_parameters(full)

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def num_parameters(self):
        return sum(p.size for p in self.parameters())

    # --- modes --------------------------------------------------------------------------------
    def train(self, mode=True):
        """Training mode (dropout on) for this module and all inside it; returns self."""
        for _, module in self.named_modules():
            module.training = mode
        return self

    def eval(self):
        return self.train(False)

    def freeze(self, frozen=True):
        """Stop (or restart) gradients for every parameter, e.g. the base model under LoRA."""
        for p in self.parameters():
            p.requires_grad = not frozen
            p.grad = None
        return self

    def zero_grad(self):
        for p in self.parameters():
            p.grad = None

    # --- saving and loading --------------------------------------------------------------------
    def state_dict(self):
        """``{path: NumPy array}`` of every parameter, in float32 as stored.

        The arrays are copies: a snapshot that later training steps do not change.
        """
        return {name: np.array(to_numpy(p)) for name, p in self.named_parameters()}

    def load_state_dict(self, state, strict=True):
        """Copy arrays into the parameters by path, on each parameter's backend and dtype.

        With ``strict``, a missing or unexpected name is an error; a wrong shape always is.
        """
        params = dict(self.named_parameters())
        missing = sorted(set(params) - set(state))
        unexpected = sorted(set(state) - set(params))
        if strict and (missing or unexpected):
            raise KeyError(
                f"{type(self).__name__}.load_state_dict: missing {missing or 'nothing'}, "
                f"unexpected {unexpected or 'nothing'}"
            )
        for name, p in params.items():
            if name not in state:
                continue
            value = np.asarray(to_numpy(state[name]))
            if value.shape != p.shape:
                raise ValueError(
                    f"{type(self).__name__}.load_state_dict: {name} has shape {value.shape}, "
                    f"expected {p.shape}"
                )
            p.data = p.backend.asarray(value.astype(p.dtype))  # a copy: not tied to `state`
        return self

    @contextlib.contextmanager
    def bind(self, tensors):
        """Use ``tensors`` ({path: Tensor}) in place of those parameters inside the block.

        Every reference to a bound parameter is swapped, tied weights included, and all are
        restored afterwards, even on an exception.
        """
        params = dict(self.named_parameters())
        unknown = sorted(set(tensors) - set(params))
        if unknown:
            raise KeyError(f"{type(self).__name__}.bind: no parameters named {unknown}")
        replace = {id(params[name]): t for name, t in tensors.items()}
        undo = []  # (container, key, original): setattr for modules, item assignment for lists
        for _, module in self.named_modules():
            for attr, value in vars(module).items():
                slots = enumerate(value) if isinstance(value, list) else [(attr, value)]
                container = value if isinstance(value, list) else module
                for key, item in slots:
                    if isinstance(item, Parameter) and id(item) in replace:
                        undo.append((container, key, item))
        for container, key, item in undo:
            _assign(container, key, replace[id(item)])
        try:
            yield self
        finally:
            for container, key, item in reversed(undo):
                _assign(container, key, item)

    def __repr__(self):
        lines = [f"{type(self).__name__}({self.num_parameters():,} parameters)"]
        lines += [f"  {path}: {type(m).__name__}" for path, m in self.named_modules() if path]
        return "\n".join(lines)


def _assign(container, key, value):
    if isinstance(container, list):
        container[key] = value
    else:
        setattr(container, key, value)
