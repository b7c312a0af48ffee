"""Settings every test shares: nothing is written into the user's cache, and nothing fails
for being slow.

- Each test gets its own empty cache folder, named in ``$TINYLLM_CACHE`` (see
  ``tinyllm.data.resolve_cache_dir``): corpus tokens and tokenizers the code under test
  caches land under pytest's temporary directory, never in ``~/.cache/tinyllm``, and no test
  reads what another one cached. Child processes a test starts inherit the variable.
- Hypothesis has no deadline and no too-slow health check: both measure wall-clock time,
  which a busy machine stretches.
- Under ``pytest -n N`` (pytest-xdist) each worker uses one BLAS thread, as do the processes
  its tests start: N workers share the cores, and two BLAS threads per worker would spin
  against the other workers' (several times slower, not faster). The notebooks are collected
  first: theirs is the longest file, and a long file started last keeps one worker busy
  after the others are done.
- JAX compiles with fewer LLVM passes (the arithmetic is the same; compiling takes about
  half as long, and the tests compile far more than they run), and every process of the run
  - xdist workers, the children tests start, notebook kernels - shares one compilation
  cache in a temporary folder: a step that several tests (or one test, twice) compile for
  the same shapes is compiled once.
"""

import atexit
import os
import shutil
import tempfile

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("tinyllm", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("tinyllm")

FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE}".strip()
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:  # set once, by the first process of the run
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="tinyllm-jax-cache-")
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.1"
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)

if "PYTEST_XDIST_WORKER" in os.environ:
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, "1")  # read by the libraries loaded from here on
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)  # those already loaded


def pytest_collection_modifyitems(items):
    items.sort(
        key=lambda item: item.path.name != "test_notebooks.py"
    )  # stable: the rest keep their order


@pytest.fixture(autouse=True)
def tinyllm_cache(tmp_path_factory, monkeypatch):
    """This test's cache folder: fresh, empty, and apart from ``tmp_path``."""
    path = tmp_path_factory.mktemp("tinyllm_cache")
    monkeypatch.setenv("TINYLLM_CACHE", str(path))
    return path
