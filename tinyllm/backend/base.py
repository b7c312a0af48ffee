"""What every array backend offers: the array namespace and the few spellings that differ.

tinyllm writes each op once against an array namespace ``xp`` (``numpy``, ``cupy`` or
``jax.numpy``): ``xp.exp``, ``xp.matmul``, ``xp.where`` are spelled the same in all three.
A handful of things are not, and they live here, one method each:

- moving arrays in and out (``asarray``, ``to_numpy``);
- adding into selected positions (``scatter_add``), which NumPy and CuPy do in place and
  JAX does by returning a new array;
- ``erf``, which NumPy itself lacks;
- speed spellings for NumPy: sums through BLAS (``row_sum``, ``row_dot``, ``column_sum``),
  row maxima through ``argmax`` (``row_max``) and writing an elementwise result over a
  fresh intermediate (``overwrite``), each with a plain override on the GPU backends;
- random numbers, drawn on the host with a seeded NumPy generator so that one seed gives the
  same numbers on every backend;
- ``jit``: ``jax.jit`` under JAX, the identity elsewhere.

The NumPy backend is the reference; ``cupy_backend`` and ``jax_backend`` override only what
they must.
"""

import math

import numpy as np


class BackendUnavailable(RuntimeError):
    """Raised when a backend is asked for but cannot run here; the message says why."""


class Backend:
    """The NumPy reference backend. Subclasses swap ``xp`` and override what differs.

    >>> b = Backend()
    >>> b.name, b.xp.__name__
    ('numpy', 'numpy')
    >>> b.scatter_add(np.zeros(3, np.float32), np.array([0, 2, 0]), np.ones(3, np.float32))
    array([2., 0., 1.], dtype=float32)
    >>> x = np.arange(6, dtype=np.float32).reshape(2, 3)
    >>> b.row_sum(x), b.row_dot(x, x)
    (array([[ 3.],
           [12.]], dtype=float32), array([[ 5.],
           [50.]], dtype=float32))
    >>> b.row_max(x).ravel()
    array([2., 5.], dtype=float32)
    """

    name = "numpy"

    def __init__(self):
        self.xp = np

    # --- moving arrays ----------------------------------------------------------------
    def asarray(self, x, dtype=None):
        """An array of this backend holding ``x`` (a NumPy array, list or scalar)."""
        return self.xp.asarray(x, dtype=dtype)

    def to_numpy(self, x):
        """A NumPy array with the values of ``x`` (an array of this backend)."""
        return np.asarray(x)

    def owns(self, x):
        """True when ``x`` is an array of this backend."""
        return isinstance(x, (np.ndarray, np.generic))

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
        rows = isinstance(index, np.ndarray) and index.dtype.kind in "iu" and target.ndim > 1
        if rows and target.flags.c_contiguous:
            # Whole rows, as in an embedding's backward. ``add.at`` over 2-D rows is slow;
            # over the flat array, one position per value, it is about 5x faster.
            row = math.prod(target.shape[1:])
            flat_index = index.reshape(-1, 1) * row + np.arange(row)  # (len(index), row)
            values = np.broadcast_to(values, (*index.shape, *target.shape[1:]))
            np.add.at(target.reshape(-1), flat_index.reshape(-1), values.reshape(-1))
            return target
        np.add.at(target, index, values)
        return target

    def overwrite(self, fn, owned, *args):
        """``fn(owned, *args)`` for an elementwise ``fn`` such as ``xp.exp`` or ``xp.multiply``.

        NumPy and CuPy write the result into ``owned`` instead of a new array, which saves
        allocating and filling one more array of that size. So the caller must own
        ``owned``: a fresh intermediate that nothing else refers to (not an input, not a
        saved array, not a view of one) and that it does not read again. JAX returns a new
        array. Either way, use the returned array.
        """
        return fn(owned, *args, out=owned)

    def row_sum(self, x):
        """``x.sum(axis=-1, keepdims=True)``: (..., n) -> (..., 1), in the dtype of ``x``.

        NumPy sums the rows of an array one short row at a time; a matrix-vector product
        with a column of ones does the same sum inside BLAS, several times faster.
        """
        rows = x.reshape(math.prod(x.shape[:-1]), x.shape[-1])  # (N, n)
        ones = self.xp.ones((x.shape[-1], 1), dtype=x.dtype)  # (n, 1)
        return (rows @ ones).reshape(*x.shape[:-1], 1)

    def row_dot(self, a, b):
        """``(a * b).sum(axis=-1, keepdims=True)``: (..., n), (..., n) or (n,) -> (..., 1).

        As a batch of (1, n) x (n, 1) products, so the (..., n) product is never stored;
        when ``b`` is one vector (n,) for every row, as a single matrix-vector product.
        """
        if b.ndim == 1:
            rows = a.reshape(math.prod(a.shape[:-1]), a.shape[-1])  # (N, n)
            return (rows @ b).reshape(*a.shape[:-1], 1)
        return (a[..., None, :] @ b[..., :, None])[..., 0]

    def column_sum(self, x):
        """``x.sum(axis=0)`` of a 2-D ``x``: (N, n) -> (n,), the sum of its rows.

        Done in BLAS too, as a row of ones times ``x``: 3x faster than NumPy's sum.
        """
        return self.xp.ones(x.shape[0], dtype=x.dtype) @ x

    def row_max(self, x):
        """``x.max(axis=-1, keepdims=True)``: (..., n) -> (..., 1).

        NumPy's ``max`` reduces short rows one at a time (about 1 ns a value for rows of
        64); its ``argmax`` has a vectorized loop for exactly this, and picking the values
        at those positions is cheap: 4x faster for rows of 64 to 256, the same for long ones.
        Rows strided in memory (a softmax over axis 0) are the case NumPy's ``max`` does fast.
        """
        if x.ndim == 0 or x.strides[-1] != x.itemsize:
            return x.max(axis=-1, keepdims=True)
        rows = x.reshape(math.prod(x.shape[:-1]), x.shape[-1])  # (N, n)
        best = rows[np.arange(rows.shape[0]), rows.argmax(axis=-1)]  # (N,)
        return best.reshape(*x.shape[:-1], 1)

    def erf(self, x):
        """The error function, elementwise, in the dtype of ``x``."""
        try:
            from scipy.special import erf
        except ImportError:  # scipy is optional: fall back to the standard library
            return np.vectorize(math.erf, otypes=[x.dtype])(x)
        return erf(x).astype(x.dtype, copy=False)

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
