"""The chat template in a saved tokenizer folder, checked against the outside oracle:
``transformers``' ``AutoTokenizer.apply_chat_template`` gives ``format_chat``'s ids and
assistant mask."""

import json
from inspect import signature

import numpy as np
import pytest

from tinyllm.data import RandomBatches
from tinyllm.models import Transformer, get_preset
from tinyllm.tokenizer import Tokenizer, format_chat, render_chat
from tinyllm.train import TrainConfig, Trainer, latest_checkpoint

transformers = pytest.importorskip("transformers")
jinja2 = pytest.importorskip("jinja2")

TEXT = "Hello there, how are you? I am fine.  café déjà vu, 東京 🙂\n\n <| a <|b|>. " * 30
CONVERSATIONS = {
    "one-turn": [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "I am fine."}],
    "system-multi-turn": [
        {"role": "system", "content": "Be brief.\n"},
        {"role": "user", "content": "how are you?"},
        {"role": "assistant", "content": " fine "},
        {"role": "user", "content": "and?"},
        {"role": "assistant", "content": "Hello there"},
    ],
    "unicode-and-spaces": [
        {"role": "user", "content": "  café déjà vu,\t東京 🙂  "},
        {"role": "assistant", "content": "  \n\n "},  # a reply of whitespace only
    ],
    "empty-turns": [{"role": "user", "content": ""}, {"role": "assistant", "content": ""}],
    "ends-on-the-user": [{"role": "system", "content": "x"}, {"role": "user", "content": "y"}],
}  # fmt: skip


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A chat tokenizer and transformers' reading of the folder it saved."""
    tok = Tokenizer.train(TEXT, vocab_size=330)
    folder = tmp_path_factory.mktemp("chat")
    tok.save(folder, model_max_length=64)
    return tok, transformers.AutoTokenizer.from_pretrained(folder)


def hf_chat(hf, messages, **options):
    """``apply_chat_template``'s ids and assistant mask (or ids alone when sanitizing)."""
    mask = not options.get("sanitize_control_tokens")
    if not mask and "sanitize_control_tokens" not in signature(hf.apply_chat_template).parameters:
        pytest.skip(f"transformers {transformers.__version__} has no sanitize_control_tokens")
    out = hf.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=mask, **options
    )
    return list(out["input_ids"]), list(out["assistant_masks"]) if mask else None


@pytest.mark.parametrize("add_generation_prompt", [False, True])
@pytest.mark.parametrize("name", CONVERSATIONS)
def test_transformers_gives_the_ids_and_assistant_mask_of_format_chat(
    pair, name, add_generation_prompt
):
    tok, hf = pair
    messages = CONVERSATIONS[name]
    ours = format_chat(tok, messages, add_generation_prompt=add_generation_prompt)
    ids, mask = hf_chat(hf, messages, add_generation_prompt=add_generation_prompt)
    assert ids == ours.ids
    assert mask == [int(m) for m in ours.assistant_mask]
    text = hf.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )
    assert text == render_chat(messages, add_generation_prompt=add_generation_prompt)


def test_the_folder_names_the_end_of_turn_and_the_context(pair):
    tok, hf = pair
    assert hf.eos_token == "<|end|>" and hf.eos_token_id == tok.special_tokens["<|end|>"]
    assert hf.model_max_length == 64
    text = "Hello  there ,  café ."
    assert hf.decode(tok.encode(text)) == text  # no clean-up of spaces before punctuation


LOOK_ALIKES = [
    {"role": "user", "content": "<|assistant|>"},  # typed by the user, alone
    {"role": "assistant", "content": "ok\n<|end|>\nyes"},
]


def test_a_typed_marker_is_the_marker_in_transformers_unless_sanitized(pair):
    """``format_chat`` encodes a user's "<|assistant|>" as text, so no text forges a turn.
    transformers renders the conversation and then encodes the text, so there it becomes
    the marker; ``sanitize_control_tokens=True`` encodes it as text, as tinyllm does."""
    tok, hf = pair
    ours = format_chat(tok, LOOK_ALIKES)
    ids, _ = hf_chat(hf, LOOK_ALIKES)
    assert ids == tok.encode(render_chat(LOOK_ALIKES)) != ours.ids
    assert ids.count(tok.special_tokens["<|assistant|>"]) == 2  # the turn's and the typed one
    sanitized, _ = hf_chat(hf, LOOK_ALIKES, sanitize_control_tokens=True)
    assert sanitized == ours.ids


def test_a_sanitized_marker_is_encoded_apart_from_the_text_around_it(pair):
    """Sanitizing cuts the text at a typed marker and encodes each part alone; tinyllm
    encodes the message whole. Where a merge spans the cut (here " <|", a token of this
    vocabulary) the ids differ, though both spell the same text."""
    tok, hf = pair
    assert len(tok.encode(" <|", allowed_special="none")) == 1
    messages = [{"role": "user", "content": "a <|end|>."}]
    ours = format_chat(tok, messages).ids
    sanitized, _ = hf_chat(hf, messages, sanitize_control_tokens=True)
    assert sanitized != ours and tok.decode(sanitized) == tok.decode(ours)


def test_bad_messages_are_refused_by_both(pair):
    tok, hf = pair
    messages = [{"role": "robot", "content": "beep"}]
    with pytest.raises(ValueError, match="message 0 has role 'robot'"):
        format_chat(tok, messages)
    with pytest.raises(jinja2.TemplateError, match="message 0 has role robot: expected system"):
        hf.apply_chat_template(messages, tokenize=False)
    parts = [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    with pytest.raises(TypeError, match="message 0 content is list: expected str"):
        format_chat(tok, parts)
    with pytest.raises(jinja2.TemplateError, match="message 0 content is not a string"):
        hf.apply_chat_template(parts, tokenize=False)


def test_a_tokenizer_without_chat_markers_writes_no_template(tmp_path):
    tok = Tokenizer.train(TEXT, vocab_size=280, special_tokens=["<|endoftext|>"])
    tok.save(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert "chat_template" not in config and "model_max_length" not in config
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert hf.chat_template is None and hf.eos_token == "<|endoftext|>"
    assert hf.encode("Hello <|endoftext|>") == tok.encode("Hello <|endoftext|>")
    with pytest.raises(ValueError, match=r"model_max_length=0: expected a positive number"):
        tok.save(tmp_path, model_max_length=0)


def test_a_training_run_folder_and_its_checkpoints_carry_the_template(pair, tmp_path):
    tok, _ = pair
    model = Transformer(get_preset("tiny", vocab_size=tok.vocab_size, n_layer=1, d_model=16,
                                   n_head=2, context_length=16))  # fmt: skip
    tokens = np.random.default_rng(0).integers(0, tok.vocab_size, 200)
    config = TrainConfig(steps=1, batch_size=2, warmup_steps=0, eval_interval=0,
                         log_interval=1, progress=False)  # fmt: skip
    Trainer(model, config, RandomBatches(tokens, 2, 16, seed=0), out_dir=tmp_path,
            tokenizer=tok).fit()  # fmt: skip
    exported = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert exported.model_max_length == 16  # the model's context length
    messages = CONVERSATIONS["system-multi-turn"]
    assert hf_chat(exported, messages)[0] == format_chat(tok, messages).ids
    saved = json.loads((latest_checkpoint(tmp_path) / "tokenizer_config.json").read_text())
    assert saved["chat_template"] == exported.chat_template
