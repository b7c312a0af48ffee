"""The allocator tuning takes effect on glibc Linux and can be switched off."""

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
