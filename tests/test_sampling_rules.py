"""Min-p, the repetition penalty, checked settings, stop conditions and streaming.

The oracles: transformers' ``MinPLogitsWarper`` and ``RepetitionPenaltyLogitsProcessor`` for
the rules one at a time, the chain its ``generate`` builds for the order, and its greedy
``generate`` for the repetition penalty and stop tokens inside the loop.
"""

import re

import numpy as np
import pytest

from tinyllm.infer import (
    filter_logits,
    generate,
    keep_min_p,
    penalize_repetition,
    sample_next,
    stream_generate,
)
from tinyllm.models import Transformer, get_preset

PROMPT = np.array([[1, 2, 3], [4, 5, 6]])


def random_logits(seed, rows=6, vocab=50):
    return np.random.default_rng(seed).normal(0, 2, (rows, vocab))


def random_history(seed, rows=6, vocab=50, length=12):
    return np.random.default_rng(seed + 100).integers(0, vocab, (rows, length))  # with repeats


class ChosenDraws:
    """Stands in for a NumPy ``Generator``: ``random`` returns the given uniform numbers, so
    drawing at the middle of each token's slice of [0, 1) reads off the distribution."""

    def __init__(self, draws):
        self.draws = np.asarray(draws, dtype=np.float64)

    def random(self, shape):
        return self.draws.reshape(shape)


def tiny_model(seed=0):
    return Transformer(
        get_preset("tiny-llama", n_layer=2, d_model=32, context_length=16), seed=seed
    )


def reference_model(model, tmp_path):
    transformers = pytest.importorskip("transformers")
    model.save_pretrained(tmp_path)
    reference = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    reference.generation_config.eos_token_id = None
    reference.generation_config.pad_token_id = 0
    return reference


# --- the rules against transformers -------------------------------------------------------
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("min_p", [0.01, 0.1, 0.5, 1.0])
def test_min_p_equals_transformers_min_p_warper(seed, min_p):
    torch = pytest.importorskip("torch")
    logits_process = pytest.importorskip("transformers.generation.logits_process")
    logits = random_logits(seed)
    expected = logits_process.MinPLogitsWarper(min_p)(None, torch.tensor(logits)).numpy()
    ours = keep_min_p(logits, min_p)
    np.testing.assert_array_equal(ours, expected)
    np.testing.assert_array_equal(filter_logits(logits, min_p=min_p), expected)
    assert (~np.isinf(ours)).sum(axis=-1).min() >= 1  # the likeliest token always stays


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("penalty", [0.5, 1.0, 1.3, 2.0])
def test_repetition_penalty_equals_transformers_processor(seed, penalty):
    torch = pytest.importorskip("torch")
    logits_process = pytest.importorskip("transformers.generation.logits_process")
    logits, history = random_logits(seed), random_history(seed)
    processor = logits_process.RepetitionPenaltyLogitsProcessor(penalty)
    expected = processor(torch.tensor(history), torch.tensor(logits)).numpy()
    np.testing.assert_array_equal(penalize_repetition(logits, history, penalty), expected)


def test_repetition_penalty_lowers_every_seen_token():
    logits = random_logits(0)
    history = random_history(0)
    penalized = penalize_repetition(logits, history, 1.5)
    seen = np.zeros(logits.shape, dtype=bool)
    np.put_along_axis(seen, history, True, axis=-1)
    assert np.all(penalized[seen] < logits[seen])  # positive ones shrink, negative ones grow
    np.testing.assert_array_equal(penalized[~seen], logits[~seen])
    empty = penalize_repetition(logits, np.zeros((6, 0), dtype=np.int64), 1.5)
    np.testing.assert_array_equal(empty, logits)


SETTINGS = [
    dict(repetition_penalty=1.3, temperature=0.7, top_k=10, top_p=0.8, min_p=0.05),
    dict(repetition_penalty=2.0, temperature=1.5, top_p=0.9, min_p=0.1),
    dict(repetition_penalty=0.8, temperature=1.0, top_k=5, min_p=0.2),
    dict(temperature=2.0, top_k=20, min_p=0.3),
    dict(repetition_penalty=1.2, temperature=0.5),
]


def transformers_chain(reference, settings, history_length):
    """The logits processors transformers' ``generate`` builds for ``settings``, in order."""
    transformers = pytest.importorskip("transformers")
    config = transformers.GenerationConfig(do_sample=True, **{"top_k": None, **settings})
    return reference._get_logits_processor(
        generation_config=config, input_ids_seq_length=history_length, device="cpu"
    )


@pytest.mark.parametrize("settings", SETTINGS)
def test_the_rules_chain_in_transformers_order(settings, tmp_path):
    torch = pytest.importorskip("torch")
    chain = transformers_chain(reference_model(tiny_model(), tmp_path), settings, 12)
    names = [type(processor).__name__ for processor in chain]
    order = ["RepetitionPenalty", "Temperature", "TopK", "TopP", "MinP"]
    ranks = [next(i for i, rule in enumerate(order) if name.startswith(rule)) for name in names]
    assert ranks == sorted(ranks), names  # the order the module docstring promises

    logits, history = random_logits(7, rows=4, vocab=65), random_history(7, rows=4, vocab=65)
    scores = chain(torch.tensor(history), torch.tensor(logits))
    probs = torch.softmax(scores, dim=-1).numpy()  # (R, V): what transformers samples from
    rows, tokens = np.nonzero(probs)
    middles = np.cumsum(probs, axis=-1)[rows, tokens] - probs[rows, tokens] / 2
    ids = sample_next(
        logits[rows], previous_ids=history[rows], rng=ChosenDraws(middles), **settings
    )
    np.testing.assert_array_equal(ids, tokens)  # every token it may pick, and only those


def test_greedy_generate_with_repetition_penalty_equals_transformers(tmp_path):
    torch = pytest.importorskip("torch")
    model = tiny_model()
    reference = reference_model(model, tmp_path)
    out = generate(model, PROMPT, 12, temperature=0, repetition_penalty=1.8)
    with torch.no_grad():
        expected = reference.generate(
            torch.tensor(PROMPT), max_new_tokens=12, do_sample=False, repetition_penalty=1.8
        )
    np.testing.assert_array_equal(out, expected.numpy())
    assert not np.array_equal(out, generate(model, PROMPT, 12, temperature=0))  # it bites


# --- bad settings ---------------------------------------------------------------------------
BAD = [
    ("temperature", -1), ("temperature", float("nan")), ("temperature", float("inf")),
    ("top_k", 0), ("top_k", 2.5), ("top_p", 0), ("top_p", 1.5), ("top_p", float("nan")),
    ("min_p", 0), ("min_p", 1.2), ("min_p", -0.1), ("repetition_penalty", 0),
    ("repetition_penalty", -1.5), ("repetition_penalty", float("inf")),
]  # fmt: skip


@pytest.mark.parametrize("name, value", BAD)
def test_each_bad_setting_is_named(name, value):
    message = re.escape(f"{name}={value!r}")
    settings = {name: value, "previous_ids": np.zeros((6, 1), dtype=np.int64)}
    with pytest.raises(ValueError, match=message):
        sample_next(random_logits(0), rng=np.random.default_rng(0), **settings)
    with pytest.raises(ValueError, match=message):  # at the call, before any token
        stream_generate(tiny_model(), PROMPT, 5, **{name: value})


def test_bad_stop_conditions_are_named():
    model = tiny_model()
    with pytest.raises(ValueError, match=re.escape("stop_strings='\\n'")):
        generate(model, PROMPT, 3, stop_strings="\n", decode=str)  # a list was meant
    with pytest.raises(ValueError, match="need decode="):
        generate(model, PROMPT, 3, stop_strings=["\n"])
    with pytest.raises(ValueError, match=re.escape("stop_token_ids=[65]")):
        generate(model, PROMPT, 3, stop_token_ids=[65])  # outside the vocabulary
    with pytest.raises(ValueError, match="repetition_penalty needs previous_ids"):
        sample_next(random_logits(0), repetition_penalty=1.2, rng=np.random.default_rng(0))


# --- stop conditions and streaming -----------------------------------------------------------
def expected_after_stops(full, prompt_length, stopped_after, pad_id=-1):
    """``full`` (B, T + N) cut and padded: row r keeps ``stopped_after[r]`` new tokens."""
    new = full[:, prompt_length:].copy()
    for row, keep in enumerate(stopped_after):
        new[row, keep:] = pad_id
    n = max(stopped_after)
    return np.concatenate([full[:, :prompt_length], new[:, :n]], axis=1)


@pytest.mark.parametrize("settings", [dict(temperature=0), dict(temperature=1.0, seed=3)])
def test_stop_token_ends_each_row(settings):
    model = tiny_model()
    full = generate(model, PROMPT, 12, **settings)  # (2, 15)
    new = full[:, 3:]
    stop = int(new[0, 3])  # a token row 0 does produce
    stopped_after = [int(np.argmax(row == stop)) + 1 if stop in row else len(row) for row in new]
    out = generate(model, PROMPT, 12, stop_token_ids=[stop], **settings)
    np.testing.assert_array_equal(out, expected_after_stops(full, 3, stopped_after))
    assert stopped_after[0] <= 4


def test_stop_token_equals_transformers_eos(tmp_path):
    torch = pytest.importorskip("torch")
    model = tiny_model()
    reference = reference_model(model, tmp_path)
    stop = int(generate(model, PROMPT, 12, temperature=0)[1, 3 + 2])  # row 1's third token
    out = generate(model, PROMPT, 12, temperature=0, stop_token_ids=[stop], pad_id=0)
    with torch.no_grad():
        expected = reference.generate(
            torch.tensor(PROMPT), max_new_tokens=12, do_sample=False, eos_token_id=stop,
            pad_token_id=0,
        )  # fmt: skip
    np.testing.assert_array_equal(out, expected.numpy())


def one_char_per_token(ids):
    """A toy ``decode``: each token id is one CJK character, so texts never collide."""
    return "".join(chr(0x4E00 + i) for i in ids)


def test_stop_string_ends_each_row():
    model = tiny_model()
    full = generate(model, PROMPT, 12, temperature=0)
    new = full[:, 3:]
    stop = one_char_per_token(new[0, 2:4].tolist())  # spans two of row 0's tokens
    stopped_after = []
    for row in new:
        ends = [k for k in range(1, len(row) + 1) if stop in one_char_per_token(row[:k].tolist())]
        stopped_after.append(ends[0] if ends else len(row))
    out = generate(model, PROMPT, 12, temperature=0, stop_strings=[stop], decode=one_char_per_token)
    np.testing.assert_array_equal(out, expected_after_stops(full, 3, stopped_after))
    assert stopped_after[0] <= 4


@pytest.mark.parametrize(
    "settings",
    [dict(), dict(temperature=0, stop_token_ids=[7, 11]), dict(top_k=5, repetition_penalty=1.3)],
)
def test_streaming_yields_exactly_what_generate_returns(settings):
    model = tiny_model()
    out = generate(model, PROMPT, 10, seed=2, **settings)
    steps = list(stream_generate(model, PROMPT, 10, seed=2, **settings))
    assert all(step.shape == (2,) and step.dtype == np.int64 for step in steps)
    np.testing.assert_array_equal(np.stack(steps, axis=1), out[:, 3:])
    assert model.training  # the mode is restored between steps


def test_streamed_text_pieces_add_up_to_the_decoded_tokens():
    """Tokens here stand for bytes that may split a UTF-8 character ("é" is C3 A9): a piece
    never ends in the U+FFFD of a half character, and the pieces add up to the text."""
    table = {i: [b"\xc3", b"\xa9", b"a"][i % 3] for i in range(65)}

    def decode(ids):
        return b"".join(table[i] for i in ids).decode("utf-8", errors="replace")

    model = tiny_model()
    shown = ["", ""]
    new_ids = []
    for ids, pieces in stream_generate(model, PROMPT, 14, seed=1, decode=decode):
        new_ids.append(ids)
        for row, piece in enumerate(pieces):
            assert not piece.endswith("\ufffd")
            shown[row] += piece
    new_ids = np.stack(new_ids, axis=1)
    np.testing.assert_array_equal(new_ids, generate(model, PROMPT, 14, seed=1)[:, 3:])
    for row in range(2):
        text = decode(new_ids[row].tolist())
        assert text.startswith(shown[row])
        assert shown[row] == text.rstrip("\ufffd")  # all but a half character at the end
