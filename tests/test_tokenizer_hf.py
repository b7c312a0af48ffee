"""tokenizer.json interchange, checked against the outside oracle: Hugging Face ``tokenizers``."""

import json

import pytest
import regex
from hypothesis import given, settings
from hypothesis import strategies as st

from tinyllm.tokenizer import Tokenizer

hf = pytest.importorskip("tokenizers")

SPECIALS = ["<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
TRAINING_TEXT = (
    "First Citizen: Before we proceed any further, hear me speak. You are all resolved rather "
    "to die than to famish? 2024 numbers 1234567, café déjà vu, 東京は晴れ 🙂🎉\n\t  it's they'll\r\n"
)
texts = st.lists(
    st.one_of(st.text(), st.sampled_from(SPECIALS + ["<|", "|>", "'S ", "  \n"])), max_size=8
).map("".join)

moderate = settings(max_examples=60, deadline=None)  # keeps the file well under a minute


@pytest.fixture(scope="module", params=["gpt2", "gpt4", "custom"])
def pair_from_tinyllm(request, tmp_path_factory):
    """A tinyllm-trained tokenizer and HF's reading of the tokenizer.json it saved."""
    pattern = regex.compile(r"\p{L}+|\p{N}") if request.param == "custom" else request.param
    tok = Tokenizer.train(TRAINING_TEXT * 20, vocab_size=330, pattern=pattern)
    path = tok.save(tmp_path_factory.mktemp(request.param))
    return tok, hf.Tokenizer.from_file(str(path))


@pytest.fixture(scope="module")
def pair_from_hf(tmp_path_factory):
    """A byte-level BPE trained by HF ``tokenizers`` itself, and tinyllm's reading of its file."""
    from tokenizers import decoders, models, pre_tokenizers, trainers

    hf_tok = hf.Tokenizer(models.BPE())
    hf_tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf_tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=SPECIALS,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    hf_tok.train_from_iterator([TRAINING_TEXT] * 20, trainer)
    path = tmp_path_factory.mktemp("hf") / "tokenizer.json"
    hf_tok.save(str(path))
    return Tokenizer.load(path), hf_tok


@moderate
@given(text=texts)
def test_tinyllm_file_gives_the_same_ids_in_hf(pair_from_tinyllm, text):
    tok, hf_tok = pair_from_tinyllm
    ids = tok.encode(text)
    assert hf_tok.encode(text).ids == ids
    assert hf_tok.decode(ids, skip_special_tokens=False) == tok.decode(ids)
    assert hf_tok.decode(ids) == tok.decode(ids, skip_special_tokens=True)  # HF's default


@moderate
@given(text=texts)
def test_hf_trained_file_gives_the_same_ids_in_tinyllm(pair_from_hf, text):
    tok, hf_tok = pair_from_hf
    ids = hf_tok.encode(text).ids
    assert tok.encode(text) == ids
    assert tok.decode(ids) == hf_tok.decode(ids, skip_special_tokens=False) == text
    assert tok.decode(ids, skip_special_tokens=True) == hf_tok.decode(ids, skip_special_tokens=True)


def hf_json_merges(hf_tok):
    return json.loads(hf_tok.to_str())["model"]["merges"]


def test_hf_trained_file_is_read_in_full(pair_from_hf):
    tok, hf_tok = pair_from_hf
    assert tok.vocab_size == hf_tok.get_vocab_size()
    assert len(tok.merges) == len(hf_json_merges(hf_tok))
    assert tok.special_tokens == {text: hf_tok.token_to_id(text) for text in SPECIALS}
    assert tok.pattern_name == "gpt2"  # HF's ByteLevel pre-tokenizer applies the GPT-2 regex


def test_save_then_load_is_the_same_tokenizer(pair_from_tinyllm, tmp_path):
    tok, _ = pair_from_tinyllm
    again = Tokenizer.load(tok.save(tmp_path))
    assert (again.vocab, again.merges, again.special_tokens, again.pattern) == (
        tok.vocab,
        tok.merges,
        tok.special_tokens,
        tok.pattern,
    )
    assert again.fingerprint == tok.fingerprint


def test_merges_written_as_strings_read_the_same(pair_from_hf, tmp_path):
    """Older files (GPT-2's) write each merge as one "left right" string instead of a pair."""
    tok, hf_tok = pair_from_hf
    data = json.loads(hf_tok.to_str())
    data["model"]["merges"] = [" ".join(pair) for pair in data["model"]["merges"]]
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    assert Tokenizer.load(path).merges == tok.merges
    assert hf.Tokenizer.from_file(str(path)).encode(TRAINING_TEXT).ids == tok.encode(TRAINING_TEXT)


def test_ignore_merges_matches_hf(pair_from_hf, tmp_path):
    """Llama 3-style files set ignore_merges: a piece that is a whole token is taken as is."""
    _, hf_tok = pair_from_hf
    data = json.loads(hf_tok.to_str())
    data["model"]["ignore_merges"] = True
    data["model"]["vocab"]["Ġfurther,"] = len(data["model"]["vocab"])  # a token no merge makes
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    tok, hf_ignoring = Tokenizer.load(path), hf.Tokenizer.from_file(str(path))
    text = TRAINING_TEXT + " further, further,"
    assert tok.ignore_merges and tok.encode(text) == hf_ignoring.encode(text).ids


# --- corrupt or unsupported files: each a clear error -------------------------------------------
def hf_json(pair_from_hf):
    return json.loads(pair_from_hf[1].to_str())


def breakers():
    def drop_model(d):
        del d["model"]

    def unknown_merge_token(d):
        d["model"]["merges"][0] = ["zzz_not_a_token", "a"]

    def drop_byte(d):
        del d["model"]["vocab"]["a"]

    def bad_token_text(d):
        d["model"]["vocab"]["has space"] = 99999

    def wordpiece(d):
        d["model"]["type"] = "WordPiece"

    def lowercase(d):
        d["normalizer"] = {"type": "Lowercase"}

    def whitespace_split(d):
        d["pre_tokenizer"] = {"type": "Whitespace"}

    def three_part_merge(d):
        d["model"]["merges"][0] = "a b c"

    def vocab_not_a_dict(d):
        d["model"]["vocab"] = ["a", "b"]

    return {
        drop_model: "with a 'model' entry",
        unknown_merge_token: "not GPT-2 byte-level text|not in the vocabulary",
        drop_byte: "lacks 1 of the 256 single bytes",
        bad_token_text: "' ' is not one of the 256 byte characters",
        wordpiece: "model type 'WordPiece' is not supported",
        lowercase: "normalizer 'Lowercase' is not supported",
        whitespace_split: "pre_tokenizer .* is not supported",
        three_part_merge: "is not a pair of tokens",
        vocab_not_a_dict: "expected BPE with vocab and merges",
    }


@pytest.mark.parametrize(
    "breaker, message", list(breakers().items()), ids=lambda x: getattr(x, "__name__", "")
)
def test_corrupt_tokenizer_json_is_a_clear_error(pair_from_hf, tmp_path, breaker, message):
    data = hf_json(pair_from_hf)
    breaker(data)
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(
        ValueError,
        match=f"cannot read .*tokenizer.json as a byte-level BPE tokenizer.json: .*({message})",
    ):
        Tokenizer.load(path)


def test_truncated_and_missing_files(tmp_path):
    path = tmp_path / "tokenizer.json"
    path.write_text('{"model": {"type": "BPE", "vocab": {', encoding="utf-8")
    with pytest.raises(ValueError, match="cannot read .* Expecting"):
        Tokenizer.load(path)
    with pytest.raises(FileNotFoundError, match="no tokenizer file at"):
        Tokenizer.load(tmp_path / "elsewhere")
