"""Choosing the array backend: NumPy (the reference and default), CuPy or JAX.

Three ways to choose, from most to least local:

>>> import tinyllm
>>> with tinyllm.use_backend("numpy"):        # for one block
...     tinyllm.get_backend().name
'numpy'
>>> tinyllm.set_backend("numpy").name          # from here on, in this thread
'numpy'

and the environment variable ``TINYLLM_BACKEND``, read when nothing else has chosen.
The choice is held in a ``contextvars.ContextVar``, so a ``use_backend`` block restores
what was there before, even on an exception.

An array always knows its own backend (``backend_of``): ops take the namespace from their
inputs, not from the current choice, which only decides where *new* arrays are placed.
"""

import contextlib
import contextvars
import functools
import os

import numpy as np

from .allocator import keep_freed_memory
from .base import Backend, BackendUnavailable
from .numpy_backend import NumpyBackend

NAMES = ("numpy", "cupy", "jax")
ENV_VAR = "TINYLLM_BACKEND"

_current = contextvars.ContextVar("tinyllm_backend", default=None)


@functools.cache  # each backend is created once, on first use; failures are not cached
def _create(name):
    if name == "numpy":
        keep_freed_memory()  # NumPy allocates every op's result on the host
        return NumpyBackend()
    if name == "cupy":
        from .cupy_backend import CupyBackend

        return CupyBackend()
    if name == "jax":
        from .jax_backend import JaxBackend

        # On the CPU, XLA's buffers are host memory too. (Asking JAX for its platform here
        # would start it before jax.distributed.initialize can run.)
        keep_freed_memory()
        return JaxBackend()
    raise ValueError(f"unknown backend {name!r}; expected one of {', '.join(NAMES)}")


def get_backend(name=None):
    """The backend called ``name``, or the current one when ``name`` is None.

    Raises ``BackendUnavailable`` (saying why) when that backend cannot run here.
    """
    if isinstance(name, Backend):
        return name
    if name is None:
        current = _current.get()
        if current is not None:
            return current
        name = os.environ.get(ENV_VAR, "").strip().lower() or "numpy"
        if name not in NAMES:
            raise ValueError(
                f"{ENV_VAR}={name!r} names no backend; expected one of {', '.join(NAMES)}"
            )
    return _create(name)


def set_backend(name):
    """Make ``name`` the current backend (in this thread and context); returns it."""
    backend = get_backend(name)
    _current.set(backend)
    return backend


@contextlib.contextmanager
def use_backend(name):
    """Use backend ``name`` inside a ``with`` block, then restore the previous choice."""
    token = _current.set(get_backend(name))
    try:
        yield _current.get()
    finally:
        _current.reset(token)


def available_backends():
    """``{name: (works, detail)}`` for every backend: what it runs on, or why it can't."""
    report = {}
    for name in NAMES:
        try:
            report[name] = (True, get_backend(name).describe())
        except BackendUnavailable as err:
            report[name] = (False, str(err))
    return report


def backend_of(x):
    """The backend an array belongs to, or None for Python scalars.

    Decided from the array's type alone, without importing CuPy or JAX.
    """
    if isinstance(x, (np.ndarray, np.generic)):
        return _create("numpy")  # every op asks, for every input: the shortest path
    module = type(x).__module__
    if module.startswith(("jax", "jaxlib")):
        return get_backend("jax")
    if module.startswith("cupy"):
        return get_backend("cupy")
    if isinstance(x, (bool, int, float)):
        return None
    raise TypeError(
        f"expected a NumPy, CuPy or JAX array or a Python number, got {type(x).__name__}"
    )


def to_numpy(x):
    """A NumPy array with the values of ``x``: any backend's array, or Python numbers.

    >>> to_numpy(3.0)
    array(3.)
    """
    if isinstance(x, (list, tuple, bool, int, float)):
        return np.asarray(x)
    return backend_of(x).to_numpy(x)


def jit(fn, **kwargs):
    """Compile ``fn`` with the current backend: ``jax.jit`` under JAX, unchanged elsewhere."""
    return get_backend().jit(fn, **kwargs)


__all__ = [
    "Backend",
    "BackendUnavailable",
    "NAMES",
    "NumpyBackend",
    "available_backends",
    "backend_of",
    "get_backend",
    "jit",
    "set_backend",
    "to_numpy",
    "use_backend",
]
