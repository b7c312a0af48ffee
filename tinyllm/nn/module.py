"""``Module``, ``Parameter`` and ``Buffer``: the containers a model is built from.

A Module is a plain Python object whose attributes may be Parameters, Buffers, other
Modules, or lists and dicts of them. That is all the bookkeeping needs:
``named_parameters()`` walks the attributes in the order they were assigned and names each
parameter by its path (a list entry by its index, a dict entry by its key).

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

A ``Buffer`` is state that is saved and moved with the model but never trained: the packed
weights and scales of a quantized layer, a cache, running statistics. It is in
``state_dict()`` and ``named_buffers()``, never in ``named_parameters()`` (so no optimizer
sees it):

>>> class Scaled(Module):
...     def __init__(self):
...         self.heads = {"left": Affine(), "right": Affine()}
...         self.scale = Buffer(np.full(2, 0.5, np.float32))
>>> model = Scaled()
>>> [name for name, _ in model.named_parameters()]
['heads.left.scale', 'heads.left.shift', 'heads.right.scale', 'heads.right.shift']
>>> sorted(model.state_dict()) == sorted([*dict(model.named_parameters()), "scale"])
True

Parameters are initialised on the host by a seeded NumPy generator and then placed on the
active backend, so one seed gives the same model on NumPy, CuPy and JAX.

``bind(params)`` swaps other arrays in for the parameters for the length of a ``with``
block. That is how a compiled (``jax.jit``) training step runs a module as a pure function
of its parameters: see ``tinyllm.autograd.value_and_grad``. ``compiled(model, forward)``
keeps such a program for a model (generation's forwards), and ``measuring(fn)`` runs a
function of a model to measure it (held-out log-probabilities, perplexities): in eval mode,
without gradients, compiled under JAX.
"""

import contextlib
import functools
import weakref

import numpy as np

from ..autograd import Tensor, no_grad, to_numpy
from ..backend.precision import compute_dtype


class Parameter(Tensor):
    """A Tensor owned by a Module and updated by an optimizer; requires gradients."""

    __slots__ = ()

    def __init__(self, data, requires_grad=True):
        super().__init__(data, requires_grad=requires_grad)


class Buffer(Tensor):
    """A Tensor owned by a Module that is saved and moved with it but never trained."""

    __slots__ = ()

    def __init__(self, data):
        super().__init__(data, requires_grad=False)


def _slots(value, name):
    """(container, key, path) for a Module's attribute: the attribute itself, or each entry
    of a list, tuple or dict held in it (``container[key]`` or ``getattr`` reads it)."""
    if isinstance(value, (list, tuple)):
        return [(value, i, f"{name}.{i}") for i in range(len(value))]
    if isinstance(value, dict):
        for key in value:
            if not isinstance(key, str) or not key or "." in key:
                raise TypeError(
                    f"{name}: a dict of modules or tensors needs non-empty string keys "
                    f"without '.', got {key!r}"
                )
        return [(value, key, f"{name}.{key}") for key in value]
    return [(None, name, name)]


def _items(module):
    """(container, key, path, item) for every attribute slot of ``module``."""
    for attr, value in vars(module).items():
        for container, key, path in _slots(value, attr):
            item = value if container is None else container[key]
            yield (module if container is None else container), key, path, item


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
        for _, _, name, item in _items(self):
            if isinstance(item, Module):
                yield from item.named_modules(f"{path}.{name}" if path else name)

    def named_parameters(self):
        """(path, parameter) in attribute order; a tied weight once, under its first path."""
        return self._named(Parameter)

    def named_buffers(self):
        """(path, buffer) in attribute order, as ``named_parameters`` for Buffers."""
        return self._named(Buffer)

    def _named(self, kind):
        seen = set()
        for name, t in self._walk(kind, ""):
            if id(t) not in seen:
                seen.add(id(t))
                yield name, t

    def _walk(self, kind, path):
        for _, _, full, item in _slots_under(self, path):
            if isinstance(item, kind):
                yield full, item

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def set_submodule(self, path, module):
        """Put ``module`` at ``path`` (a name from ``named_modules``) in place of the module
        there: how a layer is swapped for another after the model is built (a quantized
        layer for a Linear).

        >>> class Old(Module): pass
        >>> class New(Module): pass
        >>> class Pair(Module):
        ...     def __init__(self):
        ...         self.items = [Old(), Old()]
        >>> pair = Pair()
        >>> pair.set_submodule("items.1", New())
        >>> [type(m).__name__ for m in pair.items]
        ['Old', 'New']
        """
        for container, key, full, item in _slots_under(self):
            if isinstance(item, Module) and full == path:
                if isinstance(container, tuple):
                    raise TypeError(f"{type(self).__name__}: {path} sits in a tuple")
                _assign(container, key, module)
                return
        raise KeyError(f"{type(self).__name__}.set_submodule: no module at {path!r}")

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

    def to(self, backend):
        """Move every parameter and buffer to ``backend`` (a name or a Backend); returns self.

        Gradients are dropped: they belong to the arrays that were moved away.
        """
        from ..backend import get_backend

        target = get_backend(backend) if isinstance(backend, (str, type(None))) else backend
        for _, t in [*self.named_parameters(), *self.named_buffers()]:
            t.data = target.asarray(to_numpy(t.data))
            t.grad = None
        return self

    # --- saving and loading --------------------------------------------------------------------
    def describe(self):
        """What, besides its class, rebuilds this module: JSON-ready settings, saved in
        checkpoints (``Transformer`` gives its config). A plain module says nothing more."""
        return {}

    def state_dict(self):
        """``{path: NumPy array}`` of every parameter and buffer, in the dtype stored.

        The arrays are copies: a snapshot that later training steps do not change.
        """
        tensors = [*self.named_parameters(), *self.named_buffers()]
        return {name: np.array(to_numpy(t)) for name, t in tensors}

    def load_state_dict(self, state, strict=True):
        """Copy arrays into the parameters and buffers by path, on each one's backend and
        dtype. With ``strict``, a missing or unexpected name is an error; a wrong shape
        always is.
        """
        params = dict([*self.named_parameters(), *self.named_buffers()])
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
            # A copy, not tied to ``state``, in C order as the model makes its own: a transposed
            # view (a file's (in, out) weight, say) would send products down BLAS's transposed
            # kernels, whose sums may round differently from the same model built here.
            p.data = p.backend.asarray(value.astype(p.dtype, order="C"))
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
        with self.swapped(
            lambda _, item: replace.get(id(item)) if isinstance(item, Parameter) else None
        ):
            yield self

    @contextlib.contextmanager
    def swapped(self, new_for):
        """This module with each attribute slot (its own and its modules') whose
        ``new_for(path, item)`` is not None holding that value instead, all restored
        afterwards, even on an exception: how ``bind`` puts tensors in place of parameters,
        and activation checkpointing (``recompute``) the weights a forward pass saw."""
        swaps = []  # (container, key, original, new): setattr for modules, item assignment else
        for container, key, path, item in _slots_under(self):
            new = new_for(path, item)
            if new is not None:
                if isinstance(container, tuple):
                    raise TypeError(f"{type(self).__name__}: {path} sits in a tuple")
                swaps.append((container, key, item, new))
        for container, key, _, new in swaps:
            _assign(container, key, new)
        try:
            yield self
        finally:
            for container, key, item, _ in reversed(swaps):
                _assign(container, key, item)

    def __repr__(self):
        lines = [f"{type(self).__name__}({self.num_parameters():,} parameters)"]
        lines += [f"  {path}: {type(m).__name__}" for path, m in self.named_modules() if path]
        return "\n".join(lines)


def _slots_under(module, path=""):
    """(container, key, path, item) for every attribute slot of ``module`` and of each module
    inside it, depth first; ``path`` is prefixed to the paths."""
    for container, key, name, item in _items(module):
        full = f"{path}.{name}" if path else name
        yield container, key, full, item
        if isinstance(item, Module):
            yield from _slots_under(item, full)


def _assign(container, key, value):
    if isinstance(container, Module):
        setattr(container, key, value)
    else:
        container[key] = value


@contextlib.contextmanager
def inference(model):
    """Eval mode (no dropout) and no gradient recording around a block; both restored:
    how generation, evaluation and a frozen reference model run.

    A model already in eval mode is left alone: switching walks every submodule, a cost
    that a decoding loop would pay at every token."""
    was_training = model.training
    if was_training:
        model.eval()
    try:
        with no_grad():
            yield
    finally:
        if was_training:
            model.train(True)


_PROGRAMS = weakref.WeakKeyDictionary()  # model -> {(forward, dtype): its compiled program}


def compiled(model, forward, donate_argnums=()):
    """``forward(model, *args)`` compiled for ``model`` as ``program(params, *args)``, where
    ``params`` ({name: array}) stand in for the model's parameters (``bind``): once per
    compute dtype, kept for later calls (a new input shape still compiles anew, as ``jit``
    does). On NumPy and CuPy it runs eagerly. ``donate_argnums`` counts ``params`` as 0:
    the buffers of those arguments may be reused for the outputs."""
    programs = _PROGRAMS.setdefault(model, {})
    key = (forward, compute_dtype())  # the dtype is read as jit traces: a key
    if key not in programs:
        backend = model.parameters()[0].backend
        bound = weakref.proxy(model)  # the compiled program must not keep the model alive

        def program(params, *args):
            with bound.bind({name: Tensor(array) for name, array in params.items()}):
                return forward(bound, *args)

        programs[key] = backend.jit(program, donate_argnums=donate_argnums)
    return programs[key]


def measuring(fn):
    """``fn(model, *args) -> Tensor`` as ``measure(model, *args) -> array``, to measure
    rather than train: in eval mode, without gradients, and under JAX as one program
    compiled per shape of ``args`` and kept for the model's later calls, not op by op.

    >>> import numpy as np
    >>> class Doubler(Module):
    ...     def __init__(self):
    ...         self.w = Parameter(np.full(2, 2.0, np.float32))
    ...     def forward(self, x):
    ...         return x * self.w
    >>> doubled = measuring(lambda model, x: model(x).sum())
    >>> float(doubled(Doubler(), np.ones(2, np.float32)))
    4.0
    """

    def array_of(model, *args):
        return fn(model, *args).data

    @functools.wraps(fn)
    def measure(model, *args):
        params = {name: p.data for name, p in model.named_parameters()}
        with inference(model):
            return compiled(model, array_of)(params, *args)

    return measure
