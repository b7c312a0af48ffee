"""Sampling rules against transformers' logits warpers, and generate against a plain loop."""

import numpy as np
import pytest

import tinyllm
from tinyllm.infer import filter_logits, generate, sample_next
from tinyllm.models import Transformer, get_preset


def random_logits(seed, rows=6, vocab=50):
    return np.random.default_rng(seed).normal(0, 2, (rows, vocab)).astype(np.float32)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize(
    "top_k, top_p", [(1, None), (5, None), (None, 0.3), (None, 0.9), (10, 0.8)]
)
def test_filters_keep_the_tokens_transformers_keeps(seed, top_k, top_p):
    torch = pytest.importorskip("torch")
    logits_process = pytest.importorskip("transformers.generation.logits_process")
    logits = random_logits(seed)
    expected = torch.tensor(logits)
    if top_k is not None:
        expected = logits_process.TopKLogitsWarper(top_k)(None, expected)
    if top_p is not None:
        expected = logits_process.TopPLogitsWarper(top_p)(None, expected)
    ours = filter_logits(logits, top_k=top_k, top_p=top_p)
    np.testing.assert_array_equal(np.isinf(ours), np.isinf(expected.numpy()))


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


def test_greedy_generate_equals_a_plain_argmax_loop():
    model = Transformer(get_preset("tiny-llama", n_layer=1, d_model=32, context_length=8), seed=0)
    prompt = np.array([[1, 2, 3], [4, 5, 6]])
    out = generate(model, prompt, 10, temperature=0)
    ids = prompt
    with tinyllm.no_grad():
        for _ in range(10):
            logits = model(ids[:, -8:])[0].numpy()  # the window slides past the context
            ids = np.concatenate([ids, logits[:, -1].argmax(-1)[:, None]], axis=1)
    np.testing.assert_array_equal(out, ids)
    assert model.training  # the mode is restored
    again = generate(model, prompt, 10, seed=3)
    np.testing.assert_array_equal(again, generate(model, prompt, 10, seed=3))  # same seed


def test_bad_sampling_settings_are_named():
    logits = random_logits(0)
    with pytest.raises(ValueError, match="top_k=0"):
        filter_logits(logits, top_k=0)
    with pytest.raises(ValueError, match="top_p=1.5"):
        filter_logits(logits, top_p=1.5)
    with pytest.raises(ValueError, match="temperature=-1"):
        sample_next(logits, temperature=-1, rng=np.random.default_rng(0))
