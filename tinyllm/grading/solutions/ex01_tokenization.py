"""Reference answers for exercises/ex01_tokenization.py: tinyllm's own BPE functions."""

from tinyllm.tokenizer.bpe import encode_with_merges, get_stats, merge

__all__ = ["encode_with_merges", "get_stats", "merge"]
