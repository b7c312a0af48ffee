"""The NumPy backend: the plain definitions of ``base.py``, with five of them done faster.

NumPy runs each call as its own loop over memory, one row at a time for a reduction along
the last axis. For the short rows of a transformer (64 to a few hundred values) that loop
is slow, and the same numbers come out of a different loop several times faster:

- row sums (``sum_last``, ``dot_last``) as matrix products with a column of ones, inside
  BLAS: 4-6x faster than ``.sum(axis=-1)`` on rows of 64 to 384 values;
- sums over rows (``sum_first``, a bias gradient) as a row of ones times the matrix: 3x;
- row maxima (``max_last``) through ``argmax``, which has a vectorized loop for short rows
  that ``max`` lacks: 4x on rows of 64 to 256;
- ``scatter_add`` of whole rows (an embedding's backward) over the flat array: 5x;
- ``update_in_place`` (an optimizer's step, ``fused.py``) block by block of 32k values, so
  that the chain's temporaries stay in the CPU cache instead of being fresh arrays of the
  whole size: 3x.

Each method returns what the plain definition returns; ``tests/test_backends.py`` checks
that they agree. CuPy and JAX keep the plain definitions: on a GPU a float32 matrix
product may round through TF32, and XLA fuses the reductions by itself.
"""

import math

import numpy as np

from .base import Backend

BLOCK = 1 << 15  # values per block of update_in_place: its temporaries fit in L2


class NumpyBackend(Backend):
    """The backend ``tinyllm.get_backend("numpy")`` returns.

    >>> b = NumpyBackend()
    >>> x = np.arange(6, dtype=np.float32).reshape(2, 3)
    >>> b.sum_last(x).ravel(), b.max_last(x).ravel(), b.dot_last(x, x).ravel()
    (array([ 3., 12.], dtype=float32), array([2., 5.], dtype=float32), array([ 5., 50.], dtype=float32))
    """

    def scatter_add(self, target, index, values):
        rows = isinstance(index, np.ndarray) and index.dtype.kind in "iu" and target.ndim > 1
        if not (rows and target.flags.c_contiguous):
            return super().scatter_add(target, index, values)
        # Whole rows: ``add.at`` over 2-D rows is slow; over the flat array, one position
        # per value, it is about 5x faster.
        row = math.prod(target.shape[1:])
        flat_index = index.reshape(-1, 1) * row + np.arange(row)  # (len(index), row)
        values = np.broadcast_to(values, (*index.shape, *target.shape[1:]))
        np.add.at(target.reshape(-1), flat_index.reshape(-1), values.reshape(-1))
        return target

    def sum_last(self, x):
        rows = x.reshape(math.prod(x.shape[:-1]), x.shape[-1])  # (N, n)
        ones = np.ones((x.shape[-1], 1), dtype=x.dtype)  # (n, 1)
        return (rows @ ones).reshape(*x.shape[:-1], 1)

    def max_last(self, x):
        if x.ndim == 0 or x.strides[-1] != x.itemsize:
            return super().max_last(x)  # rows strided in memory: NumPy's max is fast there
        rows = x.reshape(math.prod(x.shape[:-1]), x.shape[-1])  # (N, n)
        best = rows[np.arange(rows.shape[0]), rows.argmax(axis=-1)]  # (N,)
        return best.reshape(*x.shape[:-1], 1)

    def dot_last(self, a, b):
        # A batch of (1, n) x (n, 1) products: the (..., n) product a * b is never stored.
        return (a[..., None, :] @ b[..., :, None])[..., 0]

    def sum_first(self, x):
        return np.ones(x.shape[0], dtype=x.dtype) @ x

    def update_in_place(self, chain, *args, where=True):
        target = args[0]
        same = [isinstance(a, np.ndarray) and a.shape == target.shape for a in args]
        arrays = [a for a, s in zip(args, same) if s]
        if target.size <= BLOCK or not all(a.flags.c_contiguous for a in arrays):
            return super().update_in_place(chain, *args, where=where)
        flat = [a.reshape(-1) if s else a for a, s in zip(args, same)]  # views: contiguous
        for start in range(0, target.size, BLOCK):
            block = [a[start : start + BLOCK] if s else a for a, s in zip(flat, same)]
            super().update_in_place(chain, *block, where=where)
