"""LoRA: an adapted model starts as its base, merged equals unmerged, training moves the
adapters alone, several adapters share one base, checkpoints rebuild the adapted model, and
every wrong target, rank or base is named."""

import numpy as np
import pytest

from tinyllm.data import RandomBatches
from tinyllm.models import Transformer, get_preset
from tinyllm.models.adapters import load_adapter, save_adapter
from tinyllm.nn import Linear
from tinyllm.nn.lora import (
    LoRALinear,
    add_trainable_tokens,
    apply_lora,
    lora_layers,
    lora_state_dict,
    lora_summary,
    merge,
    merge_and_unload,
    set_adapter,
    trainable_tokens,
    unmerge,
)
from tinyllm.train import TrainConfig, Trainer, latest_checkpoint
from tinyllm.train.checkpoint import load_model

IDS = np.random.default_rng(0).integers(0, 65, (2, 12))
TOKENS = np.tile(np.arange(20), 60)


def model(preset="tiny-llama", **changes):
    return Transformer(get_preset(preset, n_layer=2, d_model=32, n_head=4, **changes), seed=0)


def logits(m):
    return m.eval()(IDS)[0].numpy()


def randomize(m, name=None, seed=1):
    """Nonzero B for every adapter ``name`` (default: the active one)."""
    rng = np.random.default_rng(seed)
    for _, layer in lora_layers(m):
        adapter = layer.adapters[name or layer.active]
        adapter.B.data = (0.2 * rng.standard_normal(adapter.B.shape)).astype(np.float32)
    return m


def train(m, steps=3, out=None, resume=False):
    config = TrainConfig(steps=steps, batch_size=4, lr=2e-2, schedule="constant", eval_interval=0,
                         checkpoint_interval=2, progress=False)  # fmt: skip
    trainer = Trainer(m.train(), config, RandomBatches(TOKENS, 4, 16, seed=0), out_dir=out)
    trainer.fit(resume=resume)
    return trainer


def test_an_adapted_model_starts_as_its_base():
    base = model()
    expected = logits(base)
    adapted = apply_lora(base, r=4, alpha=8, target_modules=("q_proj", "v_proj", "mlp.*"))
    np.testing.assert_array_equal(logits(adapted), expected)
    paths = [path for path, _ in lora_layers(adapted)]
    assert paths[:5] == [f"blocks.0.{p}" for p in ("attention.q_proj", "attention.v_proj",
                                                   "mlp.gate", "mlp.up", "mlp.down")]  # fmt: skip
    trainable = [name for name, p in adapted.named_parameters() if p.requires_grad]
    assert trainable and all(".adapters.default." in name for name in trainable)


def test_the_layer_computes_the_low_rank_update_as_peft_writes_it():
    layer = LoRALinear(Linear(6, 5, seed=0), r=2, alpha=3, seed=0)
    adapter = layer.adapters["default"]
    adapter.B.data = np.random.default_rng(2).standard_normal((5, 2)).astype(np.float32)
    x = np.random.default_rng(3).standard_normal((4, 6)).astype(np.float32)
    A, B, W = adapter.A.numpy(), adapter.B.numpy(), layer.base.weight.numpy()
    expected = x @ W + layer.base.bias.numpy() + x @ A.T @ B.T * (3 / 2)
    np.testing.assert_allclose(layer(x).numpy(), expected, rtol=1e-5, atol=1e-6)
    assert A.shape == (2, 6) and np.abs(A).max() <= 1 / np.sqrt(6)  # PEFT's kaiming-uniform A


@pytest.mark.parametrize("preset", ["tiny", "tiny-llama"])
def test_merged_equals_unmerged_and_unmerge_restores_the_base(preset):
    m = randomize(apply_lora(model(preset), r=4, alpha=8, target_modules="*"))
    apply_lora(m, r=2, alpha=2, target_modules="*", name="other")
    weights = {name: p.numpy().copy() for name, p in m.named_parameters() if ".base." in name}
    unmerged = logits(m)
    assert np.abs(unmerged - logits(model(preset))).max() > 1e-3  # the adapters change it
    np.testing.assert_allclose(logits(merge(m)), unmerged, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="already merged; unmerge it first"):
        merge(m)
    with pytest.raises(ValueError, match="'default' is merged; unmerge it first"):
        lora_layers(m)[0][1].set_adapter("other")
    unmerge(m)
    for name, p in m.named_parameters():
        if name in weights:
            np.testing.assert_allclose(p.numpy(), weights[name], atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="is not merged"):
        unmerge(m)
    plain = merge_and_unload(m)
    assert not lora_layers(plain) and plain.has_hf_form()
    np.testing.assert_allclose(logits(plain), unmerged, atol=1e-5, rtol=0)


def test_training_moves_the_adapters_alone_and_adamw_keeps_state_for_them_only():
    m = apply_lora(model(), r=4, alpha=8, target_modules=("q_proj", "v_proj"))
    before = m.state_dict()
    trainer = train(m)
    after = m.state_dict()
    adapter = lora_state_dict(m)
    for name in before:
        if name in adapter:
            assert not np.array_equal(before[name], after[name]), name
        else:
            assert before[name].tobytes() == after[name].tobytes(), name
    state = trainer.optimizer.state_dict()
    assert set(state["exp_avg"]) == set(state["exp_avg_sq"]) == set(adapter)
    summary = lora_summary(m)
    assert summary["adapter_parameters"] == summary["trainable_parameters"]
    assert summary["adapter_parameters"] == sum(a.size for a in adapter.values())
    assert summary["adapter_bytes"] == 4 * summary["adapter_parameters"]  # float32
    assert summary["trainable_fraction"] == summary["adapter_parameters"] / m.num_parameters()


def test_targets_take_our_paths_wildcards_and_hugging_face_names():
    def adapted(preset, targets):
        return [path for path, _ in lora_layers(apply_lora(model(preset), 2, 4, targets))]

    llama = adapted("tiny-llama", ["gate_proj", "blocks.1.attention.o_proj"])
    assert llama == ["blocks.0.mlp.gate", "blocks.1.attention.o_proj", "blocks.1.mlp.gate"]
    gpt2 = adapted("tiny", "c_attn")  # GPT-2's fused query, key and value: our three layers
    assert gpt2[:3] == [f"blocks.0.attention.{p}_proj" for p in "qkv"] and len(gpt2) == 6
    assert adapted("tiny", "mlp.c_proj") == ["blocks.0.mlp.down", "blocks.1.mlp.down"]
    assert len(adapted("tiny", "c_proj")) == 4  # both output projections, as in PEFT
    assert adapted("tiny-llama", "lm_head") == ["lm_head"]  # untied: an output layer of its own


def test_wrong_targets_ranks_and_names_are_named():
    with pytest.raises(ValueError, match=r"target 'query' names no Linear layer; the model's "
                       r"are blocks\.N\.attention\.q_proj, .*mlp\.down, lm_head \(Hugging Face names: "
                       r"model\.layers\.N\.self_attn\.q_proj"):  # fmt: skip
        apply_lora(model(), target_modules=["q_proj", "query"])
    with pytest.raises(ValueError, match=r"r=17 must be an integer from 1 to min\(in, out\) = "
                       r"16 for blocks\.0\.attention\.v_proj \(32 -> 16 features\)"):  # fmt: skip
        apply_lora(model(n_kv_head=2), r=17)
    with pytest.raises(ValueError, match="r=0 must be an integer"):
        apply_lora(model(), r=0)
    with pytest.raises(ValueError, match="alpha=-1 must be a number > 0"):
        apply_lora(model(), alpha=-1)
    m = apply_lora(model(), r=2)
    with pytest.raises(ValueError, match="already has an adapter named 'default'"):
        apply_lora(m, r=2)
    with pytest.raises(ValueError, match="adapter name 'a.b' must be a non-empty string"):
        apply_lora(m, r=2, name="a.b")
    with pytest.raises(
        ValueError, match=r"no adapter named 'other' in the model \(it has \['default'\]\)"
    ):
        set_adapter(m, "other")


def test_several_adapters_on_one_base_switch_save_and_load_each(tmp_path):
    m = randomize(apply_lora(model(), r=2, alpha=4, target_modules="q_proj", name="math"))
    apply_lora(m, r=4, alpha=4, target_modules=("q_proj", "v_proj"), name="sort")
    randomize(m, "sort", seed=2)
    assert all(layer.active == "math" for _, layer in lora_layers(m))  # the first stays active
    math = logits(m)  # v_proj has no "math" adapter: it adds nothing
    set_adapter(m, "sort")
    sort = logits(m)
    trainable = {name for name, p in m.named_parameters() if p.requires_grad}
    assert trainable == set(lora_state_dict(m, "sort"))  # only the active adapter trains
    assert np.abs(sort - math).max() > 1e-3
    for name in ("math", "sort"):
        save_adapter(m, tmp_path / name, name=name)
    fresh = model()
    load_adapter(fresh, tmp_path / "math", name="math")
    np.testing.assert_allclose(logits(fresh), math, atol=1e-5, rtol=0)
    load_adapter(fresh, tmp_path / "sort", name="sort")
    np.testing.assert_allclose(logits(fresh), sort, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="already has an adapter named 'sort'"):
        load_adapter(fresh, tmp_path / "sort", name="sort")


def test_an_adapter_for_another_base_is_refused_with_the_shapes(tmp_path):
    save_adapter(randomize(apply_lora(model(), r=2)), tmp_path / "adapter")
    wider = Transformer(get_preset("tiny-llama", n_layer=2, d_model=48, n_head=4), seed=0)
    with pytest.raises(ValueError, match=r"lora_A \(2, 32\) and lora_B \(32, 2\) for "
                       r"model\.layers\.0\.self_attn\.q_proj, but this model's .* maps 48 -> 48 "
                       r"features .*another base model"):  # fmt: skip
        load_adapter(wider, tmp_path / "adapter")
    shallower = Transformer(get_preset("tiny-llama", n_layer=1, d_model=32, n_head=4), seed=0)
    with pytest.raises(ValueError, match=r"adapts model\.layers\.1\.self_attn\.q_proj, which "
                       "this LlamaForCausalLM does not have"):  # fmt: skip
        load_adapter(shallower, tmp_path / "adapter")
    assert not lora_layers(wider) and not lora_layers(shallower)  # nothing half-loaded
    with pytest.raises(FileNotFoundError, match="expected adapter_config.json"):
        load_adapter(wider, tmp_path)


def test_a_checkpoint_rebuilds_the_adapted_model_and_the_run_resumes(tmp_path):
    def adapted():
        m = apply_lora(model(dropout=0.1), r=2, alpha=4, target_modules="*_proj", dropout=0.1)
        return add_trainable_tokens(m, [3, 5])

    whole = adapted()
    train(whole, steps=4)
    first = adapted()
    train(first, steps=2, out=tmp_path)
    rebuilt = load_model(latest_checkpoint(tmp_path))
    np.testing.assert_array_equal(logits(rebuilt), logits(first))
    assert [p for p, _ in lora_layers(rebuilt)] == [p for p, _ in lora_layers(first)]
    assert rebuilt.token_embedding.token_ids.numpy().tolist() == [3, 5]
    resumed = adapted()
    train(resumed, steps=4, out=tmp_path, resume=True)
    for name, array in whole.state_dict().items():
        np.testing.assert_array_equal(resumed.state_dict()[name], array, err_msg=name)


def test_a_merged_model_is_described_merged_and_rebuilds_so():
    m = merge(randomize(apply_lora(model(), r=2, target_modules="*_proj")))
    copy = Transformer.from_description(m.describe()).load_state_dict(m.state_dict())
    np.testing.assert_array_equal(logits(copy), logits(m))
    np.testing.assert_allclose(logits(unmerge(copy)), logits(unmerge(m)), atol=1e-6, rtol=0)


@pytest.mark.parametrize("preset", ["tiny", "tiny-llama"])
def test_trainable_tokens_train_their_rows_alone_in_and_out(preset):
    base = model(preset)
    expected = logits(base)
    m = add_trainable_tokens(apply_lora(base, r=2, target_modules="q_proj"), [1, 2, 5])
    np.testing.assert_array_equal(logits(m), expected)  # the rows start as they were
    table = m.token_embedding.base.weight.numpy().copy()
    trainer = train(m)
    assert "token_embedding.values" in set(trainer.optimizer.state_dict()["exp_avg"])
    assert m.token_embedding.base.weight.numpy().tobytes() == table.tobytes()  # frozen base
    moved = np.abs(m.token_embedding.weight.numpy() - table).max(axis=1) > 0
    assert moved.nonzero()[0].tolist() == [
        1,
        2,
        5,
    ]  # those rows alone, as inputs and (tied) outputs
    adapted = logits(m)
    plain = merge_and_unload(m)
    assert not trainable_tokens(plain) and plain.has_hf_form()
    np.testing.assert_allclose(logits(plain), adapted, atol=1e-5, rtol=0)
    with pytest.raises(
        ValueError, match=r"token ids \[0, 65\] must be one or more ids from 0 to 64"
    ):
        add_trainable_tokens(model(preset), [0, 65])
    with pytest.raises(ValueError, match="final_norm is a LayerNorm|final_norm is a RMSNorm"):
        add_trainable_tokens(model(preset), [0], path="final_norm")
