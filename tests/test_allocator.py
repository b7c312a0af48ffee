"""The allocator tuning takes effect on glibc Linux and can be switched off."""

import os
import subprocess
import sys

import pytest

from tinyllm.backend.allocator import keep_freed_memory


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt is Linux-only")
def test_keep_freed_memory_applies_and_can_be_disabled(monkeypatch):
    import ctypes.util

    if "libc.so" not in (ctypes.util.find_library("c") or ""):
        pytest.skip("this Linux has no glibc")
    assert keep_freed_memory() is True
    monkeypatch.setenv("TINYLLM_KEEP_MEMORY", "0")
    assert keep_freed_memory() is False


def test_the_jax_backend_keeps_freed_memory_too():
    """XLA:CPU allocates from the same heap: without this a JAX run that never touches the
    NumPy backend (``tinyllm pretrain --backend jax``) took 40 ms a tiny step, not 28."""
    pytest.importorskip("jax")
    code = """
import tinyllm.backend as b
calls = []
b.keep_freed_memory = lambda: calls.append(1)
backend = b.get_backend("jax")
print(backend.jax.default_backend(), len(calls))
"""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["cpu", "1"]
