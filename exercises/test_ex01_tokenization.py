"""Grading tests for exercises/ex01_tokenization.py (lesson 01: tokenization).

Answers come from small cases worked out by hand in the comments, or from the library's
trained tokenizer, so no stub or shortcut can pass.
"""

import random

import pytest

from tinyllm.tokenizer import Tokenizer

EX = "ex01_tokenization"


@pytest.mark.exercise("1.1", points=2)
def test_get_stats_counts_pairs(exercise):
    """get_stats: count adjacent pairs"""
    ex = exercise(EX)
    assert ex.get_stats([1, 2, 3, 1, 2]) == {(1, 2): 2, (2, 3): 1, (3, 1): 1}
    assert ex.get_stats([7, 7, 7]) == {(7, 7): 2}  # overlapping pairs all count
    assert ex.get_stats([5]) == {} and ex.get_stats([]) == {}


@pytest.mark.exercise("1.1", points=1)
def test_get_stats_accumulates_with_weights(exercise):
    """get_stats: add into counts, weighted by word frequency"""
    ex = exercise(EX)
    counts = ex.get_stats(list(b"low"), weight=5)  # "low" x5: lo 5, ow 5
    returned = ex.get_stats(list(b"lot"), counts, weight=2)  # "lot" x2: lo +2, ot 2
    assert returned is counts
    assert counts == {(108, 111): 7, (111, 119): 5, (111, 116): 2}


@pytest.mark.exercise("1.2", points=2)
def test_merge_replaces_pairs(exercise):
    """merge: replace each occurrence, leftmost first"""
    ex = exercise(EX)
    assert ex.merge([1, 2, 3, 1, 2], (1, 2), 4) == [4, 3, 4]
    assert ex.merge([5, 5, 5], (5, 5), 6) == [6, 5]
    assert ex.merge([5, 5, 5, 5], (5, 5), 6) == [6, 6]
    assert ex.merge([1, 3, 2], (1, 2), 9) == [1, 3, 2]  # not adjacent: nothing to merge
    ids = [1, 2, 1]
    ex.merge(ids, (1, 2), 3)
    assert ids == [1, 2, 1]  # the input list is left as it was


@pytest.mark.exercise("1.3", points=2)
def test_encode_with_a_small_table(exercise):
    """encode_with_merges: earliest-learned merge first"""
    ex = exercise(EX)
    merges = {(104, 105): 256, (256, 33): 257}  # "hi" -> 256, then "hi!" -> 257
    assert ex.encode_with_merges(list(b"hi! hi"), merges) == [257, 32, 256]
    # Order matters: with "bc" learned before "ab", "abc" becomes a + bc.
    assert ex.encode_with_merges(list(b"abc"), {(98, 99): 256, (97, 98): 257}) == [97, 256]
    assert ex.encode_with_merges(list(b"abc"), {(97, 98): 256, (98, 99): 257}) == [256, 99]
    assert ex.encode_with_merges([], merges) == []


@pytest.mark.exercise("1.3", points=3)
def test_encode_matches_a_trained_tokenizer(exercise):
    """encode_with_merges: same ids as tinyllm's trained Tokenizer"""
    ex = exercise(EX)
    rng = random.Random(1)
    words = ["the", "then", "there", "other", "hat", "that", "thistle", "athlete"]
    text = " ".join(rng.choice(words) for _ in range(2000))
    tok = Tokenizer.train(text, vocab_size=300, special_tokens=[])
    for word in ["the", " there", " athletes", " thethe", " xyz"]:
        assert ex.encode_with_merges(list(word.encode()), tok.merges) == tok.encode(word)
