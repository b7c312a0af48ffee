"""Exercises for lesson 01: tokenization. Replace each ``raise NotImplementedError`` with code.

Token ids are plain Python ints in lists; text starts as its UTF-8 bytes, so ids 0..255 are
the bytes themselves and a merge "(a, b) -> c" adds token c.

Grade with ``tinyllm grade exercises -k ex01`` (lesson: lessons/01-tokenization.md).
"""


# --- Exercise 1.1 ---------------------------------------------------------------------------
def get_stats(ids, counts=None, weight=1):
    """Count adjacent pairs in ``ids``: return a dict ``{(a, b): count}``.

    If ``counts`` is given, add to it (and return it) instead of a new dict; each occurrence
    adds ``weight`` (a word seen 10 times in the corpus counts 10 times).

    get_stats([1, 2, 3, 1, 2]) == {(1, 2): 2, (2, 3): 1, (3, 1): 1}
    """
    raise NotImplementedError("Exercise 1.1: count the adjacent pairs of ids")


# --- Exercise 1.2 ---------------------------------------------------------------------------
def merge(ids, pair, new_id):
    """Return a new list where every occurrence of ``pair`` in ``ids`` is replaced by ``new_id``.

    Scan left to right; when occurrences overlap the leftmost wins:
    merge([1, 2, 3, 1, 2], (1, 2), 4) == [4, 3, 4]; merge([5, 5, 5], (5, 5), 6) == [6, 5].
    """
    raise NotImplementedError("Exercise 1.2: replace each occurrence of pair by new_id")


# --- Exercise 1.3 ---------------------------------------------------------------------------
def encode_with_merges(ids, merges, ranks=None):
    """Apply a trained merge table to ``ids`` and return the merged list.

    ``merges`` maps pair -> new id, in the order training learned them (dicts keep order).
    Repeat: among the adjacent pairs of ``ids``, take the one learned *earliest*, merge it
    everywhere; stop when no adjacent pair is in the table. ``ranks`` (pair -> position in
    the table) may be given precomputed; build it yourself when it is None.

    encode_with_merges(list(b"hi! hi"), {(104, 105): 256, (256, 33): 257}) == [257, 32, 256]
    """
    raise NotImplementedError("Exercise 1.3: encode with a trained merge table")


# --- Exercise 1.4 ---------------------------------------------------------------------------
def train_bpe(word_counts, vocab_size):
    """Learn merges until the vocabulary has ``vocab_size`` tokens; return ``(merges, vocab)``.

    ``word_counts`` maps each distinct pre-token (bytes) to how often it occurs in the corpus.
    Start from the 256 byte tokens, ``vocab = {i: bytes([i]) for i in range(256)}``, and
    each word as the list of its bytes. Then repeat while ``len(vocab) < vocab_size``:

    1. count the adjacent pairs of all words, each word weighted by its count (``get_stats``);
       stop early if there are none;
    2. take the most frequent pair; on a tie, the smallest pair (compare the tuples);
    3. give it the next id, ``len(vocab)``: ``merges[pair] = new_id`` and
       ``vocab[new_id] = vocab[a] + vocab[b]``;
    4. merge it in every word (``merge``).

    ``merges`` maps pair -> new id in the order learned; ``vocab`` maps id -> bytes.
    For ``{b"aaab": 1}`` and 258: "aa" occurs twice, so (97, 97) -> 256; the word is then
    [256, 97, 98], whose two pairs tie at 1 and (97, 98) < (256, 97), so (97, 98) -> 257.
    """
    raise NotImplementedError("Exercise 1.4: train BPE merges on word counts")
