"""Reference answers for exercises/ex08_supervised_fine_tuning.py: tinyllm's SFT data code.

The exercises take and return plain lists and arrays; the library's ``pack`` and
``document_mask`` (tinyllm/data/sft.py) and ``format_chat`` (tinyllm/tokenizer/chat.py) give
them directly. The attention layer adds the causal part to ``document_mask``, so the answer
adds it here. The targets of 8.1 are the line of ``sft_tokens`` that makes them, which the
library runs on a tokenizer and messages rather than on ids and a mask.
"""

import numpy as np

from tinyllm.data import sft
from tinyllm.data.sft import IGNORE, document_mask, pack
from tinyllm.tokenizer import chat

__all__ = ["assistant_targets", "document_causal_mask", "format_chat", "pack_examples"]


def assistant_targets(ids, assistant_mask, ignore_index=IGNORE):
    return sft.assistant_targets(ids, assistant_mask, ignore_index)


def pack_examples(examples, context_length, pad_id=0):
    return tuple(pack(examples, context_length, pad_id=pad_id))


def document_causal_mask(documents):
    documents = np.asarray(documents)
    T = documents.shape[-1]
    causal = np.tril(np.ones((T, T), dtype=bool))  # (T, T): what attention adds
    return document_mask(documents)[:, 0] & causal  # (B, T, T)


def format_chat(tokenizer, messages, add_generation_prompt=False):
    ids, mask = chat.format_chat(tokenizer, messages, add_generation_prompt=add_generation_prompt)
    return ids, mask
