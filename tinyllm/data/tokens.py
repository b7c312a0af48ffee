"""Corpora as token arrays, cached on disk so each corpus is tokenized once per tokenizer.

Tokenizing a corpus takes seconds to minutes; a training run wants the ids at once. So the
ids are saved as a ``.npy`` file named by the corpus, a hash of its text and the tokenizer's
fingerprint: change either and a new file is made; nothing stale is ever read back.

The cache folder is, first found: the ``cache_dir`` argument, ``$TINYLLM_CACHE``, or
``tinyllm`` under the user's cache folder (``$XDG_CACHE_HOME`` or ``~/.cache``).

>>> import tempfile
>>> with tempfile.TemporaryDirectory() as tmp:
...     view = corpus_tokens("tinyshakespeare", view="char", cache_dir=tmp)
...     again = corpus_tokens("tinyshakespeare", view="char", cache_dir=tmp)   # read from the cache
>>> view.tokenizer, view.tokens.shape, view.tokens.dtype, view.tokenizer.decode(view.tokens[:5])
(CharVocab(vocab_size=65), (1115394,), dtype('uint16'), 'First')
>>> bool((again.tokens == view.tokens).all())
True
"""

import hashlib
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..files import atomic_open
from ..tokenizer import Tokenizer
from .batches import train_val_split
from .char_vocab import CharVocab
from .corpus import load_corpus


def resolve_cache_dir(cache_dir=None):
    """The folder for cached files (created if missing); see the module docstring for the order."""
    if cache_dir is None:
        cache_dir = os.environ.get("TINYLLM_CACHE")
    if cache_dir is None:
        cache_dir = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tinyllm"
    path = Path(cache_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path


def text_hash(text):
    """A short hash of ``text``.

    >>> text_hash("hello")
    '2cf24dba5fb0a30e'
    """
    return hashlib.sha256(text.encode("utf-8", errors="surrogatepass")).hexdigest()[:16]


def encode_corpus(text, tokenizer, *, name="corpus", cache_dir=None):
    """The ids of ``text`` under ``tokenizer`` (a ``Tokenizer`` or ``CharVocab``), as a 1-D
    ``uint16`` array (``uint32`` for vocabularies over 65,536), read from the cache if there."""
    path = resolve_cache_dir(cache_dir) / f"{name}-{text_hash(text)}-{tokenizer.fingerprint}.npy"
    if path.exists():
        return np.load(path)
    dtype = np.uint16 if tokenizer.vocab_size <= 2**16 else np.uint32
    tokens = np.asarray(tokenizer.encode(text), dtype=dtype)  # (n_tokens,)
    with atomic_open(path, "wb") as file:  # a crash never leaves a half-written cache file
        np.save(file, tokens)
    return tokens


def train_bpe_cached(text, vocab_size, *, name="corpus", pattern="gpt2", cache_dir=None):
    """A BPE ``Tokenizer`` trained on ``text``, or the one trained before and saved in the cache.

    ``pattern`` is a split-pattern name (custom regexes are not cached: train those directly).
    """
    folder = (
        resolve_cache_dir(cache_dir) / f"tokenizer-{name}-{text_hash(text)}-{pattern}-{vocab_size}"
    )
    if (folder / "tokenizer.json").exists():
        return Tokenizer.load(folder)
    tokenizer = Tokenizer.train(text, vocab_size, pattern=pattern)
    tokenizer.save(folder)
    return tokenizer


class CorpusTokens(NamedTuple):
    """A corpus as token ids, with the tokenizer that maps them back to text."""

    tokens: np.ndarray
    tokenizer: object


def corpus_tokens(
    name="tinyshakespeare", *, view="char", vocab_size=4096, val_fraction=0.1, cache_dir=None
):
    """Corpus ``name`` (see ``load_corpus``) as tokens: ``view="char"`` (one id per character)
    or ``view="bpe"`` (a byte-level BPE of ``vocab_size`` tokens, trained on the first
    ``1 - val_fraction`` of the text only, so the validation text stays unseen)."""
    text = load_corpus(name)
    key = _cache_name(name)
    if view == "char":
        tokenizer = CharVocab.from_text(text)
    elif view == "bpe":
        train_text = text[: int(len(text) * (1 - val_fraction))]
        tokenizer = train_bpe_cached(train_text, vocab_size, name=key, cache_dir=cache_dir)
    else:
        raise ValueError(f"unknown corpus view {view!r}: expected 'char' or 'bpe'")
    return CorpusTokens(encode_corpus(text, tokenizer, name=key, cache_dir=cache_dir), tokenizer)


def _cache_name(corpus):
    """The name a corpus's cached files carry."""
    return (
        Path(corpus).stem if Path(corpus).is_file() else corpus.replace("/", "_").replace(":", "_")
    )


def validation_tokens(name, tokenizer, *, val_fraction=0.1, cache_dir=None):
    """The validation split (the last ``val_fraction``) of corpus ``name`` under
    ``tokenizer``: the text pretraining held out, as pretraining split it."""
    text = load_corpus(name)
    tokens = encode_corpus(text, tokenizer, name=_cache_name(name), cache_dir=cache_dir)
    return train_val_split(tokens, val_fraction)[1]


def load_tokenizer(directory):
    """The tokenizer saved in ``directory``: a BPE ``tokenizer.json`` or a ``char_vocab.json``.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     _ = CharVocab("abc").save(tmp)
    ...     load_tokenizer(tmp)
    CharVocab(vocab_size=3)
    """
    directory = Path(directory)
    if (directory / "tokenizer.json").is_file():
        return Tokenizer.load(directory)
    if (directory / CharVocab.FILE_NAME).is_file():
        return CharVocab.load(directory)
    raise FileNotFoundError(
        f"no tokenizer in {directory}: expected tokenizer.json (BPE) or {CharVocab.FILE_NAME}"
    )
