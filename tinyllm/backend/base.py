"""What every array backend offers: the array namespace and the few spellings that differ.

tinyllm writes each op once against an array namespace ``xp`` (``numpy``, ``cupy`` or
``jax.numpy``): ``xp.exp``, ``xp.matmul``, ``xp.where`` are spelled the same in all three.
A handful of things are not, and they live here, one method each:

- moving arrays in and out (``asarray``, ``to_numpy``);
- adding into selected positions (``scatter_add``), which NumPy and CuPy do in place and
  JAX does by returning a new array;
- whether arrays can be written in place (``mutable_arrays``: not JAX's), which decides how
  an optimizer steps;
- ``erf``, which NumPy itself lacks;
- four reductions the fused ops share (``sum_last``, ``max_last``, ``dot_last``,
  ``sum_first``), defined here as the plain ``xp`` expression they stand for;
- running an elementwise chain of ``fused.py`` (``fused``, ``update_in_place``): here the
  plain function, on CuPy one compiled kernel;
- random numbers, drawn on the host with a seeded NumPy generator so that one seed gives the
  same numbers on every backend;
- ``jit``: ``jax.jit`` under JAX, the identity elsewhere.

This class is the plain definition, on NumPy. The backend tinyllm runs on NumPy,
``numpy_backend.NumpyBackend``, computes the same four reductions faster; ``cupy_backend``
and ``jax_backend`` swap ``xp`` and override only what their array library spells
differently.
"""

import functools
import math

import numpy as np

KEPT_CONSTANTS = 64  # Backend.constant's arrays: masks for as many shapes (prompt lengths)


class BackendUnavailable(RuntimeError):
    """Raised when a backend is asked for but cannot run here; the message says why."""


class Backend:
    """The plain definition of every backend method, on NumPy arrays.

    >>> b = Backend()
    >>> b.name, b.xp.__name__
    ('numpy', 'numpy')
    >>> b.scatter_add(np.zeros(3, np.float32), np.array([0, 2, 0]), np.ones(3, np.float32))
    array([2., 0., 1.], dtype=float32)
    >>> x = np.arange(6, dtype=np.float32).reshape(2, 3)
    >>> b.sum_last(x).ravel(), b.max_last(x).ravel(), b.dot_last(x, x).ravel()
    (array([ 3., 12.], dtype=float32), array([2., 5.], dtype=float32), array([ 5., 50.], dtype=float32))
    >>> b.sum_first(x)
    array([3., 5., 7.], dtype=float32)
    """

    name = "numpy"
    mutable_arrays = True  # NumPy and CuPy arrays can be written in place; JAX's cannot

    def __init__(self):
        self.xp = np
        self._constants = {}  # constant()'s arrays, by key

    # --- moving arrays ----------------------------------------------------------------
    def asarray(self, x, dtype=None):
        """An array of this backend holding ``x`` (a NumPy array, list or scalar)."""
        return self.xp.asarray(x, dtype=dtype)

    def to_numpy(self, x):
        """A NumPy array with the values of ``x`` (an array of this backend)."""
        return np.asarray(x)

    def to_floats(self, values):
        """``values`` (0-d arrays of this backend, and numbers) as Python floats, read in one
        transfer: stacked in float32 (every backend has it; a count is exact below 2^24)."""
        xp = self.xp
        stacked = xp.stack([xp.asarray(v, dtype=xp.float32).reshape(()) for v in values])
        return self.to_numpy(stacked).tolist()

    def owns(self, x):
        """True when ``x`` is an array of this backend."""
        return isinstance(x, (np.ndarray, np.generic))

    def reads_values(self, x):
        """True when checks may read the values of ``x`` (is every token id in range?):
        not while it is traced, and not on CuPy, where a read waits for the GPU inside a
        training step (callers check such values on the host, before moving them)."""
        return not self.is_traced(x)

    def is_traced(self, x):
        """True when ``x`` is a placeholder inside ``jit`` whose values are not known yet.

        Checks that read values (is every token id in range?) run only when this is False.
        """
        return False

    # --- the spellings that differ ----------------------------------------------------
    def scatter_add(self, target, index, values):
        """``target`` with ``values`` added at ``target[index]``, repeated indices summed.

        The caller must own ``target``: NumPy and CuPy update it in place and return it,
        JAX returns a new array. Either way, use the returned array.
        """
        np.add.at(target, index, values)
        return target

    def erf(self, x):
        """The error function, elementwise, in the dtype of ``x``."""
        try:
            from scipy.special import erf
        except ImportError:  # scipy is optional: fall back to the standard library
            return np.vectorize(math.erf, otypes=[x.dtype])(x)
        return erf(x).astype(x.dtype, copy=False)

    def top_k(self, x, k):
        """The ``k`` largest entries of ``x`` along its last axis, largest first, and where
        they are: ``(values, indices)``, each (..., k). A partition finds the k, then only
        they are sorted (JAX has ``lax.top_k``): a full sort of a (B, T, V) block is slow."""
        xp = self.xp
        part = xp.argpartition(-x, k - 1, axis=-1)[..., :k]  # (..., k) the largest, unordered
        order = xp.argsort(-xp.take_along_axis(x, part, axis=-1), axis=-1)  # (..., k)
        indices = xp.take_along_axis(part, order, axis=-1)
        return xp.take_along_axis(x, indices, axis=-1), indices

    def slice_at(self, x, start, length, axis=0):
        """``length`` entries of ``x`` along ``axis`` from ``start``, which may be traced
        (JAX needs ``length`` fixed and ``start`` a value of the program)."""
        index = [slice(None)] * x.ndim
        index[axis] = slice(start, start + length)
        return x[tuple(index)]

    def write_at(self, target, values, start, axis=0):
        """``target`` with ``values`` written along ``axis`` from ``start`` (maybe traced).

        Like ``scatter_add``, NumPy and CuPy write in place and return ``target``, JAX
        returns a new array: use the returned array.
        """
        index = [slice(None)] * target.ndim
        index[axis] = slice(start, start + values.shape[axis])
        target[tuple(index)] = values
        return target

    def set_rows(self, target, index, values):
        """``target`` with ``target[index] = values`` (rows picked by an integer array).

        In place on NumPy and CuPy, a new array under JAX: use the returned array.
        """
        target[index] = values
        return target

    def constant(self, key, make):
        """The array ``make()`` builds with NumPy, held where this backend holds arrays and
        made once per ``key`` (of the last ``KEPT_CONSTANTS``): a mask an op adds at every
        call, say.

        >>> backend = Backend()
        >>> backend.constant(("ones", 2), lambda: np.ones(2)) is backend.constant(("ones", 2), None)
        True
        """
        if key not in self._constants:
            if len(self._constants) >= KEPT_CONSTANTS:  # drop the oldest
                self._constants.pop(next(iter(self._constants)))
            self._constants[key] = self.asarray(make())
        return self._constants[key]

    # --- reductions the fused ops share -----------------------------------------------
    def sum_last(self, x):
        """``x.sum(axis=-1, keepdims=True)``: (..., n) -> (..., 1)."""
        return x.sum(axis=-1, keepdims=True)

    def max_last(self, x):
        """``x.max(axis=-1, keepdims=True)``: (..., n) -> (..., 1)."""
        return x.max(axis=-1, keepdims=True)

    def dot_last(self, a, b):
        """``(a * b).sum(axis=-1, keepdims=True)``: (..., n), (..., n) -> (..., 1)."""
        return (a * b).sum(axis=-1, keepdims=True)

    def sum_first(self, x):
        """``x.sum(axis=0)`` of a 2-D ``x``: (N, n) -> (n,), the sum of its rows."""
        return x.sum(axis=0)

    # --- fused elementwise chains (fused.py) ---------------------------------------------
    def fused(self, chain):
        """``chain`` (a function of ``fused.py``) as a function of arrays alone.

        Here the plain function on this backend's ``xp``; CuPy compiles it into one kernel.

        >>> from tinyllm.backend import fused
        >>> Backend().fused(fused.centre)(np.array([1.0, 3.0]), 4.0, 2)
        array([-1.,  1.])
        """
        return functools.partial(chain, self.xp)

    def update_in_place(self, chain, *args, where=True):
        """Run ``chain(*args)`` and write its results into its first arguments, in place.

        ``chain`` returns n arrays, which overwrite ``args[0] .. args[n-1]``; only where
        ``where`` (a boolean, or a 0-d boolean array) holds, so a step can be skipped without
        reading a flag back from the device. An optimizer's update (NumPy, CuPy).

        >>> from tinyllm.backend import fused
        >>> p = np.array([1.0, 2.0], np.float32)
        >>> Backend().update_in_place(fused.decayed_step, p, np.float32(0.5), 0.5)
        >>> p
        array([0. , 0.5], dtype=float32)
        """
        results = self.fused(chain)(*args)
        results = results if isinstance(results, tuple) else (results,)
        for target, result in zip(args, results):
            self.xp.copyto(target, result, where=where)

    def flash_attention(self, q, k, v, scale, dtype):
        """Causal attention through a library's fused kernel, or None where there is none.

        ``q`` (B, H, T, D), ``k`` and ``v`` (B, H_kv, T, D), float32; products in ``dtype``.
        Returns ``(out, backward)``: ``out`` float32 (B, H, T, D), ``backward(grad_out)`` the
        float32 gradients of q, k and v. ``functional/attention.py`` computes attention itself
        where this returns None: here, always.
        """
        return None

    def after(self, array, token):
        """``array``, computed only once ``token`` (an array) is. Eagerly that is program
        order, so here it is ``array`` itself; a compiler is free to run anything as soon as
        its inputs exist, and to merge what it computes twice (see JaxBackend). Activation
        checkpointing gives its recomputation's input this way, with the incoming gradient as
        ``token``."""
        return array

    # --- randomness and compilation ---------------------------------------------------
    def uniform(self, seed, shape, dtype=np.float32):
        """Uniform [0, 1) numbers drawn on the host from ``seed``, then moved here."""
        host = np.random.default_rng(seed).random(shape, dtype=np.float32)
        return self.asarray(host.astype(dtype, copy=False))

    def jit(self, fn, **kwargs):
        """Compile ``fn`` where the backend can (JAX); elsewhere return it unchanged."""
        return fn

    def synchronize(self):
        """Wait for queued device work to finish (for timing); NumPy has none."""

    # --- reporting --------------------------------------------------------------------
    def describe(self):
        """One line saying what this backend runs on."""
        return f"NumPy {np.__version__} on the CPU"

    def __repr__(self):
        return f"<tinyllm backend {self.name}: {self.describe()}>"
