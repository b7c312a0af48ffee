"""Parameter, FLOP and memory sums: published figures, and Hugging Face as an outside oracle.

The published figures are the ones on model cards and in papers; the oracle builds tiny
random ``transformers`` models of each family and counts their parameters directly, so a
miscounted bias or norm shows up as an off-by-a-few-hundred mismatch.
"""

import pytest

from tinyllm.analysis import (
    GB,
    KNOWN_MODELS,
    GiB,
    MemoryEstimate,
    ParameterCount,
    inference_flops_per_token,
    kv_cache_bytes,
    parameter_count,
    training_flops_per_token,
    vram_estimate,
    weight_bytes,
)
from tinyllm.models import ModelConfig

# --- published figures -------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, total",
    [
        ("gpt2", 124_439_808),  # tied embeddings: the output layer is not counted twice
        ("llama-2-7b", 6_738_415_616),
        ("llama-3-8b", 8_030_261_248),
        ("mistral-7b", 7_241_732_096),
        ("mixtral-8x7b", 46_702_792_704),
        ("qwen2.5-32b", 32_763_876_352),
    ],
)
def test_published_parameter_counts(name, total):
    counts = parameter_count(KNOWN_MODELS[name])
    assert counts.total == total
    assert sum(counts.parts.values()) == total


def test_qwen3_06b_has_its_published_size():
    counts = parameter_count(KNOWN_MODELS["qwen3-0.6b"])  # model card: 0.6B, 0.44B non-embedding
    assert round(counts.total / 1e9, 1) == 0.6
    assert round((counts.total - counts.embedding) / 1e9, 2) == 0.44


def test_dense_models_use_every_parameter_for_every_token():
    for name in ("gpt2", "llama-2-7b", "llama-3-8b", "mistral-7b", "qwen2.5-32b"):
        counts = parameter_count(KNOWN_MODELS[name])
        assert counts.active == counts.total, name


def test_mixtral_active_parameters():
    counts = parameter_count(KNOWN_MODELS["mixtral-8x7b"])
    assert round(counts.total / 1e9, 1) == 46.7  # Mistral AI: "46.7B total parameters"
    assert round(counts.active / 1e9, 1) == 12.9  # "but only uses 12.9B parameters per token"
    assert counts.active == 12_879_925_248


def test_embedding_split():
    gpt2 = parameter_count(KNOWN_MODELS["gpt2"])
    assert gpt2.embedding == 50257 * 768 + 1024 * 768  # tokens + positions, tied output
    assert gpt2.non_embedding == 124_439_808 - gpt2.embedding
    llama = parameter_count(KNOWN_MODELS["llama-2-7b"])
    assert llama.embedding == 2 * 32000 * 4096  # input table + untied output layer
    assert llama.parts["position embedding"] == 0  # RoPE has no parameters


def test_a_32b_model_needs_64_gb_at_16_bits_and_16_gb_at_4():
    # GB here is 10**9 bytes, the unit of model cards and GPU spec sheets
    assert GB == 10**9
    assert weight_bytes(32_000_000_000, bits=16) == 64 * GB
    assert weight_bytes(32_000_000_000, bits=8) == 32 * GB
    assert weight_bytes(32_000_000_000, bits=4) == 16 * GB
    assert weight_bytes(32_000_000_000, bits=4.5) == 18 * GB  # Q4_0-style blocks with scales


def test_weight_bytes_accepts_a_config_or_a_count():
    config = KNOWN_MODELS["qwen2.5-32b"]
    counts = parameter_count(config)
    assert weight_bytes(config, 16) == weight_bytes(counts, 16) == 2 * counts.total
    assert weight_bytes(config, 16) / GB == pytest.approx(65.5, abs=0.05)


def test_kv_cache_of_llama_2_7b_at_4096_tokens_is_2_gib():
    assert GiB == 2**30
    expected = 2 * 32 * 32 * 128 * 4096 * 2  # K and V, layers, heads, head_dim, tokens, bytes
    assert kv_cache_bytes(KNOWN_MODELS["llama-2-7b"], 4096) == expected == 2 * GiB
    assert kv_cache_bytes(KNOWN_MODELS["llama-2-7b"], 4096, batch_size=3, bits=8) == 3 * GiB
    # grouped-query attention: 8 KV heads instead of 32 -> a quarter of the cache
    assert kv_cache_bytes(KNOWN_MODELS["llama-3-8b"], 4096) == GiB // 2


def test_flops_follow_palm_appendix_b():
    config = KNOWN_MODELS["llama-2-7b"]
    n = parameter_count(config).active_non_embedding + 4096 * 32000  # + output layer
    assert training_flops_per_token(config, seq_len=2048) == 6 * n + 12 * 32 * 4096 * 2048
    assert inference_flops_per_token(config, seq_len=2048) == 2 * n + 4 * 32 * 4096 * 2048
    # training is three forward passes' worth; seq_len defaults to the context length
    assert training_flops_per_token(config) == 3 * inference_flops_per_token(config)
    assert training_flops_per_token(config) == training_flops_per_token(config, seq_len=4096)


def test_flops_of_a_mixture_count_active_experts_only():
    mixtral = KNOWN_MODELS["mixtral-8x7b"]
    dense_twin = mixtral.replace(n_expert=0)
    one_mlp = 3 * 4096 * 14336
    router = 4096 * 8
    extra = 2 * 32 * (one_mlp + router)  # a second expert and the router, per layer, x2 FLOPs
    assert inference_flops_per_token(mixtral, 0) == inference_flops_per_token(dense_twin, 0) + extra


def test_vram_inference_breakdown():
    estimate = vram_estimate(KNOWN_MODELS["llama-2-7b"], seq_len=4096, overhead=0.0)
    assert isinstance(estimate, MemoryEstimate)
    assert estimate.weights == 2 * 6_738_415_616
    assert estimate.kv_cache == 2 * GiB
    assert estimate.total == estimate.weights + estimate.kv_cache
    quantized = vram_estimate(KNOWN_MODELS["llama-2-7b"], seq_len=4096, bits=4, kv_bits=8)
    assert quantized.weights == 6_738_415_616 // 2
    assert quantized.kv_cache == GiB
    assert quantized.overhead == round(0.2 * (quantized.weights + quantized.kv_cache))


def test_vram_training_breakdown():
    config = ModelConfig()  # the "tiny" preset
    params = parameter_count(config).total
    s, b, h, a, layers = 64, 12, 128, 4, 4
    estimate = vram_estimate(config, training=True, batch_size=b, overhead=0.0)
    assert (estimate.weights, estimate.gradients, estimate.optimizer) == (
        4 * params,
        4 * params,
        8 * params,
    )
    korthikanti = layers * (34 * s * b * h + 5 * a * s * s * b)
    assert estimate.activations == korthikanti + s * b * config.vocab_size * 4
    assert estimate.kv_cache == 0
    assert "activations" in estimate.table() and "kv cache" not in estimate.table()
    recomputed = vram_estimate(
        config, training=True, batch_size=b, overhead=0.0, gradient_checkpointing=True
    )
    inputs = layers * 2 * s * b * h  # each layer's input, 16 bits (Korthikanti's 2sbhL)
    one_layer = 34 * s * b * h + 5 * a * s * s * b  # alive while it is recomputed
    assert recomputed.activations == inputs + one_layer + s * b * config.vocab_size * 4
    assert recomputed.weights == estimate.weights


# --- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [0, -4, float("nan"), float("inf"), "16", True])
def test_bad_bits(bits):
    with pytest.raises(ValueError, match=r"bits=.* must be a positive number of bits"):
        weight_bytes(1000, bits)
    with pytest.raises(ValueError, match=r"bits=.* must be a positive number of bits"):
        kv_cache_bytes(ModelConfig(), 10, bits=bits)


@pytest.mark.parametrize("seq_len", [-1, 2.5, "64"])
def test_bad_seq_len(seq_len):
    for fn in (kv_cache_bytes, training_flops_per_token, inference_flops_per_token):
        with pytest.raises(ValueError, match=rf"seq_len={seq_len!r} must be a non-negative"):
            fn(ModelConfig(), seq_len)


def test_other_bad_input():
    with pytest.raises(ValueError, match="batch_size=0 must be a positive integer"):
        kv_cache_bytes(ModelConfig(), 10, batch_size=0)
    with pytest.raises(TypeError, match="expected a tinyllm ModelConfig, got dict"):
        parameter_count({"d_model": 128})
    with pytest.raises(TypeError, match="weight_bytes: got -5; expected"):
        weight_bytes(-5, 16)
    with pytest.raises(ValueError, match="training keeps float32"):
        vram_estimate(ModelConfig(), training=True, bits=4)
    with pytest.raises(ValueError, match="overhead=-0.1 must be a fraction"):
        vram_estimate(ModelConfig(), overhead=-0.1)
    with pytest.raises(ValueError, match="gradient_checkpointing=True is for training"):
        vram_estimate(ModelConfig(), gradient_checkpointing=True)
    with pytest.raises(ValueError, match="unit='MB' is not one of"):
        vram_estimate(ModelConfig()).table(unit="MB")


# --- outside oracle: Hugging Face transformers ------------------------------------------


def hf_parameter_count(model):
    return sum(p.numel() for p in model.parameters())  # unique tensors: tied ones once


def test_oracle_gpt2():
    transformers = pytest.importorskip("transformers")
    hf = transformers.GPT2Config(n_embd=48, n_layer=3, n_head=4, n_positions=40, vocab_size=101)
    ours = ModelConfig(vocab_size=101, context_length=40, d_model=48, n_layer=3, n_head=4)
    model = transformers.GPT2LMHeadModel(hf)
    assert hf_parameter_count(model) == parameter_count(ours).total


LLAMA_SHAPE = dict(
    vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
    num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=128,
)  # fmt: skip


def llama_like(**changes):
    """Our config for ``LLAMA_SHAPE``, Llama's switches, then ``changes``."""
    return ModelConfig(
        vocab_size=97, context_length=128, d_model=64, n_layer=3, n_head=8, n_kv_head=2,
        d_ff=96, mlp="swiglu", norm="rmsnorm", position="rope", bias=False,
        qkv_bias=False, tie_embeddings=False,
    ).replace(**changes)  # fmt: skip


@pytest.mark.parametrize("tied", [False, True])
def test_oracle_llama_grouped_query(tied):
    transformers = pytest.importorskip("transformers")
    hf = transformers.LlamaConfig(**LLAMA_SHAPE, tie_word_embeddings=tied)
    model = transformers.LlamaForCausalLM(hf)
    assert hf_parameter_count(model) == parameter_count(llama_like(tie_embeddings=tied)).total


def test_oracle_llama_heads_wider_than_d_model_over_n_head():
    transformers = pytest.importorskip("transformers")
    hf = transformers.LlamaConfig(**LLAMA_SHAPE, head_dim=16, tie_word_embeddings=False)
    model = transformers.LlamaForCausalLM(hf)
    ours = llama_like(d_head=16)
    assert hf_parameter_count(model) == parameter_count(ours).total
    assert kv_cache_bytes(ours, seq_len=10) == 2 * 3 * 2 * 16 * 10 * 2  # 2 kv heads of 16


def test_oracle_qwen2_qkv_bias():
    transformers = pytest.importorskip("transformers")
    hf = transformers.Qwen2Config(**LLAMA_SHAPE, tie_word_embeddings=False)
    model = transformers.Qwen2ForCausalLM(hf)
    assert hf_parameter_count(model) == parameter_count(llama_like(qkv_bias=True)).total


def test_oracle_qwen3_query_key_norms():
    transformers = pytest.importorskip("transformers")
    hf = transformers.Qwen3Config(**LLAMA_SHAPE, head_dim=16, tie_word_embeddings=False)
    model = transformers.Qwen3ForCausalLM(hf)
    ours = llama_like(d_head=16, qk_norm=True)
    assert hf_parameter_count(model) == parameter_count(ours).total


def test_oracle_qwen3_moe_experts():
    transformers = pytest.importorskip("transformers")
    hf = transformers.Qwen3MoeConfig(
        **{**LLAMA_SHAPE, "intermediate_size": 200}, moe_intermediate_size=96, head_dim=16,
        num_experts=4, num_experts_per_tok=2, tie_word_embeddings=False,
    )  # fmt: skip
    model = transformers.Qwen3MoeForCausalLM(hf)
    ours = llama_like(d_head=16, qk_norm=True, n_expert=4, top_k=2)
    assert hf_parameter_count(model) == parameter_count(ours).total


def test_oracle_mixtral_experts():
    transformers = pytest.importorskip("transformers")
    hf = transformers.MixtralConfig(
        **LLAMA_SHAPE, num_local_experts=4, num_experts_per_tok=2, tie_word_embeddings=False
    )
    model = transformers.MixtralForCausalLM(hf)
    counts = parameter_count(llama_like(n_expert=4, top_k=2))
    assert hf_parameter_count(model) == counts.total
    assert isinstance(counts, ParameterCount) and counts.active < counts.total
