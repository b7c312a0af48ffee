"""How many threads NumPy's matrix products may use, for one block of code.

NumPy hands every matrix product to a BLAS library (OpenBLAS in the NumPy wheels) that
splits it over a pool of worker threads, one per core. Between products the workers do
not sleep at once: they spin, waiting for the next one. On a quiet machine that is a small
win. On a machine shared with another busy process it is a large loss: the spinning
workers take turns on the cores with the other process *and* with Python's own thread,
which runs everything that is not a matrix product. Measured on a 2-core machine, a
training step of the ``tiny`` model (width 128) took 104 ms with two BLAS threads and
120 ms with one; with one other busy process running, 236 ms with two and 120 ms with one.

A narrow model spends most of its step outside BLAS (elementwise passes, softmax, norms,
the Python that calls them), so the second thread buys little and risks much: it trains
with one. A wide model is mostly matrix products, where more threads pay even on a shared
machine: it keeps the library's default. ``TINYLLM_BLAS_THREADS=n`` overrides the choice.

>>> with blas_threads(1):
...     set(blas_thread_counts())  # every BLAS library loaded (NumPy's; SciPy's, torch's...)
{1}
"""

import contextlib
import os

from threadpoolctl import threadpool_info, threadpool_limits

ENV_VAR = "TINYLLM_BLAS_THREADS"
NARROW_WIDTH = 256  # models narrower than this train with one BLAS thread


def training_threads(width, backend_name="numpy"):
    """The BLAS thread limit for training a model ``width`` features wide: 1 for narrow
    models on the NumPy backend, None (the library's default) otherwise; ``$TINYLLM_BLAS_THREADS``
    wins when set.

    >>> training_threads(128), training_threads(768), training_threads(128, "jax")
    (1, None, None)
    """
    if os.environ.get(ENV_VAR):
        return _positive_int(os.environ[ENV_VAR], f"${ENV_VAR}")
    if backend_name != "numpy":  # CuPy runs on the GPU; XLA keeps its own thread pool
        return None
    return 1 if width < NARROW_WIDTH else None


@contextlib.contextmanager
def blas_threads(limit):
    """Run the ``with`` block with at most ``limit`` BLAS threads (None: no change), then
    put back the count that was there before, even on an exception."""
    if limit is None:
        yield
        return
    with threadpool_limits(limits=_positive_int(limit, "limit"), user_api="blas"):
        yield


def blas_thread_counts():
    """The thread count of each BLAS library loaded in this process."""
    return [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]


def _positive_int(value, name):
    text = str(value).strip()
    if isinstance(value, bool) or not text.isdigit() or int(text) < 1:
        raise ValueError(f"{name}={value!r}: expected a whole number of threads >= 1")
    return int(text)
