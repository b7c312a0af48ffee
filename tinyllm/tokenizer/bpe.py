"""Byte-pair encoding, the readable way: count adjacent pairs, merge the most frequent, repeat.

Text starts as UTF-8 bytes, so the first 256 tokens are the bytes themselves and any string
can be encoded. Training learns an ordered table of merges, each "pair (a, b) becomes token c";
encoding replays that table on new text, earliest merge first.

This file is the reference: ``train_naive`` recounts every pair in the corpus after every
merge, which is easy to check and slow. ``train.py`` learns the same merges fast.

>>> merges, vocab = train_naive({b"low": 5, b"lower": 2, b"newest": 6, b"widest": 3}, 259)
>>> [vocab[token] for token in merges.values()]
[b'es', b'est', b'lo']
>>> encode_with_merges(list(b"lowest"), merges)
[258, 119, 257]
"""


def get_stats(ids, counts=None, weight=1):
    """Count adjacent pairs in ``ids``, adding ``weight`` per occurrence to ``counts`` if given.

    >>> get_stats([1, 2, 3, 1, 2])
    {(1, 2): 2, (2, 3): 1, (3, 1): 1}
    >>> get_stats([7, 8], {(7, 8): 1}, weight=10)   # a word seen 10 times counts 10 times
    {(7, 8): 11}
    """
    counts = {} if counts is None else counts
    for pair in zip(ids, ids[1:]):
        counts[pair] = counts.get(pair, 0) + weight
    return counts


def merge(ids, pair, new_id):
    """Replace each occurrence of ``pair`` in ``ids`` by ``new_id``, scanning left to right.

    >>> merge([1, 2, 3, 1, 2], (1, 2), 4)
    [4, 3, 4]
    >>> merge([5, 5, 5], (5, 5), 6)   # occurrences overlap: the leftmost wins
    [6, 5]
    """
    merged, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            merged.append(new_id)
            i += 2
        else:
            merged.append(ids[i])
            i += 1
    return merged


def most_frequent_pair(counts):
    """The pair with the highest count; ties go to the smallest pair, so training is repeatable.

    >>> most_frequent_pair({(3, 4): 2, (1, 2): 2, (0, 9): 1})
    (1, 2)
    """
    return min(counts, key=lambda pair: (-counts[pair], pair))


def byte_vocab():
    """The starting vocabulary: token ``i`` is the single byte ``i``.

    >>> vocab = byte_vocab()
    >>> len(vocab), vocab[104], vocab[255]
    (256, b'h', b'\\xff')
    """
    return {i: bytes([i]) for i in range(256)}


def add_merged_token(vocab, token_ids, pair):
    """The id for the token that merging ``pair`` makes, adding it to ``vocab`` if it is new.

    Two different pairs can spell the same bytes ("a"+"bc" and "ab"+"c"); they share one id,
    as in Hugging Face's trainer, so every token in the vocabulary is distinct.

    >>> vocab = {0: b"a", 1: b"b", 2: b"c", 3: b"ab", 4: b"bc"}
    >>> token_ids = {token: i for i, token in vocab.items()}
    >>> add_merged_token(vocab, token_ids, (3, 2)), add_merged_token(vocab, token_ids, (0, 4))
    (5, 5)
    """
    token = vocab[pair[0]] + vocab[pair[1]]
    if token not in token_ids:
        token_ids[token] = len(vocab)
        vocab[token_ids[token]] = token
    return token_ids[token]


def train_naive(word_counts, vocab_size):
    """Learn merges until the vocabulary has ``vocab_size`` tokens, recounting all pairs each time.

    ``word_counts`` maps each distinct pre-token (as bytes) to how often it occurs; counting
    distinct words once is already far cheaper than walking the raw text. Returns
    ``(merges, vocab)``: ``merges`` maps pair -> new id in the order learned, ``vocab`` maps
    id -> bytes. Stops early if no pair is left to merge.

    >>> merges, vocab = train_naive({b"aaab": 1}, 258)   # "aa" first; then a tie, smallest wins
    >>> merges, vocab[256], vocab[257]
    ({(97, 97): 256, (97, 98): 257}, b'aa', b'ab')
    """
    words = [(list(word), count) for word, count in word_counts.items()]
    vocab = byte_vocab()
    token_ids = {token: i for i, token in vocab.items()}
    merges = {}
    while len(vocab) < vocab_size:
        counts = {}
        for ids, count in words:  # the expensive part: every pair in the corpus, every time
            get_stats(ids, counts, count)
        if not counts:
            break
        pair = most_frequent_pair(counts)
        new_id = add_merged_token(vocab, token_ids, pair)
        merges.setdefault(pair, new_id)
        words = [(merge(ids, pair, new_id), count) for ids, count in words]
    return merges, vocab


def encode_with_merges(ids, merges, ranks=None):
    """Apply a learned merge table to ``ids``: repeatedly merge the present pair learned earliest.

    ``merges`` maps pair -> new id in the order learned; ``ranks`` (pair -> position in that
    order) may be passed precomputed to save rebuilding it on every call.

    >>> merges = {(104, 105): 256, (256, 33): 257}   # "hi" -> 256, then "hi" + "!" -> 257
    >>> encode_with_merges(list(b"hi! hi"), merges)
    [257, 32, 256]
    """
    ranks = {pair: rank for rank, pair in enumerate(merges)} if ranks is None else ranks
    ids = list(ids)
    while len(ids) >= 2:
        pair = min(zip(ids, ids[1:]), key=lambda p: ranks.get(p, len(ranks)))
        if pair not in ranks:
            break
        ids = merge(ids, pair, merges[pair])
    return ids
