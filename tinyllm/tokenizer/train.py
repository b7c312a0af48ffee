"""Fast BPE training: keep the pair counts, and after each merge update only what changed.

``bpe.train_naive`` recounts every pair in the corpus after every merge. But a merge of
(a, b) only changes the words that contain (a, b), and in those words only the pairs next to
each occurrence. So we keep three tables and patch them:

- ``pair_counts``: pair -> how often it occurs in the corpus (weighted by word frequency);
- ``words_with``: pair -> the ids of the distinct words it occurs in, so a merge visits only
  the words it changes instead of all of them;
- a max-heap of ``(-count, pair)`` to find the most frequent pair without scanning.

Counts only ever *fall* for existing pairs, and the pairs a merge creates all contain the new
token. So the heap is updated lazily: push every newly created pair; when a popped entry's
count is out of date, push it back with the current count and pop again. Late in training a
merge touches a handful of words, so a merge costs about as much as the words it changes,
not the whole corpus. The merges it learns are exactly ``train_naive``'s (same tie-break).

>>> word_counts = {b"low": 5, b"lower": 2, b"newest": 6, b"widest": 3}
>>> from tinyllm.tokenizer.bpe import train_naive
>>> train_incremental(word_counts, 262) == train_naive(word_counts, 262)
True
"""

import heapq
from collections import Counter, defaultdict

import regex

from .bpe import add_merged_token, byte_vocab, merge
from .patterns import split_text


def count_pretokens(texts, compiled_pattern, special_tokens=()):
    """Count each distinct pre-token piece of ``texts`` (a string or an iterable of strings),
    as UTF-8 bytes. Special tokens are cut out first: they are never learned from.

    >>> from tinyllm.tokenizer.patterns import compile_pattern
    >>> count_pretokens("the cat<|endoftext|>the dog", compile_pattern("gpt2"), ["<|endoftext|>"])
    Counter({b'the': 2, b' cat': 1, b' dog': 1})
    """
    texts = [texts] if isinstance(texts, str) else texts
    specials = (
        regex.compile("|".join(regex.escape(s) for s in special_tokens)) if special_tokens else None
    )
    counts = Counter()
    for text in texts:
        if not isinstance(text, str):
            raise TypeError(f"training texts must be str, got {type(text).__name__}")
        for part in specials.split(text) if specials else [text]:
            counts.update(split_text(compiled_pattern, part))
    return Counter({piece.encode("utf-8"): count for piece, count in counts.items()})


def train_incremental(word_counts, vocab_size):
    """Learn merges until the vocabulary has ``vocab_size`` tokens (or no pair is left).

    Same inputs and outputs as ``bpe.train_naive``: ``word_counts`` maps pre-token bytes ->
    count; returns ``(merges, vocab)`` with merges as pair -> new id in the order learned.

    >>> merges, vocab = train_incremental({b"aaab": 1}, 258)
    >>> merges, vocab[256], vocab[257]
    ({(97, 97): 256, (97, 98): 257}, b'aa', b'ab')
    """
    words = [list(word) for word in word_counts]  # each distinct word as a list of token ids
    counts = list(word_counts.values())
    vocab = byte_vocab()
    token_ids = {token: i for i, token in vocab.items()}

    pair_counts = defaultdict(int)
    words_with = defaultdict(set)
    for w, (ids, count) in enumerate(zip(words, counts)):
        for pair in zip(ids, ids[1:]):
            pair_counts[pair] += count
            words_with[pair].add(w)
    heap = [(-count, pair) for pair, count in pair_counts.items()]
    heapq.heapify(heap)

    merges = {}
    while len(vocab) < vocab_size and heap:
        neg_count, pair = heapq.heappop(heap)
        count = pair_counts.get(pair, 0)
        if count <= 0:
            continue  # merged away already
        if count != -neg_count:
            heapq.heappush(heap, (-count, pair))  # stale entry: the count fell since it was pushed
            continue
        new_id = add_merged_token(vocab, token_ids, pair)
        merges.setdefault(pair, new_id)
        created = set()
        for w in words_with.pop(pair):
            old = words[w]
            new = merge(old, pair, new_id)
            if len(new) == len(old):
                continue  # the index may be stale: this word lost the pair to an earlier merge
            for old_pair in zip(old, old[1:]):  # retract the word's old pairs ...
                pair_counts[old_pair] -= counts[w]
            for new_pair in zip(new, new[1:]):  # ... and add its new ones
                pair_counts[new_pair] += counts[w]
                if new_id in new_pair:
                    words_with[new_pair].add(w)
                    created.add(new_pair)
            words[w] = new
        del pair_counts[pair]
        for new_pair in created:
            heapq.heappush(heap, (-pair_counts[new_pair], new_pair))
    return merges, vocab
