"""The BLAS thread limit: taken inside the block, put back after, chosen by model width."""

import importlib

import numpy as np
import pytest

from tinyllm.backend.threads import (
    ENV_VAR,
    NARROW_WIDTH,
    blas_thread_counts,
    blas_threads,
    training_threads,
)

threadpoolctl = pytest.importorskip("threadpoolctl")


def test_one_thread_inside_the_block_and_the_old_count_after():
    with threadpoolctl.threadpool_limits(2, "blas"):  # a known starting point
        before = blas_thread_counts()
        assert before and all(n == 2 for n in before), before
        with blas_threads(1):
            assert blas_thread_counts() == [1] * len(before)
            a = np.ones((64, 64), np.float32)
            assert float((a @ a)[0, 0]) == 64.0  # products still right with one thread
        assert blas_thread_counts() == before


def test_the_count_comes_back_after_an_exception():
    before = blas_thread_counts()
    with pytest.raises(KeyError):
        with blas_threads(1):
            raise KeyError("inside")
    assert blas_thread_counts() == before


def test_none_changes_nothing():
    before = blas_thread_counts()
    with blas_threads(None):
        assert blas_thread_counts() == before


@pytest.mark.parametrize("bad", [0, -1, 1.5, "two", True])
def test_bad_limit_is_refused(bad):
    with pytest.raises(ValueError, match="expected a whole number of threads"):
        with blas_threads(bad):
            pass


def test_narrow_models_train_with_one_thread_on_numpy_only(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert training_threads(128) == 1
    assert training_threads(NARROW_WIDTH - 1) == 1
    assert training_threads(NARROW_WIDTH) is None  # wide: the library's default
    assert training_threads(128, "jax") is None
    assert training_threads(128, "cupy") is None


def test_the_environment_variable_wins(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "2")
    assert training_threads(128) == 2
    assert training_threads(1024, "jax") == 2
    monkeypatch.setenv(ENV_VAR, "zero")
    with pytest.raises(ValueError, match=r"\$TINYLLM_BLAS_THREADS='zero'"):
        training_threads(128)


def test_pretrain_trains_narrow_models_with_one_thread(monkeypatch):
    recipe = importlib.import_module("tinyllm.recipes.pretrain")  # the module, not the function
    monkeypatch.delenv(ENV_VAR, raising=False)
    seen = []
    monkeypatch.setattr(
        recipe, "_pretrain", lambda config, train: seen.append(blas_thread_counts())
    )
    with threadpoolctl.threadpool_limits(2, "blas"):
        recipe.pretrain(recipe.PretrainConfig(preset="tiny", backend="numpy"))  # width 128
        recipe.pretrain(recipe.PretrainConfig(preset="small", backend="numpy"))  # width 384
        after = blas_thread_counts()
    assert set(seen[0]) == {1}
    assert set(seen[1]) == {2}  # untouched
    assert set(after) == {2}
