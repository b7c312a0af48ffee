"""Data: corpora (one shipped, local files, Hugging Face datasets on request), character and
BPE token views cached as ``.npy`` files, and seeded random-window batches.

>>> import numpy as np
>>> from tinyllm.data import load_corpus, CharVocab, train_val_split, random_batch
>>> text = load_corpus("tinyshakespeare")
>>> vocab = CharVocab.from_text(text)
>>> train, val = train_val_split(np.array(vocab.encode(text[:1000])))
>>> x, y = random_batch(train, batch_size=4, context=8, rng=np.random.default_rng(0))
>>> x.shape, vocab.decode(y[0][:-1]) == vocab.decode(x[0][1:])
((4, 8), True)
"""

from .batches import RandomBatches, RowBatches, random_batch, train_val_split
from .char_vocab import CharVocab
from .corpus import HUB_CORPORA, SHIPPED_CORPORA, load_corpus, load_hub_corpus
from .tokens import (
    CorpusTokens,
    corpus_tokens,
    encode_corpus,
    load_tokenizer,
    resolve_cache_dir,
    train_bpe_cached,
    validation_tokens,
)

__all__ = [
    "CharVocab",
    "CorpusTokens",
    "RandomBatches",
    "RowBatches",
    "HUB_CORPORA",
    "SHIPPED_CORPORA",
    "corpus_tokens",
    "encode_corpus",
    "load_corpus",
    "load_hub_corpus",
    "load_tokenizer",
    "random_batch",
    "resolve_cache_dir",
    "train_bpe_cached",
    "train_val_split",
    "validation_tokens",
]
