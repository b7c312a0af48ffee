"""Reference answers for exercises/ex01_tokenization.py: tinyllm's own BPE functions.

``train_bpe`` is ``train_naive``, the readable trainer in tinyllm/tokenizer/bpe.py: the
grading test checks it against the fast ``train_incremental`` that ``Tokenizer`` uses.
"""

from tinyllm.tokenizer.bpe import encode_with_merges, get_stats, merge
from tinyllm.tokenizer.bpe import train_naive as train_bpe

__all__ = ["encode_with_merges", "get_stats", "merge", "train_bpe"]
