"""The BPE tokenizer: round trips, special tokens, the two trainers agreeing, clear errors."""

import random

import pytest
import regex
from hypothesis import given, settings
from hypothesis import strategies as st

from tinyllm.tokenizer import Tokenizer, encode_with_merges, train_incremental, train_naive
from tinyllm.tokenizer import tokenizer as tokenizer_module
from tinyllm.tokenizer.patterns import compile_pattern, split_text

SPECIALS = ["<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]


def make_training_text(n_words=3000, seed=0):
    """Seeded pseudo-text: words from syllables (ASCII, accented, CJK, emoji), numbers, punctuation."""
    rng = random.Random(seed)
    syllables = [
        "the",
        "qu",
        "ick",
        "fox",
        "do",
        "g",
        "s",
        "ing",
        "er",
        "mü",
        "ße",
        "dé",
        "jà",
        "東",
        "京",
        "🙂",
    ]
    words = []
    for _ in range(n_words):
        word = "".join(rng.choices(syllables, k=rng.randint(1, 4)))
        words.append(rng.choice([word, word.capitalize(), str(rng.randint(0, 99999)), word + "'s"]))
        words.append(rng.choice([" ", " ", " ", ", ", ". ", "!\n", "\t", "\r\n\n"]))
    return "".join(words)


TRAINING_TEXT = make_training_text()

moderate = settings(max_examples=60, deadline=None)  # keeps the file well under a minute


@pytest.fixture(scope="module", params=["gpt2", "gpt4"])
def tok(request):
    return Tokenizer.train(TRAINING_TEXT, vocab_size=400, pattern=request.param)


# Texts that stress byte-level encoding: any code point (hypothesis' text() includes emoji, CJK,
# control characters), plus fragments that look like special tokens.
look_alikes = st.sampled_from(
    SPECIALS + ["<|", "|>", "<|endoftext", "endoftext|>", "<||>", "<|end|"]
)
texts = st.lists(st.one_of(st.text(), look_alikes), max_size=8).map("".join)


@moderate
@given(text=texts)
def test_round_trip_any_string(tok, text):
    assert tok.decode(tok.encode(text)) == text
    assert tok.decode(tok.encode(text, allowed_special="none")) == text


@moderate
@given(text=texts)
def test_disabled_specials_are_plain_text(tok, text):
    ids = tok.encode(text, allowed_special="none")
    assert not set(ids) & set(tok.special_tokens.values())
    assert ids == tok.encode(text, allowed_special=set())  # an empty set means the same


def test_special_tokens_are_never_split_or_merged(tok):
    eot = tok.special_tokens["<|endoftext|>"]
    assert tok.encode("the dog<|endoftext|>The fox") == [
        *tok.encode("the dog"),
        eot,
        *tok.encode("The fox"),
    ]
    assert tok.encode("<|endoftext|><|endoftext|>") == [eot, eot]
    only_user = tok.encode("<|user|>hi<|end|>", allowed_special={"<|user|>"})
    assert only_user[0] == tok.special_tokens["<|user|>"]
    assert tok.special_tokens["<|end|>"] not in only_user
    assert tok.decode(only_user) == "<|user|>hi<|end|>"


def test_special_tokens_are_not_learned_from_text():
    text = "<|endoftext|>hello world " * 50
    tok = Tokenizer.train(text, vocab_size=300)
    learned = [token for i, token in tok.vocab.items() if i >= 256]
    assert learned, "training should have learned some merges"
    assert not any(b"endoftext" in token or b"<|" in token for token in learned)


def test_vocab_size_and_ids_are_contiguous(tok):
    assert tok.vocab_size == 400
    assert sorted([*tok.vocab, *tok.special_tokens.values()]) == list(range(400))
    assert len(set(tok.vocab.values())) == len(tok.vocab)  # no two ids spell the same bytes


def test_more_merges_means_fewer_tokens():
    counts = [
        len(Tokenizer.train(TRAINING_TEXT, vocab_size=n).encode(TRAINING_TEXT))
        for n in (261, 300, 400, 600)
    ]
    assert counts == sorted(counts, reverse=True) and counts[0] > counts[-1]
    assert counts[0] == len(TRAINING_TEXT.encode("utf-8"))  # no merges: one token per byte


@moderate
@given(
    words=st.dictionaries(st.binary(min_size=1, max_size=8), st.integers(1, 20), max_size=30),
    n_new=st.integers(0, 40),
)
def test_incremental_training_learns_the_naive_merges(words, n_new):
    assert train_incremental(words, 256 + n_new) == train_naive(words, 256 + n_new)


def test_trainers_agree_on_text():
    fast = Tokenizer.train(TRAINING_TEXT, vocab_size=420, algorithm="incremental")
    slow = Tokenizer.train(TRAINING_TEXT, vocab_size=420, algorithm="naive")
    assert fast.merges == slow.merges and fast.vocab == slow.vocab


def test_encoding_replays_the_merge_table_on_each_piece(tok):
    text = "the quick dogs, 東京 🙂"
    pieces = split_text(compile_pattern(tok.pattern_name), text)
    expected = [i for piece in pieces for i in encode_with_merges(list(piece.encode()), tok.merges)]
    assert tok.encode(text) == expected


def test_piece_cache_does_not_change_results(monkeypatch):
    tok = Tokenizer.train(TRAINING_TEXT, vocab_size=300)
    expected = tok.encode(TRAINING_TEXT)
    monkeypatch.setattr(tokenizer_module, "PIECE_CACHE_SIZE", 3)  # forces the cache to empty often
    fresh = Tokenizer(tok.vocab, tok.merges, special_tokens=tok.special_tokens)
    assert fresh.encode(TRAINING_TEXT) == expected
    assert len(fresh._piece_cache) <= 3


def test_encode_batch_matches_encode(tok):
    batch = ["hello<|endoftext|>", "", "東京 dogs"]
    assert tok.encode_batch(batch) == [tok.encode(text) for text in batch]


def test_custom_pattern_keeps_the_text_between_matches():
    words_only = regex.compile(r"\p{L}+")  # matches letters only: the rest must survive as gaps
    tok = Tokenizer.train(TRAINING_TEXT, vocab_size=300, pattern=words_only)
    assert tok.pattern_name == "custom"
    assert tok.decode(tok.encode(TRAINING_TEXT)) == TRAINING_TEXT


def test_decode_of_a_partial_character_uses_the_replacement_character(tok):
    ids = tok.encode("🙂", allowed_special="none")
    first_byte = [tok._byte_ids[b] for b in "🙂".encode()][:1]
    assert tok.decode_bytes(ids) == "🙂".encode()
    assert tok.decode(first_byte) == "\ufffd"


# --- clear errors ------------------------------------------------------------------------------
def test_vocab_size_below_bytes_plus_specials():
    with pytest.raises(
        ValueError, match=r"vocab_size=260 is too small: expected at least .* = 261"
    ):
        Tokenizer.train("abc", vocab_size=260)
    assert Tokenizer.train("abc", vocab_size=261).vocab_size == 261
    with pytest.raises(ValueError, match="= 256"):
        Tokenizer.train("abc", vocab_size=255, special_tokens=[])


def test_unknown_split_pattern_name():
    with pytest.raises(
        ValueError, match=r"unknown split pattern name 'gpt3': expected one of \['gpt2', 'gpt4'\]"
    ):
        Tokenizer.train("abc", vocab_size=300, pattern="gpt3")


@pytest.mark.parametrize("bad_id", [400, -1, 10**9])
def test_decode_rejects_ids_out_of_range(tok, bad_id):
    with pytest.raises(
        ValueError, match=rf"token id {bad_id} is out of range: expected an id in 0..399"
    ):
        tok.decode([1, 2, bad_id])


def test_other_bad_arguments(tok):
    with pytest.raises(ValueError, match=r"not special tokens of this tokenizer"):
        tok.encode("x", allowed_special={"<|pad|>"})
    with pytest.raises(ValueError, match=r"allowed_special='some'"):
        tok.encode("x", allowed_special="some")
    with pytest.raises(TypeError, match="encode expects a str, got bytes"):
        tok.encode(b"x")
    with pytest.raises(ValueError, match="unknown training algorithm 'fast'"):
        Tokenizer.train("abc", vocab_size=300, algorithm="fast")
