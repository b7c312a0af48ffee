"""Grading tests for exercises/ex01_tokenization.py (lesson 01: tokenization).

Answers come from small cases worked out by hand in the comments, or from the library's
trained tokenizer, so no stub or shortcut can pass.
"""

import random

import pytest

from tinyllm.data import load_corpus
from tinyllm.tokenizer import Tokenizer
from tinyllm.tokenizer.patterns import compile_pattern
from tinyllm.tokenizer.train import count_pretokens, train_incremental

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


@pytest.mark.exercise("1.4", points=2)
def test_train_bpe_small_cases(exercise):
    """train_bpe: merges worked out by hand"""
    ex = exercise(EX)
    merges, vocab = ex.train_bpe({b"aaab": 1}, 258)
    assert merges == {(97, 97): 256, (97, 98): 257}
    assert vocab == {**{i: bytes([i]) for i in range(256)}, 256: b"aa", 257: b"ab"}
    # low x5, lower x2, newest x6, widest x3: "es" and "st" both occur 9 times, the smaller
    # pair (101, 115) wins; then "es"+"t" 9 times; then "lo" and "ow" tie at 7, "lo" wins.
    words = {b"low": 5, b"lower": 2, b"newest": 6, b"widest": 3}
    merges, vocab = ex.train_bpe(words, 259)
    assert list(merges.items()) == [((101, 115), 256), ((256, 116), 257), ((108, 111), 258)]
    assert [vocab[i] for i in (256, 257, 258)] == [b"es", b"est", b"lo"]
    assert ex.train_bpe({b"ab": 1, b"cd": 5}, 257)[0] == {(99, 100): 256}  # counts weigh
    merges, vocab = ex.train_bpe({b"ab": 3}, 300)  # one pair to merge, then nothing left
    assert merges == {(97, 98): 256} and len(vocab) == 257


@pytest.mark.exercise("1.4", points=3)
def test_train_bpe_matches_the_library(exercise):
    """train_bpe: same merges and ids as tinyllm's trainer on Shakespeare"""
    ex = exercise(EX)
    text = load_corpus("tinyshakespeare")[:20_000]
    word_counts = count_pretokens(text, compile_pattern("gpt2"))
    merges, vocab = ex.train_bpe(word_counts, 320)
    expected_merges, expected_vocab = train_incremental(word_counts, 320)
    assert list(merges.items()) == list(expected_merges.items())  # same pairs, same order
    assert vocab == expected_vocab
    tok = Tokenizer.train(text, vocab_size=320, special_tokens=[])
    assert list(tok.merges.items()) == list(merges.items())
