"""`tinyllm serve`: the official openai client gets what `generate` gives each prompt alone -
streamed or not, n samples, stop strings, 16 clients at once; 64 clients with faults and
disconnects leave every cache block free; bad requests get OpenAI's 4xx error bodies; the
chat page streams a reply in headless Chromium. The request checks and the reply text are
also tested without a server."""

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from tinyllm import no_grad
from tinyllm.cli import main
from tinyllm.data import CharVocab
from tinyllm.infer import generate
from tinyllm.infer.request import Output
from tinyllm.models import ModelConfig, Transformer
from tinyllm.optim import AdamW
from tinyllm.serve.protocol import APIError, ModelCard, parse_chat, parse_completion
from tinyllm.serve.replies import Reply
from tinyllm.serve.responses import sse
from tinyllm.tokenizer import Tokenizer, format_chat

ROOT = Path(__file__).resolve().parents[1]
PAIRS = [
    ("Hi", "Hello! How are you?"),
    ("How are you?", "I am fine, thank you."),
    ("Who are you?", "I am a tiny model."),
    ("Tell me a story.", "Once upon a time, a small model learned to talk."),
]
QUESTIONS = [q for q, _ in PAIRS] + ["What?", "Hi there", "Who?", "A story, please."]
CHROMIUM = Path(shutil.which("chromium") or "/usr/bin/chromium")  # Debian's chromium
CHROMEDRIVER = Path(shutil.which("chromedriver") or "/usr/bin/chromedriver")  # chromium-driver
BROWSER_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip
SECONDS = 60  # no request, stream or wait in these tests takes longer


# --- a small model that answers the four questions ----------------------------------------------
@pytest.fixture(scope="module")
def trained():
    """A BPE tokenizer with the chat tokens and a 2-layer model trained for a few seconds on
    four conversations: it replies in words and ends its turn, so texts and stops are real."""
    text = " ".join(q + " " + a for q, a in PAIRS) * 10
    tokenizer = Tokenizer.train(text, vocab_size=320)
    ids = []
    for question, answer in PAIRS:
        turns = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        ids += format_chat(tokenizer, turns).ids
    ids = np.array(ids * 50)
    config = ModelConfig(
        vocab_size=tokenizer.vocab_size, context_length=128, d_model=32, n_layer=2, n_head=4
    )
    model = Transformer(config, seed=0)
    optimizer, rng, T = AdamW(model, lr=1e-2), np.random.default_rng(0), 32
    for _ in range(80):
        starts = rng.integers(0, len(ids) - T - 1, 8)
        x = np.stack([ids[s : s + T] for s in starts])  # (8, T)
        y = np.stack([ids[s + 1 : s + T + 1] for s in starts])  # (8, T)
        _, loss = model(x, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model, tokenizer


def chat_prompt(tokenizer, question):
    return format_chat(
        tokenizer, [{"role": "user", "content": question}], add_generation_prompt=True
    ).ids


def alone(model, tokenizer, prompt, max_tokens, end_ids, *, temperature=0.0, seed=0, skip=True):
    """What ``generate`` gives ``prompt`` by itself: (text without the end token, tokens);
    ``skip`` leaves the special tokens out of the text, as the server does by default."""
    rows = generate(
        model,
        [prompt],
        max_tokens,
        temperature=temperature,
        stop_token_ids=list(end_ids),
        seed=seed,
    )
    new = rows[0][len(prompt) :].tolist()
    shown = new[:-1] if new and new[-1] in end_ids else new
    return tokenizer.decode(shown, skip_special_tokens=skip), len(new)


# --- a server on a free loopback port, in this process ------------------------------------------
@contextlib.contextmanager
def serving(app):
    """Run ``app`` with uvicorn on a thread; yields its base URL; stops it afterwards."""
    uvicorn = pytest.importorskip("uvicorn")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + SECONDS
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(SECONDS)
        sock.close()


@pytest.fixture
def app(trained):
    pytest.importorskip("fastapi")
    from tinyllm.serve.app import create_app

    model, tokenizer = trained
    # 40 blocks of 8 positions: 2.5 full contexts for up to 12 sequences - preemption happens
    return create_app(model, tokenizer, name="tiny", max_batch=12, num_blocks=40, block_size=8)


@pytest.fixture
def url(app):
    with serving(app) as base:
        yield base


@pytest.fixture
def client(url):
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=SECONDS)


@pytest.fixture
def http(url):
    httpx = pytest.importorskip("httpx")
    with httpx.Client(base_url=url, timeout=SECONDS) as session:
        yield session


def wait_until_idle(app):
    """Wait for the engine to finish (cancelled requests end at its next step)."""
    engine, deadline = app.state.engine, time.monotonic() + SECONDS
    while engine.has_work() or engine.requests:
        assert time.monotonic() < deadline, "the engine is still busy"
        time.sleep(0.02)


# --- the openai client ---------------------------------------------------------------------------
def test_a_completion_is_what_generate_gives_the_prompt(trained, app, client):
    model, tokenizer = trained
    card = app.state.model_card
    prompt = "How are you? I am"
    result = client.completions.create(model="tiny", prompt=prompt, max_tokens=20, temperature=0)
    text, tokens = alone(model, tokenizer, tokenizer.encode(prompt), 20, card.end_ids)
    (choice,) = result.choices
    assert choice.text == text and choice.index == 0
    assert choice.finish_reason == ("length" if tokens == 20 else "stop")
    prompt_tokens = len(tokenizer.encode(prompt))
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (prompt_tokens, tokens)
    assert result.usage.total_tokens == prompt_tokens + tokens
    assert result.object == "text_completion" and result.model == "tiny"
    models = client.models.list()
    assert [m.id for m in models.data] == ["tiny"]


def test_a_chat_completion_streamed_or_not_is_the_reply_generate_gives(trained, app, client):
    model, tokenizer = trained
    end_ids = app.state.model_card.chat_end_ids()
    messages = [{"role": "user", "content": "Who are you?"}]
    prompt = chat_prompt(tokenizer, "Who are you?")
    text, tokens = alone(model, tokenizer, prompt, 128 - len(prompt), end_ids)
    assert text.startswith("I am")  # the model learned its four replies
    whole = client.chat.completions.create(model="tiny", messages=messages, temperature=0)
    (choice,) = whole.choices
    assert (choice.message.role, choice.message.content) == ("assistant", text)
    assert choice.finish_reason == "stop"  # it closed its turn: <|end|> is not in the text
    assert (whole.usage.prompt_tokens, whole.usage.completion_tokens) == (len(prompt), tokens)

    chunks = list(
        client.chat.completions.create(
            model="tiny", messages=messages, temperature=0, stream=True,
            stream_options={"include_usage": True},
        )
    )  # fmt: skip
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert "".join(pieces) == text and len([p for p in pieces if p]) > 1  # streamed in pieces
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == tokens
    assert {c.object for c in chunks} == {"chat.completion.chunk"} and len(
        {c.id for c in chunks}
    ) == 1


@pytest.mark.parametrize("stream", [False, True])
def test_a_completion_leaves_special_tokens_out_unless_asked_for_them(trained, app, client, stream):
    model, tokenizer = trained
    prompt = chat_prompt(tokenizer, "Who are you?")  # a completion does not stop at <|end|>
    end_ids = app.state.model_card.end_ids
    raw, _ = alone(model, tokenizer, prompt, 24, end_ids, skip=False)
    shown, _ = alone(model, tokenizer, prompt, 24, end_ids)
    assert "<|end|>" in raw  # the model closed its turn and went on
    texts = []
    for skip in (None, False):
        extra = {} if skip is None else {"skip_special_tokens": skip}
        request = dict(model="tiny", prompt=prompt, max_tokens=24, temperature=0, extra_body=extra)
        if stream:
            chunks = client.completions.create(**request, stream=True)
            texts.append("".join(c.choices[0].text for c in chunks))
        else:
            texts.append(client.completions.create(**request).choices[0].text)
    assert texts == [shown, raw] and "<|" not in shown


def model_logprobs(model, prompt, new):
    """log_softmax (float64) of the model's logits at each new token's step, from one plain
    forward of the prompt and the tokens (no cache): (len(new), V)."""
    with no_grad():
        logits = model(np.array([prompt + new]))[0].numpy()[0].astype(np.float64)
    steps = logits[len(prompt) - 1 : len(prompt) - 1 + len(new)]
    shifted = steps - steps.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


@pytest.mark.parametrize("stream", [False, True])
def test_logprobs_are_the_model_s_own_at_each_step(trained, app, client, stream):
    """A completion's logprobs (OpenAI's legacy form, up to 5 alternatives) and a chat
    reply's (logprobs with top_logprobs): each token's log-probability and the likeliest
    tokens at its step are those of one plain forward of the prompt and the reply - the
    engine's paged-cache decoding checked against the model run whole. Streamed, the chunks'
    pieces add up to the whole."""
    model, tokenizer = trained
    prompt = chat_prompt(tokenizer, "Who are you?")

    def joined(parts, key):  # the lists of every chunk, one after the other
        return [item for part in parts for item in getattr(part, key)]

    card = app.state.model_card
    request = dict(model="tiny", prompt=prompt, max_tokens=12, temperature=0, logprobs=3)
    if stream:
        parts = [c.choices[0].logprobs for c in client.completions.create(**request, stream=True)]
        tokens, logps = joined(parts, "tokens"), joined(parts, "token_logprobs")
        top, offsets = joined(parts, "top_logprobs"), joined(parts, "text_offset")
    else:
        got = client.completions.create(**request).choices[0].logprobs
        tokens, logps, top, offsets = (
            got.tokens,
            got.token_logprobs,
            got.top_logprobs,
            got.text_offset,
        )
    rows = generate(model, [prompt], 12, temperature=0, stop_token_ids=list(card.end_ids))
    new = rows[0][len(prompt) :].tolist()
    expected = model_logprobs(model, prompt, new)
    assert tokens == [tokenizer.decode([t]) for t in new]
    np.testing.assert_allclose(logps, expected[np.arange(len(new)), new], rtol=1e-4, atol=1e-5)
    for step, alternatives in enumerate(top):
        best = np.argsort(-expected[step])[:3]
        assert {tokenizer.decode([t]) for t in best} <= set(alternatives)
        np.testing.assert_allclose(
            [alternatives[tokenizer.decode([t])] for t in best], expected[step][best], rtol=1e-4
        )
    assert offsets == [
        len(tokenizer.decode(new[:i], skip_special_tokens=True)) for i in range(len(new))
    ]

    messages = [{"role": "user", "content": "Who are you?"}]
    request = dict(model="tiny", messages=messages, temperature=0, logprobs=True, top_logprobs=2)
    if stream:
        chunks = client.chat.completions.create(**request, stream=True)
        content = [e for c in chunks if c.choices and c.choices[0].logprobs
                   for e in c.choices[0].logprobs.content]  # fmt: skip
    else:
        content = client.chat.completions.create(**request).choices[0].logprobs.content
    end_ids = card.chat_end_ids()
    rows = generate(model, [prompt], 128 - len(prompt), temperature=0, stop_token_ids=list(end_ids))
    new = rows[0][len(prompt) :].tolist()
    assert new[-1] in end_ids  # the reply closed its turn: the end token has no entry
    shown = new[:-1]
    expected = model_logprobs(model, prompt, shown)
    assert [e.token for e in content] == [tokenizer.decode([t]) for t in shown]
    assert [e.bytes for e in content] == [list(tokenizer.decode_bytes([t])) for t in shown]
    np.testing.assert_allclose(
        [e.logprob for e in content], expected[np.arange(len(shown)), shown], rtol=1e-4, atol=1e-5
    )
    for step, entry in enumerate(content):
        best = np.argsort(-expected[step])[:2]
        assert [t.token for t in entry.top_logprobs] == [tokenizer.decode([t]) for t in best]


@pytest.mark.parametrize("stream", [False, True])
def test_echo_scores_the_prompt_as_evaluation_harnesses_ask(trained, app, client, stream):
    """lm-evaluation-harness scores a continuation with echo=true, logprobs=1 and max_tokens=1
    against an OpenAI-style server: the text begins with the prompt, and every prompt token
    after the first has its log-probability (the first: None) - the model's own, from one
    plain forward; the same again when the prompt's blocks could be reused from the cache."""
    model, tokenizer = trained
    text = "How are you? I am fine. Who are you? I am a small model."
    prompt = tokenizer.encode(text)
    assert len(prompt) > 2 * 8  # full blocks of 8, which a second request could reuse
    request = dict(model="tiny", prompt=text, max_tokens=1, temperature=0, logprobs=1, echo=True)

    def ask():  # (text, logprobs); a stream's chunks joined
        if not stream:
            got = client.completions.create(**request).choices[0]
            return got.text, got.logprobs
        chunks = [c.choices[0] for c in client.completions.create(**request, stream=True)]
        lists = {key: [x for c in chunks for x in getattr(c.logprobs, key)]
                 for key in ("tokens", "token_logprobs", "top_logprobs", "text_offset")}  # fmt: skip
        return "".join(c.text for c in chunks), SimpleNamespace(**lists)

    (first_text, got), (again_text, again) = ask(), ask()
    assert first_text.startswith(text)  # (and the new token, unless it is a special one)
    new = generate(model, [prompt], 1, temperature=0)[0].tolist()  # the prompt, one more token
    expected = model_logprobs(model, prompt[:1], new[1:])  # every token after the first
    assert got.tokens == [tokenizer.decode([t]) for t in new]
    assert got.token_logprobs[0] is None and got.top_logprobs[0] is None
    np.testing.assert_allclose(
        got.token_logprobs[1:], expected[np.arange(len(new) - 1), new[1:]], rtol=1e-4, atol=1e-5
    )
    for step, alternatives in enumerate(got.top_logprobs[1:]):  # the likeliest, and the token
        best = tokenizer.decode([int(np.argmax(expected[step]))])
        assert best in alternatives and tokenizer.decode([new[step + 1]]) in alternatives
    assert got.text_offset == [len(tokenizer.decode(new[:i])) for i in range(len(new))]
    assert (again_text, again.token_logprobs) == (first_text, got.token_logprobs)
    request["max_tokens"] = 0  # the legacy API's way: the prompt scored, nothing generated
    scored_text, scored = ask()
    assert scored_text == text and scored.tokens == got.tokens[:-1]
    assert scored.token_logprobs == got.token_logprobs[:-1]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("skip", [True, False])
def test_text_offsets_count_the_characters_of_the_reply_s_text(trained, app, client, stream, skip):
    """A completion's text_offset says where each token's text begins in the reply's text:
    a character of several bytes cut across byte tokens counts once, and a special token the
    text leaves out counts nothing (shown, it counts as its text) - not the lengths of the
    tokens' own texts, where part of a character shows as U+FFFD."""
    _, tokenizer = trained
    prompt = tokenizer.encode("héllo 日本 <|end|> wörld")
    shown = [t for t in prompt if not skip or t not in tokenizer.special_tokens.values()]
    request = dict(model="tiny", prompt=prompt, max_tokens=0, logprobs=0, echo=True,
                   extra_body={"skip_special_tokens": skip})  # fmt: skip
    if stream:
        chunks = [c.choices[0] for c in client.completions.create(**request, stream=True)]
        text = "".join(c.text for c in chunks)
        offsets = [x for c in chunks for x in c.logprobs.text_offset]
    else:
        got = client.completions.create(**request).choices[0]
        text, offsets = got.text, got.logprobs.text_offset
    assert text == tokenizer.decode(shown)
    assert len(offsets) == len(prompt) and offsets == sorted(offsets)
    whole = 0  # tokens that begin on a character's boundary
    for i, token in enumerate(prompt):
        before = tokenizer.decode_bytes([t for t in prompt[:i] if t in shown])
        try:
            assert offsets[i] == len(before.decode("utf-8")), token
            whole += 1
        except UnicodeDecodeError:  # the token continues a character begun before it,
            assert offsets[i] == len(before.decode("utf-8", "ignore")) + 1  # counted once
    assert 0 < whole < len(prompt)


def test_n_seeded_samples_are_what_generate_gives_each_seed(trained, app, client):
    model, tokenizer = trained
    end_ids = app.state.model_card.chat_end_ids()
    prompt = chat_prompt(tokenizer, "Tell me a story.")
    result = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Tell me a story."}], n=3,
        temperature=1.5, seed=11, max_tokens=30,
    )  # fmt: skip
    expected = [
        alone(model, tokenizer, prompt, 30, end_ids, temperature=1.5, seed=11 + j) for j in range(3)
    ]
    assert [c.index for c in result.choices] == [0, 1, 2]
    assert [c.message.content for c in result.choices] == [text for text, _ in expected]
    assert len({text for text, _ in expected}) > 1  # the seeds differ, and so do the samples
    assert result.usage.completion_tokens == sum(tokens for _, tokens in expected)
    assert result.usage.prompt_tokens == len(prompt)  # the prompt counts once


@pytest.mark.parametrize("stream", [False, True])
def test_a_stop_string_ends_the_text_before_it(trained, app, client, stream):
    model, tokenizer = trained
    end_ids = app.state.model_card.chat_end_ids()
    question = "How are you?"
    full, _ = alone(model, tokenizer, chat_prompt(tokenizer, question), 40, end_ids)
    stop = full[len(full) // 2 : len(full) // 2 + 3]  # three characters from the middle
    assert len(stop) == 3
    messages = [{"role": "user", "content": question}]
    request = dict(
        model="tiny", messages=messages, temperature=0, max_tokens=40, stop=[stop, "zzz"]
    )
    if stream:
        chunks = list(client.chat.completions.create(**request, stream=True))
        text = "".join(c.choices[0].delta.content or "" for c in chunks)
        reason = chunks[-1].choices[0].finish_reason
    else:
        (choice,) = client.chat.completions.create(**request).choices
        text, reason = choice.message.content, choice.finish_reason
    assert (text, reason) == (full[: full.index(stop)], "stop")


def test_16_concurrent_streams_each_get_what_generate_gives_alone(trained, app, client):
    model, tokenizer = trained
    end_ids = app.state.model_card.chat_end_ids()
    jobs = [(QUESTIONS[i % len(QUESTIONS)], 8 + 3 * i) for i in range(16)]  # mixed lengths

    def streamed(job):
        question, max_tokens = job
        chunks = client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": question}], temperature=0,
            max_tokens=max_tokens, stream=True,
        )  # fmt: skip
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    with ThreadPoolExecutor(16) as pool:
        texts = list(pool.map(streamed, jobs))
    for (question, max_tokens), text in zip(jobs, texts):
        prompt = chat_prompt(tokenizer, question)
        assert text == alone(model, tokenizer, prompt, max_tokens, end_ids)[0], question
    wait_until_idle(app)
    assert app.state.engine.cache.allocator.free_count == 40


# --- load and faults -----------------------------------------------------------------------------
BAD_REQUESTS = [  # (path, raw body, status, param, code)
    ("/v1/chat/completions", b'{"model": "tiny", "messages": [', 400, None, "invalid_json"),
    ("/v1/completions", b"[1, 2]", 400, None, "invalid_json"),
    ("/v1/completions", b"\xff\xfe", 400, None, "invalid_json"),
    ("/v1/completions", {"model": "tiny", "prompt": "Hi", "colour": "red"}, 400, "colour", "unknown_parameter"),
    ("/v1/chat/completions", {"model": "gpt-4", "messages": [{"role": "user", "content": "Hi"}]}, 404, "model", "model_not_found"),
    ("/v1/completions", {"model": "tiny", "prompt": "Hi " * 200}, 400, "prompt", "context_length_exceeded"),
    ("/v1/completions", {"model": "tiny", "prompt": "Hi", "max_tokens": 1_000_000}, 400, "prompt", "context_length_exceeded"),
    ("/v1/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": "Hi " * 200}]}, 400, "messages", "context_length_exceeded"),
    ("/v1/completions", {"model": "tiny", "prompt": "Hi", "temperature": 3}, 400, "temperature", "invalid_value"),
    ("/v1/completions", {"model": "tiny", "prompt": "Hi", "n": 13}, 400, "n", "invalid_value"),
    ("/v1/completions", {"model": "tiny", "prompt": "Hi", "max_tokens": "5"}, 400, "max_tokens", "invalid_type"),
    ("/v1/chat/completions", {"model": "tiny", "messages": [{"role": "robot", "content": "Hi"}]}, 400, "messages[0].role", None),
    ("/v1/completions", {"model": "tiny", "prompt": [[1, 2], [5000]]}, 400, "prompt", None),
]  # fmt: skip


def check_error(response, status, param, code):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["param"], error["code"], error["type"]) == (param, code, "invalid_request_error")
    assert len(error["message"]) > 10


@pytest.mark.parametrize("path, body, status, param, code", BAD_REQUESTS)
def test_a_bad_request_gets_an_openai_error(http, path, body, status, param, code):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = http.post(path, content=raw, headers={"Content-Type": "application/json"})
    check_error(response, status, param, code)
    assert (
        http.post(
            "/v1/completions", json={"model": "tiny", "prompt": "Hi", "max_tokens": 2}
        ).status_code
        == 200
    )


def test_the_openai_client_raises_its_own_errors(client):
    import openai

    messages = [{"role": "user", "content": "Hi"}]
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="gpt-4", messages=messages)
    assert missing.value.code == "model_not_found" and missing.value.param == "model"
    with pytest.raises(openai.BadRequestError) as too_long:
        client.chat.completions.create(model="tiny", messages=messages, max_tokens=1_000_000)
    assert too_long.value.code == "context_length_exceeded" and "128" in too_long.value.message
    with pytest.raises(openai.BadRequestError) as unknown:
        client.completions.create(model="tiny", prompt="Hi", extra_body={"colour": "red"})
    assert unknown.value.param == "colour"


def test_a_client_leaving_mid_stream_cancels_its_request(app, http, monkeypatch):
    engine, added = app.state.engine, []
    add_request = engine.add_request

    def spy(*args, **kwargs):  # the engine's Request, to see how it ended
        added.append(add_request(*args, **kwargs))
        return added[-1]

    monkeypatch.setattr(engine, "add_request", spy)
    step = engine.step
    monkeypatch.setattr(engine, "step", lambda: time.sleep(0.01) or step())  # 120 steps: > 1 s
    body = {"model": "tiny", "prompt": "Hi", "max_tokens": 120, "temperature": 0, "stream": True}
    with http.stream("POST", "/v1/completions", json=body) as response:
        lines = response.iter_lines()
        assert next(lines).startswith("data: ") and next(lines) == ""  # one event, then leave
    wait_until_idle(app)
    (request,) = added
    assert request.sequences[0].finish_reason == "cancelled"
    assert len(request.sequences[0].new_tokens) < 120
    assert engine.cache.allocator.free_count == engine.cache.allocator.num_blocks


def test_a_client_leaving_before_a_whole_answer_cancels_its_request(app, http, monkeypatch):
    httpx = pytest.importorskip("httpx")
    engine, added = app.state.engine, []
    add_request, step = engine.add_request, engine.step
    monkeypatch.setattr(
        engine, "add_request", lambda *a: added.append(add_request(*a)) or added[-1]
    )
    monkeypatch.setattr(engine, "step", lambda: time.sleep(0.03) or step())  # 120 steps: > 3 s
    body = {"model": "tiny", "prompt": "Hi", "max_tokens": 120, "temperature": 0}
    with pytest.raises(httpx.ReadTimeout):  # the client gives up after half a second
        http.post("/v1/completions", json=body, timeout=0.5)
    wait_until_idle(app)  # the server notices within a second (DISCONNECT_POLL_SECONDS)
    (request,) = added
    assert request.sequences[0].finish_reason == "cancelled"
    assert len(request.sequences[0].new_tokens) < 120
    assert engine.cache.allocator.free_count == engine.cache.allocator.num_blocks


def test_a_failing_engine_answers_500_and_health_says_so(app, http, monkeypatch, capsys):
    def broken():
        raise RuntimeError("out of luck")

    monkeypatch.setattr(app.state.engine, "step", broken)
    body = {"model": "tiny", "prompt": "Hi", "max_tokens": 3}
    failed = http.post("/v1/completions", json=body)
    assert failed.status_code == 500 and failed.json()["error"]["type"] == "server_error"
    assert "out of luck" in failed.json()["error"]["message"]
    assert "RuntimeError: out of luck" in capsys.readouterr().err  # the traceback, for the log
    health = http.get("/health")
    assert health.status_code == 503 and "out of luck" in health.json()["status"]
    refused = http.post("/v1/completions", json=body)
    assert refused.status_code == 503 and "the engine stopped" in refused.json()["error"]["message"]


def test_64_clients_with_faults_and_disconnects_leave_every_block_free(trained, app, url, http):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=SECONDS)
    rng = np.random.default_rng(0)
    plan = [(i, int(rng.integers(1, 90))) for i in range(64)]  # (client, max_tokens)

    def one(job):
        i, max_tokens = job
        kind = i % 8
        if kind == 0:  # a fault: bad JSON, an unknown model, too many tokens
            path, body, status, param, code = BAD_REQUESTS[i // 8 % len(BAD_REQUESTS)]
            raw = body if isinstance(body, bytes) else json.dumps(body).encode()
            check_error(http.post(path, content=raw), status, param, code)
            return "fault"
        messages = [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}]
        if kind in (1, 2):  # leaves after two events
            stream = client.chat.completions.create(
                model="tiny", messages=messages, max_tokens=max_tokens, stream=True
            )
            with stream:
                for index, _ in enumerate(stream):
                    if index == 1:
                        break
            return "left"
        if kind == 3:  # a completion, whole, 2 samples
            result = client.completions.create(
                model="tiny", prompt="Hi", max_tokens=max_tokens, n=2
            )
            assert len(result.choices) == 2
            return "whole"
        options = dict(max_tokens=max_tokens, stream=True, stream_options={"include_usage": True})
        if kind in (4, 5):  # a chat: it ends its turn early
            chunks = list(
                client.chat.completions.create(model="tiny", messages=messages, **options)
            )
        else:  # a completion: no end of turn stops it, it runs to max_tokens
            chunks = list(
                client.completions.create(model="tiny", prompt=QUESTIONS[i % 8], **options)
            )
        assert chunks[-1].usage.completion_tokens <= max_tokens
        return "streamed"

    with ThreadPoolExecutor(64) as pool:
        outcomes = list(pool.map(one, plan))
    assert sorted(set(outcomes)) == ["fault", "left", "streamed", "whole"]
    wait_until_idle(app)
    allocator = app.state.engine.cache.allocator
    assert allocator.free_count == allocator.num_blocks == 40
    assert app.state.engine.counts["preemptions"] > 0  # the load ran out of blocks on the way
    assert http.get("/health").json() == dict(
        status="ok", running=0, waiting=0, free_blocks=40, num_blocks=40
    )
    model, tokenizer = trained  # and it still serves, the same as ever
    end_ids = app.state.model_card.chat_end_ids()
    reply = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Hi"}], temperature=0
    )
    assert (
        reply.choices[0].message.content
        == alone(model, tokenizer, chat_prompt(tokenizer, "Hi"), 20, end_ids)[0]
    )


def test_unknown_paths_and_methods_get_openai_errors_too(http):
    assert http.get("/v1/nothing").status_code == 404
    assert http.get("/v1/nothing").json()["error"]["message"] == "Not Found"
    assert http.get("/v1/completions").status_code == 405


# --- the chat page in a browser --------------------------------------------------------------------
def test_the_chat_page_streams_a_reply_in_headless_chromium(
    trained, app, url, tmp_path, monkeypatch
):
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing or importlib.util.find_spec("selenium") is None:
        pytest.skip(
            f"the browser test needs selenium and Debian's chromium and chromium-driver; missing: {missing or ['selenium']}"
        )
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager: never download a driver
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in [*BROWSER_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(str(CHROMEDRIVER)))
    try:
        driver.set_page_load_timeout(SECONDS)
        driver.get(url + "/")
        wait = WebDriverWait(driver, SECONDS)
        wait.until(lambda d: d.find_element(By.ID, "model").text == "model: tiny")
        temperature = driver.find_element(By.ID, "temperature")
        temperature.clear()
        temperature.send_keys("0")
        box = driver.find_element(By.ID, "input")
        box.send_keys("Who are you?")
        box.send_keys(Keys.ENTER)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".assistant[data-done]"))
        reply = driver.find_element(By.CSS_SELECTOR, ".assistant")
        model, tokenizer = trained
        prompt = chat_prompt(tokenizer, "Who are you?")
        end_ids = app.state.model_card.chat_end_ids()
        expected = alone(model, tokenizer, prompt, 128 - len(prompt), end_ids)[0]
        assert reply.get_attribute("textContent") == expected
        assert int(reply.get_attribute("data-pieces")) > 1  # it came in piece by piece
        assert driver.find_element(By.CSS_SELECTOR, ".user").text == "Who are you?"
        assert "tokens/s" in driver.find_element(By.ID, "stats").text
        assert not driver.find_elements(By.CSS_SELECTOR, ".error")
    finally:
        driver.quit()


# --- the command --------------------------------------------------------------------------------
def test_tinyllm_serve_serves_a_model_folder_until_interrupted(trained, tmp_path):
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("fastapi")
    model, tokenizer = trained
    folder = tmp_path / "tiny-chat"
    model.save_pretrained(folder)
    tokenizer.save(folder)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "tinyllm.cli", "serve", str(folder), "--port", str(port),
               "--max-batch", "4", "--block-size", "8"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OPENBLAS_NUM_THREADS": "1"}
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.monotonic() + SECONDS
        while True:
            assert process.poll() is None, process.stdout.read()
            assert time.monotonic() < deadline, "the server did not answer"
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        assert health.json()["status"] == "ok" and health.json()["num_blocks"] == 2 * 16
        reply = httpx.post(
            f"http://127.0.0.1:{port}/v1/chat/completions", timeout=SECONDS,
            json={"model": "tiny-chat", "messages": [{"role": "user", "content": "Hi"}], "temperature": 0},
        )  # fmt: skip
        end_ids = (tokenizer.special_tokens["<|endoftext|>"], tokenizer.special_tokens["<|end|>"])
        expected = alone(model, tokenizer, chat_prompt(tokenizer, "Hi"), 20, end_ids)[0]
        assert reply.json()["choices"][0]["message"]["content"] == expected
        assert httpx.get(f"http://127.0.0.1:{port}/", timeout=5).text.startswith("<!doctype html>")
    finally:
        process.send_signal(signal.SIGINT)
        output = process.communicate(timeout=SECONDS)[0]
    assert process.returncode == 0, output
    assert f"serving tiny-chat at http://127.0.0.1:{port}" in output


def test_serve_without_fastapi_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "fastapi", None)  # import fastapi now raises ImportError
    assert main(["serve", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "fastapi is not installed" in err and "pip install 'tinyllm[serve]'" in err


def test_importing_tinyllm_and_its_serve_package_imports_no_web_framework():
    code = (
        "import sys, tinyllm, tinyllm.cli, tinyllm.serve, tinyllm.serve.app; "
        "print(sorted({'fastapi', 'uvicorn', 'starlette'} & set(sys.modules)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, timeout=SECONDS, check=True,
    )  # fmt: skip
    assert result.stdout.strip() == "[]"


# --- without a server: request checks, reply text, events -------------------------------------------
@pytest.fixture
def card():
    return ModelCard("char", CharVocab("abcdefgh !"), context_length=32, max_batch=4, end_ids=(9,))


@pytest.mark.parametrize(
    "body, param, message",
    [
        ({"prompt": "abc"}, "model", "you must provide a model parameter"),
        ({"model": "char"}, "prompt", "you must provide a prompt"),
        ({"model": "char", "prompt": ""}, "prompt", "an empty prompt has nothing to continue"),
        ({"model": "char", "prompt": "xyz"}, "prompt", "character 'x' (at index 0) is not in this vocabulary"),
        ({"model": "char", "prompt": 5}, "prompt", "prompt=5: expected a string, a list of strings"),
        ({"model": "char", "prompt": "a", "max_tokens": 0}, "max_tokens", "max_tokens=0: expected an integer >= 1"),
        ({"model": "char", "prompt": "a", "max_tokens": 0, "echo": True}, "max_tokens", "max_tokens=0: expected an integer >= 1"),
        ({"model": "char", "prompt": "a", "max_tokens": True}, "max_tokens", "max_tokens=True: expected an integer"),
        ({"model": "char", "prompt": "a", "top_p": 0}, "top_p", "top_p=0: expected a number > 0 and <= 1"),
        ({"model": "char", "prompt": "a", "temperature": -1}, "temperature", "temperature=-1: expected a number >= 0 and <= 2"),
        ({"model": "char", "prompt": "a", "seed": -2}, "seed", "seed=-2: expected an integer >= 0"),
        ({"model": "char", "prompt": "a", "n": 5}, "n", "n=5: expected an integer in 1..4"),
        ({"model": "char", "prompt": "a", "stop": ""}, "stop", "stop='': expected a non-empty string or a list of them"),
        ({"model": "char", "prompt": "a", "stop": list("abcde")}, "stop", "stop: 5 strings, at most 4 allowed"),
        ({"model": "char", "prompt": "a", "stream_options": {"include_usage": True}}, "stream_options", "only allowed with stream=true"),
        ({"model": "char", "prompt": "a", "logprobs": 6}, "logprobs", "logprobs=6: expected an integer in 0..5"),
        ({"model": "char", "prompt": "a", "echo": 1}, "echo", "echo=1: expected true or false"),
        ({"model": "char", "prompt": "a", "stream": "yes"}, "stream", "stream='yes': expected true or false"),
        ({"model": "char", "prompt": "a", "skip_special_tokens": 0}, "skip_special_tokens", "skip_special_tokens=0: expected true or false"),
    ],
)  # fmt: skip
def test_a_bad_completion_field_is_named_with_what_was_expected(card, body, param, message):
    with pytest.raises(APIError) as error:
        parse_completion(body, card)
    assert error.value.status == 400 and error.value.param == param
    assert message in error.value.message


def test_a_completion_request_becomes_engine_work(card):
    body = {"model": "char", "prompt": ["ab", [1, 2, 3]], "max_tokens": 4, "n": 2, "seed": 3,
            "temperature": 0.5, "top_p": 0.9, "stop": "!", "stream": True,
            "stream_options": {"include_usage": True}, "presence_penalty": 0}  # fmt: skip
    job = parse_completion(body, card)
    assert (
        job.prompts == [card.tokenizer.encode("ab"), [1, 2, 3]] and job.stream and job.include_usage
    )
    params = job.params
    assert (params.max_tokens, params.n, params.seed, params.temperature, params.top_p) == (
        4,
        2,
        3,
        0.5,
        0.9,
    )
    assert params.stop_strings == ["!"] and params.stop_token_ids == [9]
    assert job.id.startswith("cmpl-") and parse_completion(body, card).id != job.id
    assert (
        parse_completion({"model": "char", "prompt": "a"}, card).params.max_tokens == 16
    )  # OpenAI's default


def test_a_chat_request_needs_the_chat_tokens_and_fills_the_context_by_default(trained):
    _, tokenizer = trained
    card = ModelCard(
        "tiny", tokenizer, context_length=128, end_ids=(tokenizer.special_tokens["<|endoftext|>"],)
    )
    messages = [{"role": "developer", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Hi"}]}]  # fmt: skip
    job = parse_chat({"model": "tiny", "messages": messages}, card)
    expected = format_chat(tokenizer, [{"role": "system", "content": "Be brief."},
                                       {"role": "user", "content": "Hi"}], add_generation_prompt=True)  # fmt: skip
    assert job.prompts == [expected.ids] and job.params.max_tokens == 128 - len(expected.ids)
    assert job.params.stop_token_ids == list(card.end_ids) + [tokenizer.special_tokens["<|end|>"]]
    assert (
        parse_chat(
            {"model": "tiny", "messages": messages, "max_completion_tokens": 7}, card
        ).params.max_tokens
        == 7
    )
    char = ModelCard("char", CharVocab("abc"), context_length=16)
    with pytest.raises(
        APIError, match="has no chat template: its tokenizer lacks the special tokens"
    ):
        parse_chat({"model": "char", "messages": messages}, char)
    with pytest.raises(APIError, match="top_logprobs=2: needs logprobs=true"):
        parse_chat({"model": "tiny", "messages": messages, "top_logprobs": 2}, card)
    with pytest.raises(APIError, match="top_logprobs=21: expected an integer in 0..20"):
        parse_chat(
            {"model": "tiny", "messages": messages, "logprobs": True, "top_logprobs": 21}, card
        )
    assert (
        parse_chat({"model": "tiny", "messages": messages, "logprobs": True}, card).params.logprobs
        == 0
    )
    assert parse_chat({"model": "tiny", "messages": messages}, card).params.logprobs is None
    with pytest.raises(APIError, match=r"messages\[0\]=.*expected an object with role and content"):
        parse_chat({"model": "tiny", "messages": [{"role": "user", "text": "Hi"}]}, card)


def feed(reply, steps, finish="stop"):
    """Feed ``steps`` (token, piece) to ``reply``, the last one finishing; the texts sent."""
    sent = [reply.add(Output("r", 0, token, piece)) for token, piece in steps[:-1]]
    token, piece = steps[-1]
    return sent + [reply.add(Output("r", 0, token, piece, finish))]


def test_a_reply_holds_back_what_may_begin_a_stop_string_and_cuts_it(card):
    vocab = card.tokenizer

    def steps(text):  # one token per character: (token, piece)
        return list(zip(vocab.encode(text), text))

    reply = Reply(vocab.decode, [" c", "hh"], end_ids=())
    assert feed(reply, steps("a b c")) == ["a", "", " b", "", ""]  # the stop " c" spans two
    assert reply.text == "a b" and reply.finish_reason == "stop" and len(reply.tokens) == 5
    # a held-back tail that was no stop after all goes out with the next piece
    reply = Reply(vocab.decode, [" c"], end_ids=())
    assert feed(reply, steps("a ba"), finish="length") == ["a", "", " b", "a"]


def test_a_reply_hides_its_end_token_and_finishes_characters_split_across_tokens():
    tokenizer = Tokenizer.train("héllo wörld " * 10, vocab_size=261)  # bytes only: é is two
    ids = tokenizer.encode("é")
    end = tokenizer.special_tokens["<|end|>"]
    pieces = []
    reply = Reply(tokenizer.decode, [], end_ids=[end])
    for i in range(len(ids)):  # the pieces the engine gives: "" until the character is whole
        text = tokenizer.decode(ids[: i + 1])
        pieces.append((ids[i], "" if text.endswith("\ufffd") else text))
    sent = feed(reply, [*pieces, (end, "<|end|>")])
    assert "".join(sent) == reply.text == "é" and len(reply.tokens) == len(ids) + 1
    cut_short = Reply(tokenizer.decode, [], end_ids=[end])  # max_tokens ends mid-character
    assert feed(cut_short, pieces[:1], finish="length") == [tokenizer.decode(ids[:1])]


def test_an_event_is_one_json_data_line_and_a_blank_line():
    event = sse({"text": "a\nb", "n": 1})
    assert event.startswith("data: ") and event.endswith("\n\n") and event.count("\n") == 2
    assert json.loads(event[len("data: ") :]) == {"text": "a\nb", "n": 1}


def test_the_chat_page_is_one_file_that_fetches_nothing_from_elsewhere():
    page = (ROOT / "tinyllm" / "serve" / "chat.html").read_text()
    assert "/v1/chat/completions" in page and "getReader()" in page and "tokens/s" in page
    assert "http://" not in page and "https://" not in page and "<script src" not in page
    assert ".innerHTML" not in page  # model text goes in as text, never as markup
