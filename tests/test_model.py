"""The decoder: configs, attention layouts, RoPE, MoE, whole-model gradients and training."""

import numpy as np
import pytest

import tinyllm
import tinyllm.functional as F
from tinyllm import Tensor
from tinyllm.models import ModelConfig, Transformer, get_preset
from tinyllm.nn import CausalSelfAttention, MoE, RotaryEmbedding


def tiny(preset, **changes):
    sizes = dict(vocab_size=11, context_length=16, d_model=16, n_layer=2, n_head=4)
    return get_preset(preset, **{**sizes, **changes})


def ids(config, shape=(2, 8), seed=0):
    return np.random.default_rng(seed).integers(0, config.vocab_size, shape)


def to_float64(model):
    for p in model.parameters():
        p.data = p.data.astype(np.float64)
    return model


# --- configs and bad input -------------------------------------------------------------------
@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(d_model=100, n_head=3), "d_model=100 is not divisible by n_head=3"),
        (dict(n_head=4, n_kv_head=3), "n_head=4 is not divisible by n_kv_head=3"),
        (dict(n_expert=4, top_k=5), "top_k=5 must be between 1 and n_expert=4"),
        (dict(mlp="relu"), "mlp='relu' is not one of"),
        (dict(position="rope", rope_scaling={"type": "ntk"}), "rope_scaling type 'ntk'"),
        (
            dict(
                position="rope",
                rope_scaling={
                    "type": "llama3",
                    "factor": 8.0,
                    "low_freq_factor": 4,
                    "high_freq_factor": 1,
                    "original_context_length": 16,
                },
            ),
            "0 < low_freq_factor < high_freq_factor .* got low_freq_factor=4, high_freq_factor=1",
        ),
        (dict(n_layer=0), "n_layer=0 must be a positive integer"),
        (dict(d_head=0), "d_head=0 must be a positive integer or None"),
        (dict(position="rope", d_head=7), "head_dim=7 must be even"),
    ],
)
def test_bad_configs_name_the_bad_value(changes, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**changes)


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown model preset 'huge'.*tiny"):
        get_preset("huge")


def test_sequence_longer_than_the_context_and_bad_token_ids_are_clear_errors():
    config = tiny("tiny-llama")
    model = Transformer(config)
    with pytest.raises(
        ValueError, match="17 tokens at position 0 runs past the context_length of 16"
    ):
        model(np.zeros((1, 17), np.int64))
    with pytest.raises(IndexError, match="token id 11 is outside the vocabulary"):
        model(np.full((1, 4), 11))
    with pytest.raises(ValueError, match="integer token ids of shape"):
        model(np.zeros((4,), np.int64))


def test_config_dict_round_trip_and_unknown_fields():
    config = tiny("tiny-moe")
    assert ModelConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match=r"unknown fields \['n_heads'\]"):
        ModelConfig.from_dict({"n_heads": 4})


def test_parameter_count_matches_the_calculator():
    from tinyllm.analysis import parameter_count

    for config in (
        get_preset("tiny"),
        get_preset("tiny-llama"),
        get_preset("tiny-llama", qk_norm=True, d_head=48),
        get_preset("tiny-moe"),
    ):
        assert Transformer(config).num_parameters() == parameter_count(config).total, config


def test_same_seed_same_model_different_seed_different_model():
    config = tiny("tiny-llama")
    a, b, c = Transformer(config, seed=1), Transformer(config, seed=1), Transformer(config, seed=2)
    for (name, pa), (_, pb), (_, pc) in zip(
        a.named_parameters(), b.named_parameters(), c.named_parameters()
    ):
        np.testing.assert_array_equal(pa.numpy(), pb.numpy(), err_msg=name)
        assert name.endswith("norm.weight") or not np.array_equal(pa.numpy(), pc.numpy()), name


# --- attention layouts and RoPE ----------------------------------------------------------------
def test_grouped_query_attention_equals_multi_head_with_copied_kv_heads():
    x = Tensor(np.random.default_rng(0).standard_normal((2, 5, 16)).astype(np.float32))
    gqa = CausalSelfAttention(16, n_head=4, n_kv_head=2, seed=0)
    mha = CausalSelfAttention(16, n_head=4, n_kv_head=4, seed=0)
    mha.q_proj, mha.o_proj = gqa.q_proj, gqa.o_proj
    for name in ("k_proj", "v_proj"):  # each kv head serves 2 query heads: repeat its columns
        w = getattr(gqa, name).weight.numpy().reshape(16, 2, 1, 4)
        b = getattr(gqa, name).bias
        getattr(mha, name).weight.data = np.repeat(w, 2, axis=2).reshape(16, 16)
        getattr(mha, name).bias = b  # zero either way (no qkv bias by default)
    np.testing.assert_allclose(gqa(x).numpy(), mha(x).numpy(), rtol=1e-5, atol=1e-6)
    mqa = CausalSelfAttention(16, n_head=4, n_kv_head=1, seed=0)
    assert mqa.k_proj.weight.shape == (16, 4)


def test_rope_scores_depend_only_on_relative_position():
    rope = RotaryEmbedding(head_dim=8, theta=10000.0)
    rng = np.random.default_rng(0)
    q = Tensor(rng.standard_normal((1, 1, 1, 8)).astype(np.float32))
    k = Tensor(rng.standard_normal((1, 1, 1, 8)).astype(np.float32))

    def score(m, n):
        return float((rope(q, start=m) * rope(k, start=n)).sum().item())

    assert score(3, 1) == pytest.approx(score(10, 8), rel=1e-5)
    assert score(3, 1) == pytest.approx(score(42, 40), rel=1e-5)
    assert score(3, 1) != pytest.approx(score(3, 2), rel=1e-3)
    rotated = rope(q, start=5).numpy()  # a rotation keeps the length
    assert np.linalg.norm(rotated) == pytest.approx(np.linalg.norm(q.numpy()), rel=1e-5)


def test_rope_gradient_and_tables_match_transformers():
    x = Tensor(np.random.default_rng(0).standard_normal((1, 2, 3, 4)), requires_grad=True)
    angles = np.random.default_rng(1).uniform(0, 6, (3, 2))
    angles = np.concatenate([angles, angles], axis=-1)
    assert tinyllm.gradcheck(lambda t: F.apply_rope(t, np.cos(angles), np.sin(angles)), [x])

    rope_utils = pytest.importorskip("transformers.modeling_rope_utils")
    from transformers import LlamaConfig

    for params, seq_len in [
        ({"rope_type": "linear", "factor": 4.0}, 64),
        ({"rope_type": "dynamic", "factor": 2.0}, 100),
        ({"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 32}, 64),
        ({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16,
          "beta_fast": 16, "beta_slow": 2, "mscale": 1.0, "mscale_all_dim": 0.5}, 64),
        ({"rope_type": "llama3", "factor": 8.0, "original_max_position_embeddings": 16,
          "low_freq_factor": 1.0, "high_freq_factor": 4.0}, 64),
    ]:  # fmt: skip
        hf = LlamaConfig(
            hidden_size=64, num_attention_heads=2, max_position_embeddings=64,
            rope_parameters={"rope_theta": 500.0, **params},
        )  # fmt: skip
        ref_freq, ref_factor = rope_utils.ROPE_INIT_FUNCTIONS[params["rope_type"]](
            hf, "cpu", seq_len=seq_len
        )
        from tinyllm.models.hf import config_from_hf

        config = config_from_hf({**hf.to_dict(), "model_type": "llama"})
        ours = RotaryEmbedding(32, config.rope_theta, config.rope_scaling, config.context_length)
        freq, factor = ours.inverse_frequencies(seq_len)
        np.testing.assert_allclose(freq, ref_freq.numpy(), rtol=1e-5, err_msg=str(params))
        assert factor == pytest.approx(ref_factor), params


def test_sliding_window_hides_keys_too_far_back():
    rng = np.random.default_rng(0)
    q, k, v = (Tensor(rng.standard_normal((1, 1, 6, 4)).astype(np.float32)) for _ in range(3))
    out = F.scaled_dot_product_attention(q, k, v, window=2).numpy()
    # query 5 sees only keys 4 and 5: same as attending over those two alone
    alone = F.scaled_dot_product_attention(q[:, :, 5:], k[:, :, 4:6], v[:, :, 4:6]).numpy()
    np.testing.assert_allclose(out[:, :, 5:], alone, rtol=1e-5)
    with pytest.raises(ValueError, match="window=0 needs causal=True"):
        F.scaled_dot_product_attention(q, k, v, window=0)


# --- mixture of experts -----------------------------------------------------------------------
def test_moe_sorted_dispatch_equals_dense_and_counts_add_up():
    x = Tensor(np.random.default_rng(0).standard_normal((3, 7, 16)), requires_grad=True)
    moe = MoE(16, 24, n_expert=4, top_k=2, seed=1)
    for p in moe.parameters():
        p.data = p.data.astype(np.float64)
    results = []
    for dense in (False, True):
        moe.zero_grad()
        x.grad = None
        y, aux = moe(x, dense=dense)
        (y.sum() + aux).backward()
        results.append((y.numpy(), aux.item(), x.grad, moe.router.weight.grad))
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    assert moe.expert_counts.sum() == 3 * 7 * 2 and moe.expert_counts.shape == (4,)


def test_moe_on_a_backend_that_reads_nothing_back_dispatches_densely(monkeypatch):
    """On CuPy (``reads_values`` False: a read would wait for the GPU) the experts' slice
    sizes are not read: the dense dispatch runs, with the same output, and the counts are
    read only when asked for."""
    moe = MoE(16, 24, n_expert=4, top_k=2, seed=1)
    x = np.random.default_rng(0).standard_normal((3, 7, 16)).astype(np.float32)
    sorted_y = moe(x)[0].numpy()
    sorted_counts = moe.expert_counts
    backend, reads = moe.router.weight.backend, []
    monkeypatch.setattr(backend, "reads_values", lambda array: False)
    monkeypatch.setattr(backend, "to_numpy", lambda array: reads.append(array) or np.asarray(array))
    called = []
    monkeypatch.setattr(moe, "_sorted", lambda *args: called.append("sorted"))
    y = moe(x)[0]
    assert not reads and not called
    np.testing.assert_allclose(y.data, sorted_y, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(moe.expert_counts, sorted_counts)
    assert len(reads) == 1  # read when asked for


def test_moe_routing_and_load_balancing_loss_match_transformers():
    torch = pytest.importorskip("torch")
    mixtral = pytest.importorskip("transformers.models.mixtral.modeling_mixtral")
    moe = MoE(16, 24, n_expert=4, top_k=2, seed=2)
    x = np.random.default_rng(3).standard_normal((2, 5, 16)).astype(np.float32)
    y, aux = moe(x)
    logits = torch.tensor(x.reshape(10, 16) @ moe.router.weight.numpy())
    ref_aux = mixtral.load_balancing_loss_func((logits,), num_experts=4, top_k=2)
    assert aux.item() == pytest.approx(float(ref_aux), rel=1e-5)
    # by hand: each token's output is the gate-weighted sum of its two experts
    probs = torch.softmax(logits, -1).numpy()
    token = x.reshape(10, 16)[7]
    best = np.argsort(-probs[7])[:2]
    gates = probs[7, best] / probs[7, best].sum()
    expected = sum(g * moe.experts[e](Tensor(token[None])).numpy()[0] for g, e in zip(gates, best))
    np.testing.assert_allclose(y.numpy().reshape(10, 16)[7], expected, rtol=1e-5, atol=1e-6)


def test_moe_top_k_above_expert_count_is_an_error():
    with pytest.raises(ValueError, match="top_k=3 must be between 1 and n_expert=2"):
        MoE(8, 8, n_expert=2, top_k=3)


# --- the whole model --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "preset, changes",
    [
        ("tiny", {}),
        ("tiny-llama", {}),
        ("tiny-llama", {"qk_norm": True, "d_head": 6}),  # Qwen3's shape
        ("tiny-moe", {"n_expert": 3}),
    ],
)
def test_whole_model_gradients_pass_finite_differences(preset, changes):
    config = get_preset(
        preset, vocab_size=7, context_length=6, d_model=8, n_layer=1, n_head=2, d_ff=8, **changes
    )
    model = to_float64(Transformer(config, seed=0))
    x, y = ids(config, (2, 5), seed=1), ids(config, (2, 5), seed=2)
    assert tinyllm.gradcheck(lambda *params: model(x, y)[1].reshape(1), model.parameters())


@pytest.mark.parametrize("preset", ["tiny", "tiny-moe"])
def test_tiny_model_overfits_one_batch(preset):
    config = tiny(preset, vocab_size=13, dropout=0.0)
    model = Transformer(config, seed=0)
    x = ids(config, (4, 12), seed=3)
    x[:, 0] = range(4)  # distinct first tokens: no two rows start with one context, two answers
    y = np.roll(x, -1, axis=1)
    params = model.parameters()
    m = [np.zeros_like(p.data) for p in params]
    v = [np.zeros_like(p.data) for p in params]
    ces = []  # cross-entropy without the aux loss, of each step's forward
    for step in range(1, 201):  # plain Adam, written out
        model.zero_grad()
        logits, loss = model(x, y)
        loss.backward()
        ces.append(F.cross_entropy(logits.detach().reshape(-1, 13), y.reshape(-1)).item())
        for p, mi, vi in zip(params, m, v):
            mi[:] = 0.9 * mi + 0.1 * p.grad
            vi[:] = 0.999 * vi + 0.001 * p.grad**2
            p.data = p.data - 1e-2 * (mi / (1 - 0.9**step)) / (
                np.sqrt(vi / (1 - 0.999**step)) + 1e-8
            )
    # An expert choice that flips can throw one step off (Adam at lr 1e-2 recovers within
    # steps): the model has fitted the batch when it stays near zero loss over the last 50.
    ce = min(ces[-50:])
    assert ce < 0.01, f"{preset}: cross-entropy {ce:.3f} at best over steps 151-200"
    assert np.median(ces[-50:]) < 0.05, f"{preset}: median {np.median(ces[-50:]):.3f}"


def test_tied_embeddings_share_one_parameter_and_untied_have_a_head():
    tied, untied = Transformer(tiny("tiny")), Transformer(tiny("tiny-llama"))
    assert tied.lm_head is None and "lm_head.weight" not in tied.state_dict()
    assert untied.state_dict()["lm_head.weight"].shape == (16, 11)


def test_moe_model_exposes_expert_counts_per_layer():
    config = tiny("tiny-moe")
    model = Transformer(config)
    model(ids(config))
    counts = model.expert_counts()
    assert counts.shape == (2, config.n_expert)
    assert (counts.sum(axis=1) == 2 * 8 * config.top_k).all()


def test_jitted_model_loss_and_gradients_equal_eager():
    jax = pytest.importorskip("jax")
    config = tiny("tiny-moe")
    x, y = ids(config), ids(config, seed=1)

    def run(compile):
        model = Transformer(config, seed=0)

        def loss_fn(params, x, y):
            with model.bind(params):
                return model(Tensor(x), Tensor(y))[1]

        step = tinyllm.value_and_grad(loss_fn)
        step = jax.jit(step) if compile else step
        arrays = {name: p.data for name, p in model.named_parameters()}
        loss, grads = step(arrays, model.token_embedding.weight.backend.asarray(x),
                           model.token_embedding.weight.backend.asarray(y))  # fmt: skip
        return float(loss), {k: np.asarray(g) for k, g in grads.items()}

    eager_loss, eager_grads = run(compile=False)
    with tinyllm.use_backend("jax"):
        jit_loss, jit_grads = run(compile=True)
    assert jit_loss == pytest.approx(eager_loss, rel=1e-5)
    for name, grad in eager_grads.items():
        np.testing.assert_allclose(jit_grads[name], grad, rtol=2e-3, atol=2e-6, err_msg=name)
