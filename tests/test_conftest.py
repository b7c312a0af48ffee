"""The shared test settings in ``conftest.py`` hold: a private cache folder per test, and
Hypothesis settings that no wall clock can fail."""

import os
import subprocess
import sys
from pathlib import Path

from hypothesis import HealthCheck, settings

from tinyllm.data import corpus_tokens


def test_each_test_gets_an_empty_cache_folder_under_pytest_tmp(tinyllm_cache, tmp_path_factory):
    cache = Path(os.environ["TINYLLM_CACHE"])
    assert cache == tinyllm_cache and cache.is_dir()
    assert cache.is_relative_to(tmp_path_factory.getbasetemp())
    assert list(cache.iterdir()) == []


def test_cached_corpus_tokens_land_in_the_test_folder_not_the_users(
    tinyllm_cache, tmp_path, monkeypatch
):
    # The user's cache folder, moved here to watch it: other programs may write to the real one.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user_cache"))
    corpus = tmp_path / "small.txt"
    corpus.write_text("the cat sat on the mat, the dog sat on the log. " * 40, encoding="utf-8")
    view = corpus_tokens(str(corpus), view="bpe", vocab_size=270)
    assert view.tokenizer.vocab_size == 270
    assert len(list(tinyllm_cache.glob("small-*.npy"))) == 1  # the token ids
    assert len(list(tinyllm_cache.glob("tokenizer-small-*/tokenizer.json"))) == 1
    assert not (tmp_path / "user_cache").exists()


def test_child_processes_inherit_the_cache_folder(tinyllm_cache):
    code = "import os; print(os.environ['TINYLLM_CACHE'])"
    child = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300
    )
    assert child.stdout.strip() == str(tinyllm_cache)


def test_hypothesis_never_fails_on_time():
    assert settings.default.deadline is None
    assert HealthCheck.too_slow in settings.default.suppress_health_check
