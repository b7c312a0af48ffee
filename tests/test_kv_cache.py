"""The KV cache: cached decoding equals recomputing the whole prefix, for every architecture
the model supports, and tinyllm's cached greedy generation equals ``transformers``'."""

import numpy as np
import pytest

import tinyllm
from tinyllm.functional import attention
from tinyllm.infer import KVCache, generate, sample_next
from tinyllm.models import ModelConfig, Transformer

LLAMA = dict(
    position="rope", norm="rmsnorm", mlp="swiglu", bias=False, qkv_bias=False,
    tie_embeddings=False, n_kv_head=2,
)  # fmt: skip
BASE = dict(vocab_size=61, context_length=24, d_model=32, n_layer=2, n_head=4, init_std=0.1)
EXPERTS = dict(n_expert=4, top_k=2)
CONFIGS = {
    "gpt2": {},
    "llama-gqa": LLAMA,
    "llama-mha": {**LLAMA, "n_kv_head": 4},
    "llama-mqa": {**LLAMA, "n_kv_head": 1},
    "llama-linear-rope": {**LLAMA, "rope_scaling": {"type": "linear", "factor": 2.0}},
    "llama-yarn-rope": {**LLAMA, "rope_scaling": {
        "type": "yarn", "factor": 4.0, "original_context_length": 8}},
    "llama3-rope": {**LLAMA, "rope_scaling": {
        "type": "llama3", "factor": 8.0, "original_context_length": 8,
        "low_freq_factor": 1.0, "high_freq_factor": 4.0}},
    "mistral-sliding-window": {**LLAMA, "sliding_window": 5},  # 24 positions: well past it
    "qwen2": {**LLAMA, "qkv_bias": True},
    "qwen3": {**LLAMA, "qk_norm": True, "d_head": 16},
    "mixtral": {**LLAMA, **EXPERTS},
    "qwen3-moe": {**LLAMA, **EXPERTS, "qk_norm": True, "d_head": 16, "norm_top_k": False},
}  # fmt: skip
DYNAMIC = {
    **LLAMA,
    "rope_scaling": {"type": "dynamic", "factor": 2.0, "original_context_length": 8},
}


def model_of(options, seed=0, **changes):
    return Transformer(ModelConfig(**{**BASE, **options, **changes}), seed=seed)


def logits_of(model, ids, cache=None):
    with tinyllm.no_grad():
        logits, _ = model(ids, cache=cache)
    return logits.numpy()


def cached_and_recomputed(model, prompt, steps):
    """Greedy decoding from ``prompt`` (B, T) for ``steps`` tokens; at each step, the last
    position's logits from the cache and from recomputing the whole prefix (each (B, V))."""
    cache = KVCache.for_model(model.config, len(prompt))
    ids = np.asarray(prompt)
    cached = [logits_of(model, ids, cache)[:, -1]]
    recomputed = [logits_of(model, ids)[:, -1]]
    for _ in range(steps):
        ids = np.concatenate([ids, cached[-1].argmax(-1)[:, None]], axis=1)
        cached.append(logits_of(model, ids[:, -1:], cache)[:, -1])
        recomputed.append(logits_of(model, ids)[:, -1])
        assert cache.length == ids.shape[1]
    return np.stack(cached), np.stack(recomputed)


def recomputed_generate(model, prompt, max_new_tokens, *, seed=0, **settings):
    """Generation as it was before the cache: every step reruns the last context window."""
    rng, ids = np.random.default_rng(seed), np.asarray(prompt)
    for _ in range(max_new_tokens):
        last = logits_of(model, ids[:, -model.config.context_length :])[:, -1]
        ids = np.concatenate([ids, sample_next(last, rng=rng, **settings)[:, None]], axis=1)
    return ids


@pytest.mark.parametrize("query_blocks", [False, True])
@pytest.mark.parametrize("case", CONFIGS)
def test_cached_logits_equal_recomputing_the_prefix_at_every_step(case, query_blocks, monkeypatch):
    """With ``query_blocks``, the prefill and every recomputed prefix of 4 or more tokens run
    long causal attention's blocked path; the cached steps (one query each) do not."""
    if query_blocks:
        monkeypatch.setattr(attention, "MIN_QUERY_BLOCK", 1)
    model = model_of(CONFIGS[case])
    prompt = np.random.default_rng(1).integers(0, 61, (2, 5))
    cached, recomputed = cached_and_recomputed(model, prompt, steps=19)  # up to 24 = context
    np.testing.assert_allclose(cached, recomputed, atol=1e-4, rtol=0)
    np.testing.assert_array_equal(cached.argmax(-1), recomputed.argmax(-1))
    assert np.abs(np.diff(cached, axis=0)).max() > 1e-2  # the steps differ: a real test


@pytest.mark.parametrize("case", CONFIGS)
def test_greedy_and_sampled_generation_match_generation_without_a_cache(case):
    model = model_of(CONFIGS[case])
    prompt = np.random.default_rng(2).integers(0, 61, (2, 4))
    for settings in (dict(temperature=0), dict(temperature=1.0, top_k=20, seed=3)):
        # 30 new tokens: past the context of 24, where the window slides
        expected = recomputed_generate(model, prompt, 30, **settings)
        np.testing.assert_array_equal(generate(model, prompt, 30, **settings), expected)
        uncached = generate(model, prompt, 30, use_cache=False, **settings)
        np.testing.assert_array_equal(uncached, expected)


def test_dynamic_ntk_keeps_each_cached_key_as_it_was_rotated():
    # Dynamic NTK stretches the angles once a sequence outgrows the trained 8 positions. As
    # in transformers, a cached key keeps the rotation of the step that made it: within 8
    # positions cached equals recomputed, past them the two part (transformers' cached
    # generation is the oracle there, below).
    model = model_of(DYNAMIC)
    prompt = np.random.default_rng(1).integers(0, 61, (2, 5))
    cached, recomputed = cached_and_recomputed(model, prompt, steps=8)
    np.testing.assert_allclose(cached[:3], recomputed[:3], atol=1e-4, rtol=0)  # lengths 5..7
    assert np.abs(cached[4:] - recomputed[4:]).max() > 1e-3  # lengths 9..13 are stretched
    long_prompt = np.random.default_rng(1).integers(0, 61, (2, 12))  # prefill: all one table
    np.testing.assert_allclose(
        logits_of(model, long_prompt, KVCache.for_model(model.config, 2)),
        logits_of(model, long_prompt), atol=1e-4, rtol=0,
    )  # fmt: skip


@pytest.mark.parametrize("case", ["gpt2", "llama-gqa", "llama-mqa", "qwen3"])
def test_the_cache_stores_only_the_key_value_heads(case):
    config = model_of(CONFIGS[case]).config
    cache = KVCache.for_model(config, batch_size=3)
    shape = (3, config.kv_heads, config.context_length, config.head_dim)
    assert cache.keys[0].shape == cache.values[1].shape == shape
    assert cache.nbytes == 2 * config.n_layer * int(np.prod(shape)) * 4  # float32
    full = KVCache.for_model(config.replace(n_kv_head=config.n_head), batch_size=3)
    assert full.nbytes == cache.nbytes * config.n_head // config.kv_heads


@pytest.mark.parametrize("case", ["gpt2", "llama-gqa", "mistral-sliding-window", "qwen3-moe"])
def test_truncating_rolls_back_as_if_the_dropped_tokens_never_came(case):
    model = model_of(CONFIGS[case])
    rng = np.random.default_rng(4)
    prompt, rejected, accepted = (rng.integers(0, 61, (2, n)) for n in (6, 4, 9))
    cache = KVCache.for_model(model.config, 2)
    logits_of(model, prompt, cache)
    logits_of(model, rejected, cache)  # drafted tokens, then rolled back
    cache.truncate(6)
    ours = logits_of(model, accepted, cache)  # 9 more: past the window, over rejected slots
    fresh = logits_of(model, np.concatenate([prompt, accepted], axis=1))[:, 6:]
    np.testing.assert_allclose(ours, fresh, atol=1e-4, rtol=0)
    cache.reset()
    np.testing.assert_allclose(
        logits_of(model, accepted, cache), logits_of(model, accepted), atol=1e-4, rtol=0
    )


def test_bad_cache_use_is_named():
    model = model_of(LLAMA)
    cache = KVCache.for_model(model.config, 2, max_len=8)
    with pytest.raises(ValueError, match="max_len=8"):
        logits_of(model, np.zeros((2, 9), np.int64), cache)
    assert cache.length == 0  # a failed forward leaves the cache as it was
    with pytest.raises(ValueError, match=r"must both be \(2, 2, new positions, 8\)"):
        logits_of(model, np.zeros((3, 2), np.int64), cache)  # batch of 3 for a cache of 2
    logits_of(model, np.zeros((2, 3), np.int64), cache)
    with pytest.raises(ValueError, match=r"truncate\(5\): expected a length in 0 .. 3"):
        cache.truncate(5)
    with pytest.raises(ValueError, match="start=1 with a cache holding 3"):
        model(np.zeros((2, 1), np.int64), start=1, cache=cache)
    with pytest.raises(RuntimeError, match="no_grad"):
        model(np.zeros((2, 1), np.int64), cache=cache)  # gradients on: the cache would drop them
    with pytest.raises(ValueError, match="layer=None: expected 0 .. 1"), tinyllm.no_grad():
        model.blocks[0].attention(np.zeros((2, 1, 32), np.float32), start=3, cache=cache)
    with pytest.raises(ValueError, match="n_kv_head=0"):
        KVCache(n_layer=1, batch_size=1, n_kv_head=0, max_len=4, head_dim=2)


def test_jax_arrays_are_written_functionally_with_numpys_logits():
    pytest.importorskip("jax")
    prompt = np.array([[3, 1, 4, 1]])
    model = model_of(LLAMA)
    reference, _ = cached_and_recomputed(model, prompt, steps=2)
    with tinyllm.use_backend("jax"):
        model = model_of(LLAMA)  # the same weights: initialised on the host
        ours, _ = cached_and_recomputed(model, prompt, steps=2)
    np.testing.assert_allclose(ours, reference, atol=1e-4, rtol=0)


# --- transformers as the outside oracle ---------------------------------------------------
HF_LLAMA = dict(
    vocab_size=61, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
)  # fmt: skip
HF_CASES = {
    "gpt2": ("GPT2", dict(vocab_size=61, n_embd=32, n_layer=2, n_head=4, n_positions=32)),
    "llama-gqa": ("Llama", HF_LLAMA),
    "llama-dynamic-rope": ("Llama", {**HF_LLAMA, "max_position_embeddings": 8,
                                     "rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}),
}  # fmt: skip


@pytest.mark.parametrize("case", HF_CASES)
def test_cached_greedy_generation_equals_transformers_generate(case, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    family, options = HF_CASES[case]
    torch.manual_seed(0)
    hf_config = getattr(transformers, f"{family}Config")(**options)
    head = "LMHeadModel" if family == "GPT2" else "ForCausalLM"
    reference = getattr(transformers, f"{family}{head}")(hf_config).eval()
    with torch.no_grad():  # sharper logits than the init's: greedy choices are clear-cut
        for param in reference.parameters():
            param.mul_(4.0)
    reference.save_pretrained(tmp_path)
    ours = Transformer.from_pretrained(tmp_path)
    prompt = np.random.default_rng(5).integers(0, 61, (2, 5))
    assert ours.config.context_length == 16 if case == "llama-dynamic-rope" else 32
    with torch.no_grad():  # 5 + 11 = 16 tokens: within every context (transformers slides none)
        expected = reference.generate(
            torch.tensor(prompt), max_new_tokens=11, do_sample=False, eos_token_id=None,
            pad_token_id=0, output_logits=True, return_dict_in_generate=True,
        )  # fmt: skip
    np.testing.assert_array_equal(generate(ours, prompt, 11, temperature=0), expected.sequences)
    hf_step_logits = np.stack([step.numpy() for step in expected.logits])  # (11, B, V)
    cached, _ = cached_and_recomputed(ours, prompt, steps=10)
    np.testing.assert_allclose(cached, hf_step_logits, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["cupy", "jax"])
def test_gpu_backends_generate_numpys_tokens(name):
    """Runs where the backend works (CuPy needs a CUDA GPU; JAX runs on CPU or GPU)."""
    works, detail = tinyllm.available_backends()[name]
    if not works:
        pytest.skip(detail)
    prompt = np.random.default_rng(3).integers(0, 61, (2, 4))
    model = model_of(CONFIGS["llama-gqa"])
    expected = generate(model, prompt, 12, temperature=0)
    speculated = generate(model, prompt[:1], 12, temperature=0, draft=model_of(LLAMA, seed=1))
    with tinyllm.use_backend(name):
        moved = model_of(CONFIGS["llama-gqa"])  # the same weights: initialised on the host
        np.testing.assert_array_equal(generate(moved, prompt, 12, temperature=0), expected)
        draft = model_of(LLAMA, seed=1)
        ours = generate(moved, prompt[:1], 12, temperature=0, draft=draft)
    np.testing.assert_array_equal(ours, speculated)
    np.testing.assert_array_equal(speculated, expected[:1])
