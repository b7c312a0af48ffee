"""tinyllm.data: the shipped corpus, local and `datasets` loading, token caches, batches."""

import hashlib
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinyllm.data import (
    CharVocab,
    RandomBatches,
    corpus_tokens,
    encode_corpus,
    load_corpus,
    random_batch,
    resolve_cache_dir,
    train_val_split,
)
from tinyllm.tokenizer import Tokenizer

# Recorded in tinyllm/data/README.md, from the char-rnn original.
SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"


def test_shipped_corpus_is_the_recorded_file():
    text = load_corpus("tinyshakespeare")
    assert hashlib.sha256(text.encode("utf-8")).hexdigest() == SHAKESPEARE_SHA256
    assert len(set(text)) == 65


def test_local_text_file(tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_text("to be or not to be\n", encoding="utf-8")
    assert load_corpus(path) == load_corpus(str(path)) == "to be or not to be\n"


def test_datasets_loading_on_local_files(tmp_path):
    pytest.importorskip("datasets")
    rows = [{"text": "Once upon a time.", "id": 1}, {"text": "The end.", "id": 2}]
    path = tmp_path / "stories.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in rows), encoding="utf-8")
    options = {"data_files": str(path), "cache_dir": str(tmp_path / "hf_cache")}
    assert load_corpus("hf:json", **options) == "Once upon a time.\n\nThe end."
    assert (
        load_corpus("hf:json", separator="<|endoftext|>", **options)
        == "Once upon a time.<|endoftext|>The end."
    )
    with pytest.raises(
        ValueError, match=r"has no column 'story': expected one of \['text', 'id'\]"
    ):
        load_corpus("hf:json", text_field="story", **options)


def test_unknown_corpus_name():
    with pytest.raises(
        ValueError,
        match=r"unknown corpus 'tiny-shakespeare': expected one of \['tinyshakespeare'\]",
    ):
        load_corpus("tiny-shakespeare")


@pytest.mark.parametrize("name", ["missing.txt", "data/missing", "~/no-such-folder/corpus"])
def test_a_missing_corpus_file_is_named_as_a_file(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=f"corpus file '{name}' does not exist"):
        load_corpus(name)
    (tmp_path / "texts").mkdir()
    with pytest.raises(FileNotFoundError, match="corpus file 'texts/' is a folder"):
        load_corpus("texts/")


def test_char_vocab_on_the_corpus():
    text = load_corpus("tinyshakespeare")
    vocab = CharVocab.from_text(text)
    assert vocab.vocab_size == 65 and vocab.chars[0] == "\n"
    assert vocab.decode(vocab.encode(text[:5000])) == text[:5000]
    with pytest.raises(
        ValueError, match=r"character 'é' \(at index 3\) is not in this vocabulary of 65"
    ):
        vocab.encode("café")


def test_token_cache_is_reused_and_keyed_by_tokenizer(tmp_path):
    text = load_corpus("tinyshakespeare")[:20_000]
    vocab = CharVocab.from_text(text)
    tokens = encode_corpus(text, vocab, name="shakes", cache_dir=tmp_path)
    assert tokens.dtype == np.uint16 and vocab.decode(tokens) == text
    files = list(tmp_path.glob("shakes-*.npy"))
    assert len(files) == 1 and np.array_equal(np.load(files[0]), tokens)

    class Refuses(CharVocab):
        def encode(self, text):
            raise AssertionError("should have been read from the cache")

    assert np.array_equal(
        encode_corpus(text, Refuses(vocab.chars), name="shakes", cache_dir=tmp_path), tokens
    )
    bigger = CharVocab(vocab.chars + "é")  # another tokenizer: another file, not the stale one
    encode_corpus(text, bigger, name="shakes", cache_dir=tmp_path)
    assert len(list(tmp_path.glob("shakes-*.npy"))) == 2


def test_large_vocabularies_are_stored_as_uint32(tmp_path):
    class Wide:
        vocab_size, fingerprint = 70_000, "wide"

        def encode(self, text):
            return [69_999] * len(text)

    tokens = encode_corpus("abc", Wide(), cache_dir=tmp_path)
    assert tokens.dtype == np.uint32 and tokens.tolist() == [69_999] * 3


def test_cache_dir_order(tmp_path, monkeypatch):
    monkeypatch.setenv("TINYLLM_CACHE", str(tmp_path / "from_env"))
    assert resolve_cache_dir() == tmp_path / "from_env"
    assert resolve_cache_dir(tmp_path / "given") == tmp_path / "given"
    monkeypatch.delenv("TINYLLM_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resolve_cache_dir() == tmp_path / "xdg" / "tinyllm"
    assert (tmp_path / "xdg" / "tinyllm").is_dir()


def test_bpe_view_round_trips_and_caches_its_tokenizer(tmp_path):
    view = corpus_tokens("tinyshakespeare", view="bpe", vocab_size=300, cache_dir=tmp_path)
    assert isinstance(view.tokenizer, Tokenizer) and view.tokenizer.vocab_size == 300
    assert view.tokenizer.decode(view.tokens.tolist()) == load_corpus("tinyshakespeare")
    saved = list(tmp_path.glob("tokenizer-tinyshakespeare-*-gpt2-300/tokenizer.json"))
    assert len(saved) == 1 and Tokenizer.load(saved[0]).merges == view.tokenizer.merges
    again = corpus_tokens("tinyshakespeare", view="bpe", vocab_size=300, cache_dir=tmp_path)
    assert np.array_equal(again.tokens, view.tokens)
    with pytest.raises(ValueError, match="unknown corpus view 'word'"):
        corpus_tokens("tinyshakespeare", view="word", cache_dir=tmp_path)


def test_train_val_split_is_nanogpts():
    tokens = np.arange(1000)
    train, val = train_val_split(tokens)
    assert len(train) == 900 and np.array_equal(np.concatenate([train, val]), tokens)
    with pytest.raises(ValueError, match="val_fraction=1.5"):
        train_val_split(tokens, val_fraction=1.5)


@settings(max_examples=50, deadline=None)
@given(
    n_tokens=st.integers(2, 300),
    context=st.integers(1, 50),
    batch_size=st.integers(1, 8),
    seed=st.integers(0, 2**32),
)
def test_random_batches_are_shifted_windows(n_tokens, context, batch_size, seed):
    tokens = np.random.default_rng(seed).integers(0, 1000, size=n_tokens).astype(np.uint16)
    if n_tokens <= context:
        with pytest.raises(ValueError, match=f"expected at least {context + 1}"):
            random_batch(tokens, batch_size, context, rng=seed)
        return
    x, y = random_batch(tokens, batch_size, context, rng=np.random.default_rng(seed))
    assert x.shape == y.shape == (batch_size, context) and x.dtype == y.dtype == np.int64
    windows = {tuple(tokens[i : i + context + 1]) for i in range(n_tokens - context)}
    for row_x, row_y in zip(x, y):
        assert np.array_equal(row_x[1:], row_y[:-1])
        assert (
            tuple(row_x) + (row_y[-1],) in windows
        )  # a real slice of the corpus, never past its end
    x2, y2 = random_batch(tokens, batch_size, context, rng=seed)
    assert np.array_equal(x, x2) and np.array_equal(y, y2)  # same seed, same batch


def test_random_batches_are_reproducible_and_resume_exactly():
    tokens = np.arange(500)
    first_x, _ = next(RandomBatches(tokens, 4, 16, seed=3))
    stream = RandomBatches(tokens, 4, 16, seed=3)
    assert np.array_equal(next(stream)[0], first_x)
    assert not np.array_equal(next(stream)[0], first_x)  # a stream moves on
    saved = json.loads(json.dumps(stream.state_dict()))  # survives a JSON file
    expected = [next(stream)[0] for _ in range(3)]
    resumed = RandomBatches(tokens, 4, 16, seed=99).load_state_dict(saved)
    assert resumed.batches_drawn == 2
    assert all(np.array_equal(next(resumed)[0], x) for x in expected)


def test_random_batches_that_do_not_fit_the_data_fail_clearly():
    with pytest.raises(ValueError, match="does not fit the data: 10 tokens .* context=16"):
        RandomBatches(np.arange(10), 4, 16, seed=0)
    with pytest.raises(ValueError, match="batch_size=0"):
        RandomBatches(np.arange(100), 0, 16, seed=0)
