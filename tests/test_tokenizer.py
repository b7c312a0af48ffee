"""The BPE tokenizer: round trips, special tokens, clear errors, and two independent oracles:
training against BPE as defined (recount every pair, merge the most frequent), encoding
against Hugging Face ``tokenizers`` given the same vocabulary and merges."""

import random
from collections import Counter

import pytest
import regex
from hypothesis import given, settings
from hypothesis import strategies as st

from tinyllm.tokenizer import Tokenizer, train_incremental, train_naive
from tinyllm.tokenizer import tokenizer as tokenizer_module

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


# --- training against BPE by its definition ----------------------------------------------------
def join_pair(pieces, pair):
    """``pieces`` with each occurrence of ``pair`` joined into one piece, leftmost first."""
    joined, i = [], 0
    while i < len(pieces):
        if tuple(pieces[i : i + 2]) == pair:
            joined.append(pair[0] + pair[1])
            i += 2
        else:
            joined.append(pieces[i])
            i += 1
    return joined


def bpe_by_definition(word_counts, vocab_size):
    """BPE training written straight from its definition, as an oracle: the corpus is a list
    of words, each a list of byte strings; count every adjacent pair in it (a word seen n
    times counts n times), join the most frequent pair everywhere, repeat until the
    vocabulary is full or no pair is left. A tie goes to the pair whose ids are smallest;
    a joined token spelled like one already known keeps that token's id.

    Returns the merges as ``[((left id, right id), new id), ...]`` in the order learned, and
    the vocabulary id -> bytes.
    """
    ids = {bytes([byte]): byte for byte in range(256)}
    corpus = [([bytes([byte]) for byte in word], count) for word, count in word_counts.items()]
    merges = []
    while len(ids) < vocab_size:
        pair_counts = Counter()
        for pieces, count in corpus:
            for pair in zip(pieces, pieces[1:]):
                pair_counts[pair] += count
        if not pair_counts:
            break
        best = max(pair_counts, key=lambda p: (pair_counts[p], -ids[p[0]], -ids[p[1]]))
        ids.setdefault(best[0] + best[1], len(ids))
        merges.append(((ids[best[0]], ids[best[1]]), ids[best[0] + best[1]]))
        corpus = [(join_pair(pieces, best), count) for pieces, count in corpus]
    return merges, {i: token for token, i in ids.items()}


def test_the_definition_oracle_on_a_worked_example():
    # "aaab": (a, a) occurs twice, the most; then "aa"+"a" and "a"+"b" tie at one each.
    merges, vocab = bpe_by_definition({b"aaab": 1}, 258)
    assert merges == [((97, 97), 256), ((97, 98), 257)] and vocab[256] == b"aa"
    merges, vocab = bpe_by_definition({b"ab": 1, b"bc": 3}, 300)  # counts weigh; then none left
    assert merges == [((98, 99), 256), ((97, 98), 257)] and len(vocab) == 258


@moderate
@given(
    words=st.dictionaries(st.binary(min_size=1, max_size=8), st.integers(1, 20), max_size=30),
    n_new=st.integers(0, 40),
)
def test_both_trainers_learn_the_merges_of_the_definition(words, n_new):
    expected_merges, expected_vocab = bpe_by_definition(words, 256 + n_new)
    for trainer in (train_incremental, train_naive):
        merges, vocab = trainer(words, 256 + n_new)
        assert list(merges.items()) == expected_merges, trainer.__name__
        assert vocab == expected_vocab, trainer.__name__


@pytest.fixture(scope="module")
def text_by_definition():
    """The merges BPE's definition learns from ``TRAINING_TEXT`` split by the GPT-2 regex."""
    tok = Tokenizer.train("", vocab_size=261)  # only to read the pattern it splits with
    pieces = regex.findall(tok.pattern, TRAINING_TEXT)
    assert "".join(pieces) == TRAINING_TEXT  # the GPT-2 pattern leaves no gaps
    word_counts = Counter(piece.encode("utf-8") for piece in pieces)
    return bpe_by_definition(word_counts, 420 - len(SPECIALS))


@pytest.mark.parametrize("algorithm", ["incremental", "naive"])
def test_training_on_text_learns_the_merges_of_the_definition(text_by_definition, algorithm):
    tok = Tokenizer.train(TRAINING_TEXT, vocab_size=420, algorithm=algorithm)
    expected_merges, expected_vocab = text_by_definition
    assert list(tok.merges.items()) == expected_merges
    assert tok.vocab == expected_vocab


# --- encoding against Hugging Face tokenizers ----------------------------------------------------
def gpt2_byte_characters():
    """GPT-2's published map from each byte to a printable character (tokenizer.json's
    spelling of byte-level tokens): printable Latin-1 bytes stand for themselves, the other
    68 take the characters from U+0100 on, in byte order."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    others = [byte for byte in range(256) if byte not in printable]
    return {
        **{byte: chr(byte) for byte in printable},
        **{byte: chr(256 + n) for n, byte in enumerate(others)},
    }


def hf_tokenizer_with_the_same_merges(tok):
    """A Hugging Face tokenizer built from ``tok``'s vocabulary, merges, split regex and
    special tokens alone: HF's own pre-tokenizer, BPE model and special-token handling."""
    hf = pytest.importorskip("tokenizers")
    char = gpt2_byte_characters()

    def spell(token):
        return "".join(char[byte] for byte in token)

    vocab = {spell(token): i for i, token in tok.vocab.items()}
    merges = [(spell(tok.vocab[left]), spell(tok.vocab[right])) for left, right in tok.merges]
    hf_tok = hf.Tokenizer(hf.models.BPE(vocab=vocab, merges=merges))
    hf_tok.pre_tokenizer = hf.pre_tokenizers.Sequence(
        [
            hf.pre_tokenizers.Split(hf.Regex(tok.pattern), behavior="isolated"),
            hf.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    hf_tok.decoder = hf.decoders.ByteLevel()
    specials = sorted(tok.special_tokens, key=tok.special_tokens.get)
    hf_tok.add_special_tokens(specials)
    assert {text: hf_tok.token_to_id(text) for text in specials} == tok.special_tokens
    return hf_tok


@pytest.fixture(scope="module")
def tok_and_hf(tok):
    return tok, hf_tokenizer_with_the_same_merges(tok)


@moderate
@given(text=texts)
def test_encoding_gives_the_ids_hf_tokenizers_gives_with_the_same_merges(tok_and_hf, text):
    tok, hf_tok = tok_and_hf
    ids = tok.encode(text)
    assert ids == hf_tok.encode(text).ids
    assert tok.decode(ids) == hf_tok.decode(ids, skip_special_tokens=False)


def test_encoding_a_whole_text_gives_the_ids_hf_tokenizers_gives(tok_and_hf):
    tok, hf_tok = tok_and_hf
    assert tok.encode(TRAINING_TEXT) == hf_tok.encode(TRAINING_TEXT).ids


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
