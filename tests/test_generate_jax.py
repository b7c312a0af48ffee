"""Generation under JAX: one compiled forward for any number of tokens, NumPy's tokens."""

import numpy as np
import pytest

import tinyllm
from tinyllm.infer import generate
from tinyllm.models import Transformer, get_preset

pytest.importorskip("jax")


@pytest.mark.parametrize("preset", ["tiny", "tiny-llama"])
def test_jax_generation_traces_once_and_matches_numpy_greedy(preset, monkeypatch):
    config = get_preset(preset, n_layer=2, d_model=32, n_head=2, context_length=16)
    prompt = np.array([[1, 2, 3], [7, 8, 9]])
    reference = generate(Transformer(config, seed=0), prompt, 20, temperature=0)
    with tinyllm.use_backend("jax"):
        model = Transformer(config, seed=0)  # the same weights: initialised on the host
    traces = []
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda *a, **k: traces.append(1) or forward(*a, **k))
    ours = generate(model, prompt, 20, temperature=0)  # 20 lengths, the window slides past 16
    assert len(traces) == 1  # eager JAX would compile every op for each of the 20 lengths
    np.testing.assert_array_equal(ours, reference)


def test_jax_sampling_draws_what_numpy_draws():
    config = get_preset("tiny", n_layer=1, d_model=32, n_head=2, context_length=8)
    prompt = np.array([[5]])
    reference = generate(Transformer(config, seed=1), prompt, 12, temperature=1.0, seed=4)
    with tinyllm.use_backend("jax"):
        model = Transformer(config, seed=1)
    np.testing.assert_array_equal(generate(model, prompt, 12, temperature=1.0, seed=4), reference)
