"""Sampling rules and greedy generation against transformers: its logits warpers give the
distribution ``sample_next`` must draw from, and its ``generate`` the greedy continuation."""

import numpy as np
import pytest

from tinyllm.infer import filter_logits, generate, sample_next
from tinyllm.models import Transformer, get_preset


def random_logits(seed, rows=6, vocab=50):
    return np.random.default_rng(seed).normal(0, 2, (rows, vocab)).astype(np.float32)


def transformers_probs(logits, temperature=1.0, top_k=None, top_p=None):
    """The next-token distribution transformers samples from: its warpers in the order its
    ``generate`` applies them (temperature, top-k, top-p), then a softmax. float64 (R, V)."""
    torch = pytest.importorskip("torch")
    logits_process = pytest.importorskip("transformers.generation.logits_process")
    scores = torch.tensor(logits, dtype=torch.float64)
    warpers = [logits_process.TemperatureLogitsWarper(temperature)]
    if top_k is not None:
        warpers.append(logits_process.TopKLogitsWarper(top_k))
    if top_p is not None:
        warpers.append(logits_process.TopPLogitsWarper(top_p))
    for warper in warpers:
        scores = warper(None, scores)
    return torch.softmax(scores, dim=-1).numpy()


class ChosenDraws:
    """Stands in for a NumPy ``Generator``: ``random`` returns the given uniform numbers.

    ``sample_next`` picks, for a uniform draw u, the token whose slice of [0, 1) holds u
    (inverse-CDF sampling), so chosen draws read off the distribution it samples from.
    """

    def __init__(self, draws):
        self.draws = np.asarray(draws, dtype=np.float64)

    def random(self, shape):
        assert int(np.prod(shape)) == self.draws.size, (shape, self.draws.shape)
        return self.draws.reshape(shape)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize(
    "top_k, top_p", [(1, None), (5, None), (None, 0.3), (None, 0.9), (10, 0.8)]
)
def test_filters_keep_the_tokens_transformers_keeps(seed, top_k, top_p):
    logits = random_logits(seed)
    expected = transformers_probs(logits, top_k=top_k, top_p=top_p) > 0
    ours = filter_logits(logits, top_k=top_k, top_p=top_p)
    np.testing.assert_array_equal(~np.isinf(ours), expected)


@pytest.mark.parametrize(
    "temperature, top_k, top_p",
    [(1.0, None, None), (0.5, None, None), (2.0, None, None), (1.0, 5, None),
     (0.7, None, 0.9), (2.0, None, 0.5), (1.5, 10, 0.8), (0.3, 3, 0.5)],
)  # fmt: skip
def test_samples_come_from_the_distribution_of_transformers_warpers(temperature, top_k, top_p):
    logits = random_logits(4, rows=4, vocab=30)
    probs = transformers_probs(logits, temperature, top_k, top_p)  # (R, V)
    # Every token transformers may pick is drawn at the middle of its slice of [0, 1), and
    # comes out; tokens it never picks have no slice.
    rows, tokens = np.nonzero(probs)
    middles = np.cumsum(probs, axis=-1)[rows, tokens] - probs[rows, tokens] / 2
    ids = sample_next(
        logits[rows], temperature=temperature, top_k=top_k, top_p=top_p, rng=ChosenDraws(middles)
    )
    np.testing.assert_array_equal(ids, tokens)


def test_samples_follow_the_distribution():
    probs = np.array([0.5, 0.3, 0.15, 0.05])
    logits = np.log(np.tile(probs, (20000, 1)))
    ids = sample_next(logits, rng=np.random.default_rng(0))
    frequencies = np.bincount(ids, minlength=4) / len(ids)
    np.testing.assert_allclose(frequencies, probs, atol=0.01)
    sharp = sample_next(logits, temperature=0.25, rng=np.random.default_rng(0))
    assert np.mean(sharp == 0) > 0.8  # a low temperature favours the likeliest token
    top2 = sample_next(logits, top_k=2, rng=np.random.default_rng(0))
    assert set(np.unique(top2)) == {0, 1}


def test_greedy_generate_equals_transformers_greedy_generate(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model = Transformer(get_preset("tiny-llama", n_layer=2, d_model=32, context_length=16), seed=0)
    model.save_pretrained(tmp_path)
    reference = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    reference.generation_config.eos_token_id = None  # generate every token asked for
    reference.generation_config.pad_token_id = 0
    prompt = np.array([[1, 2, 3], [4, 5, 6]])
    out = generate(model, prompt, 12, temperature=0)
    with torch.no_grad():
        expected = reference.generate(torch.tensor(prompt), max_new_tokens=12, do_sample=False)
    np.testing.assert_array_equal(out, expected.numpy())
    assert model.training  # the mode is restored
    again = generate(model, prompt, 10, seed=3)
    np.testing.assert_array_equal(again, generate(model, prompt, 10, seed=3))  # same seed


def test_prompts_longer_than_the_context_keep_their_last_tokens():
    model = Transformer(get_preset("tiny-llama", n_layer=1, d_model=32, context_length=8), seed=0)
    prompt = np.random.default_rng(0).integers(0, 65, (2, 13))
    for settings in (dict(temperature=0), dict(seed=5, top_k=10)):
        out = generate(model, prompt, 9, **settings)  # the window slides past the context
        truncated = generate(model, prompt[:, -8:], 9, **settings)
        np.testing.assert_array_equal(out[:, :13], prompt)
        np.testing.assert_array_equal(out[:, 13:], truncated[:, 8:])


def test_bad_sampling_settings_are_named():
    logits = random_logits(0)
    with pytest.raises(ValueError, match="top_k=0"):
        filter_logits(logits, top_k=0)
    with pytest.raises(ValueError, match="top_p=1.5"):
        filter_logits(logits, top_p=1.5)
    with pytest.raises(ValueError, match="temperature=-1"):
        sample_next(logits, temperature=-1, rng=np.random.default_rng(0))
