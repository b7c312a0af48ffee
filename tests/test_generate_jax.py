"""Generation under JAX: a compiled cached decoding step, NumPy's logits and tokens.

The prefill compiles once and the decoding step once, whatever the number of tokens; a
second ``generate`` on the same model compiles nothing. A trace is counted by wrapping the
model's ``forward``, which only runs while ``jax.jit`` traces. The compiled step donates the
KV cache it is given: the arrays passed in are gone after the call, written in place.
"""

import numpy as np
import pytest

import tinyllm
from tinyllm.infer import generate
from tinyllm.infer.decoder import CachedDecoder
from tinyllm.models import ModelConfig, Transformer, get_preset

pytest.importorskip("jax")

LLAMA = dict(
    position="rope", norm="rmsnorm", mlp="swiglu", bias=False, tie_embeddings=False, n_kv_head=2
)
BASE = dict(vocab_size=61, context_length=24, d_model=32, n_layer=2, n_head=4, init_std=0.1)
CASES = {
    "gpt2": {},
    "llama-gqa": LLAMA,
    "llama3-rope": {**LLAMA, "rope_scaling": {
        "type": "llama3", "factor": 8.0, "original_context_length": 8,
        "low_freq_factor": 1.0, "high_freq_factor": 4.0}},
    "dynamic-rope": {
        **LLAMA, "rope_scaling": {"type": "dynamic", "factor": 2.0, "original_context_length": 8}},
    "mistral-sliding-window": {**LLAMA, "sliding_window": 5},
    "qwen3": {**LLAMA, "qk_norm": True, "d_head": 16, "qkv_bias": True},
    "mixtral": {**LLAMA, "n_expert": 4, "top_k": 2},
}  # fmt: skip


def numpy_and_jax_models(config, seed=0):
    """The same weights on both backends (initialised on the host)."""
    numpy_model = Transformer(config, seed=seed)
    with tinyllm.use_backend("jax"):
        return numpy_model, Transformer(config, seed=seed)


def count_traces(model, monkeypatch):
    traces = []
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda *a, **k: traces.append(1) or forward(*a, **k))
    return traces


@pytest.mark.parametrize("case", CASES)
def test_compiled_cached_decoding_gives_numpys_tokens(case):
    numpy_model, jax_model = numpy_and_jax_models(ModelConfig(**{**BASE, **CASES[case]}))
    prompt = np.random.default_rng(1).integers(0, 61, (2, 5))
    samplings = (dict(temperature=0), dict(temperature=1.0, top_p=0.9, seed=3))
    if case == "dynamic-rope":  # runs eagerly (see CachedDecoder): slow, greedy is enough
        samplings = samplings[:1]
    for settings in samplings:
        expected = generate(numpy_model, prompt, 19, **settings)  # up to the context of 24
        np.testing.assert_array_equal(generate(jax_model, prompt, 19, **settings), expected)


@pytest.mark.parametrize("preset", ["tiny", "tiny-llama"])
def test_one_compilation_for_the_prefill_and_one_for_every_step(preset, monkeypatch):
    config = get_preset(preset, n_layer=2, d_model=32, n_head=2, context_length=16)
    numpy_model, model = numpy_and_jax_models(config)
    traces = count_traces(model, monkeypatch)
    prompt = np.array([[1, 2, 3], [7, 8, 9]])
    ours = generate(model, prompt, 12, temperature=0)
    assert len(traces) == 2  # the prefill (3 tokens) and the decoding step (1 token)
    np.testing.assert_array_equal(ours, generate(numpy_model, prompt, 12, temperature=0))
    generate(model, prompt + 1, 12, temperature=0)  # another call: compiled already
    assert len(traces) == 2
    # 20 new tokens slide the window past 16 positions: one more program, the padded window
    ours = generate(model, prompt, 20, temperature=0)
    assert len(traces) == 3
    np.testing.assert_array_equal(ours, generate(numpy_model, prompt, 20, temperature=0))


def test_the_compiled_step_donates_the_cache_and_keeps_numpys_logits():
    numpy_model, jax_model = numpy_and_jax_models(ModelConfig(**BASE))
    reference, decoder = CachedDecoder(numpy_model, 2), CachedDecoder(jax_model, 2)
    rng = np.random.default_rng(2)
    for ids in (rng.integers(0, 61, (2, 5)), *rng.integers(0, 61, (3, 2, 1))):  # prefill, steps
        passed_in = [*decoder.cache.keys, *decoder.cache.values]
        logits = decoder(ids)
        assert all(array.is_deleted() for array in passed_in)  # donated: reused for the output
        np.testing.assert_allclose(logits, reference(ids), rtol=1e-4, atol=1e-5)
    assert decoder.length == reference.length == 8


def test_jax_sampling_draws_what_numpy_draws():
    config = get_preset("tiny", n_layer=1, d_model=32, n_head=2, context_length=8)
    numpy_model, jax_model = numpy_and_jax_models(config, seed=1)
    prompt = np.array([[5]])
    reference = generate(numpy_model, prompt, 12, temperature=1.0, seed=4)
    np.testing.assert_array_equal(
        generate(jax_model, prompt, 12, temperature=1.0, seed=4), reference
    )


def test_a_model_generated_with_is_freed():
    import gc
    import weakref

    _, model = numpy_and_jax_models(get_preset("tiny", n_layer=1, d_model=16, context_length=8))
    generate(model, [[1, 2]], 3, temperature=0)
    alive = weakref.ref(model)
    del model
    gc.collect()
    assert alive() is None  # the compiled programs hold no reference to it
