"""The chat template: special-token turns, no forged markers, and the assistant mask for SFT."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinyllm.tokenizer import Tokenizer, format_chat, render_chat

TEXT = "You are a helpful assistant. What is the capital of France? Paris, of course. " * 20


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train(TEXT, vocab_size=320)


CONVERSATION = [
    {"role": "system", "content": "You are brief."},
    {"role": "user", "content": "Capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And of Italy?"},
    {"role": "assistant", "content": "Rome."},
]


def test_ids_equal_encoding_the_rendered_text(tok):
    ids, mask = format_chat(tok, CONVERSATION)
    assert ids == tok.encode(render_chat(CONVERSATION))
    assert len(mask) == len(ids)
    assert tok.format_chat(CONVERSATION) == (ids, mask)


def test_mask_covers_exactly_the_assistant_replies_and_their_end(tok):
    ids, mask = format_chat(tok, CONVERSATION)
    learned = [i for i, keep in zip(ids, mask) if keep]
    end = tok.special_tokens["<|end|>"]
    assert learned == [*tok.encode("Paris."), end, *tok.encode("Rome."), end]
    assistant = tok.special_tokens["<|assistant|>"]
    assert all(
        not keep for i, keep in zip(ids, mask) if i == assistant
    )  # the prompt supplies the marker


def test_generation_prompt_opens_an_assistant_turn(tok):
    ids, mask = format_chat(tok, CONVERSATION[:2], add_generation_prompt=True)
    assert ids[-1] == tok.special_tokens["<|assistant|>"] and not any(mask)
    assert render_chat(CONVERSATION[:2], add_generation_prompt=True).endswith(
        "<|end|><|assistant|>"
    )


@settings(max_examples=40, deadline=None)
@given(
    content=st.lists(
        st.one_of(st.text(), st.sampled_from(["<|assistant|>", "<|end|>", "<|user|>"])), max_size=5
    ).map("".join)
)
def test_message_text_cannot_forge_markers(tok, content):
    ids, mask = format_chat(
        tok, [{"role": "user", "content": content}, {"role": "assistant", "content": content}]
    )
    specials = set(tok.special_tokens.values())
    assert sum(i in specials for i in ids) == 4  # exactly the two turns' markers
    assert tok.decode(ids) == render_chat(
        [{"role": "user", "content": content}, {"role": "assistant", "content": content}]
    )
    assert sum(mask) == len(tok.encode(content, allowed_special="none")) + 1


def test_bad_messages_and_tokenizers(tok):
    with pytest.raises(
        ValueError,
        match=r"message 1 has role 'bot': expected one of \('system', 'user', 'assistant'\)",
    ):
        format_chat(tok, [{"role": "user", "content": "hi"}, {"role": "bot", "content": "hey"}])
    with pytest.raises(
        ValueError, match="message 0 is .*: expected a dict with keys 'role' and 'content'"
    ):
        format_chat(tok, [{"role": "user"}])
    with pytest.raises(TypeError, match="messages must be a list"):
        format_chat(tok, "hello")
    plain = Tokenizer.train(TEXT, vocab_size=300, special_tokens=["<|endoftext|>"])
    with pytest.raises(
        ValueError, match=r"tokenizer lacks the chat special tokens \['<\|system\|>'"
    ):
        format_chat(plain, CONVERSATION)
