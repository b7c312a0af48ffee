"""Byte-level BPE tokenization: ``Tokenizer`` trains, encodes, decodes and speaks tokenizer.json.

Read in this order: ``bpe.py`` (the algorithm, readable and slow), ``train.py`` (the same
merges, learned fast), ``patterns.py`` (the split regexes), ``tokenizer.py`` (the class),
``hf_format.py`` (the file format), ``chat.py`` (conversations and the assistant mask).

>>> from tinyllm.tokenizer import Tokenizer
>>> tok = Tokenizer.train(["low lower lowest"] * 10, vocab_size=265)
>>> tok.decode(tok.encode("lowest lower"))
'lowest lower'
"""

from .bpe import encode_with_merges, get_stats, merge, train_naive
from .chat import ChatTokens, format_chat, render_chat
from .patterns import GPT2_PATTERN, GPT4_PATTERN, SPLIT_PATTERNS
from .tokenizer import DEFAULT_SPECIAL_TOKENS, Tokenizer
from .train import train_incremental

__all__ = [
    "ChatTokens",
    "DEFAULT_SPECIAL_TOKENS",
    "GPT2_PATTERN",
    "GPT4_PATTERN",
    "SPLIT_PATTERNS",
    "Tokenizer",
    "encode_with_merges",
    "format_chat",
    "get_stats",
    "merge",
    "render_chat",
    "train_incremental",
    "train_naive",
]
