"""LoRA adapters in PEFT's format, with ``peft`` itself as the oracle: a tinyllm adapter
loads with ``PeftModel.from_pretrained`` on the ``transformers`` form of its base and gives
the same logits, and an adapter PEFT made and trained loads into tinyllm with PEFT's logits -
GPT-2's fused c_attn and a Llama shape both ways; an adapter trained on a quantized base (QLoRA)
loads in PEFT on the float base all the same."""

import json

import numpy as np
import pytest

from tinyllm.data import RandomBatches
from tinyllm.models import Transformer, get_preset
from tinyllm.models.adapters import load_adapter, save_adapter
from tinyllm.nn.lora import add_trainable_tokens, apply_lora, lora_layers
from tinyllm.quant import quantize
from tinyllm.train import TrainConfig, Trainer

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

IDS = np.random.default_rng(0).integers(0, 65, (2, 12))
SHAPE = dict(n_layer=2, d_model=32, n_head=4)
# ours -> PEFT: GPT-2's q and v share c_attn (rank 2r, in rank_pattern), o and the MLP's
# down are both "c_proj"; Llama's MLP targeted by PEFT's name
OURS = {
    "tiny": ["q_proj", "v_proj", "mlp.down"],
    "tiny-llama": ["q_proj", "v_proj", "down_proj", "lm_head"],
}
# PEFT -> ours: its own targets, one layer at another rank and alpha, trained token rows
THEIRS = {
    "tiny": dict(target_modules=["c_attn", "c_proj"], rank_pattern={"h.1.attn.c_proj": 2},
                 alpha_pattern={"h.1.attn.c_proj": 3}, trainable_token_indices=[2, 11, 12]),
    "tiny-llama": dict(target_modules=["q_proj", "k_proj", "o_proj", "gate_proj", "up_proj"],
                       rank_pattern={"layers.0.mlp.up_proj": 2},
                       trainable_token_indices={"embed_tokens": [0, 1]}),
}  # fmt: skip
TOKENS = [1, 2, 3, 12]  # ids of IDS that train (tied: GPT-2's output rows too)


def base_folder(preset, folder):
    """A tinyllm base model written as a Hugging Face folder; the model back, seeded."""
    model = Transformer(get_preset(preset, **SHAPE), seed=0)
    model.save_pretrained(folder)
    return model


def peft_logits(model):
    with torch.no_grad():
        return model(torch.tensor(IDS)).logits.numpy()


def peft_model(base, adapter):
    hf = transformers.AutoModelForCausalLM.from_pretrained(base)
    return peft.PeftModel.from_pretrained(hf, adapter).eval()


@pytest.mark.parametrize("preset", OURS)
def test_a_trained_tinyllm_adapter_loads_in_peft_with_the_same_logits(preset, tmp_path):
    model = apply_lora(base_folder(preset, tmp_path / "base"), 4, 8, OURS[preset])
    add_trainable_tokens(model, TOKENS)
    config = TrainConfig(steps=3, batch_size=4, lr=3e-2, eval_interval=0, progress=False)
    Trainer(model, config, RandomBatches(np.tile(np.arange(20), 50), 4, 16, seed=0)).fit()
    assert all(
        np.abs(layer.adapters["default"].B.numpy()).max() > 0 for _, layer in lora_layers(model)
    )
    save_adapter(model, tmp_path / "adapter", base_model=tmp_path / "base")
    ours = model.eval()(IDS)[0].numpy()
    theirs = peft_logits(peft_model(tmp_path / "base", tmp_path / "adapter"))
    np.testing.assert_allclose(theirs, ours, atol=1e-4, rtol=0)
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tmp_path / "base")
    assert list(config["trainable_token_indices"].values()) == [TOKENS]
    if preset == "tiny":  # q and v in c_attn: rank 8 (alpha 16 keeps the scale), down rank 4
        assert config["target_modules"] == ["c_attn", "mlp.c_proj"]
        ranks = {config["r"], *config["rank_pattern"].values()}
        assert ranks == {4, 8} and len(config["rank_pattern"]) == 2 and config["fan_in_fan_out"]
    else:
        assert config["target_modules"] == ["down_proj", "lm_head", "q_proj", "v_proj"]


@pytest.mark.parametrize("preset", THEIRS)
def test_an_adapter_peft_made_and_trained_loads_into_tinyllm_with_its_logits(preset, tmp_path):
    base_folder(preset, tmp_path / "base")
    torch.manual_seed(0)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    lora = peft.LoraConfig(r=4, lora_alpha=6, task_type="CAUSAL_LM", **THEIRS[preset])
    trained = peft.get_peft_model(hf, lora)
    optimizer = torch.optim.AdamW([p for p in trained.parameters() if p.requires_grad], lr=3e-2)
    ids = torch.tensor(np.tile(np.arange(16), (4, 1)))
    for _ in range(3):
        optimizer.zero_grad()
        trained(ids, labels=ids).loss.backward()
        optimizer.step()
    trained.save_pretrained(tmp_path / "adapter")
    expected = peft_logits(trained.eval())
    ours = load_adapter(Transformer.from_pretrained(tmp_path / "base"), tmp_path / "adapter")
    np.testing.assert_allclose(ours(IDS)[0].numpy(), expected, atol=1e-4, rtol=0)
    before = Transformer.from_pretrained(tmp_path / "base")(IDS)[0].numpy()
    assert np.abs(expected - before).max() > 1e-3  # the adapter changes the logits


@pytest.mark.parametrize("preset", OURS)
def test_an_adapter_trained_on_a_quantized_base_loads_in_peft_on_the_float_base(preset, tmp_path):
    base = quantize(base_folder(preset, tmp_path / "base"), "q4_0")  # QLoRA: a 4-bit base
    model = apply_lora(base, 4, 8, OURS[preset])
    config = TrainConfig(steps=3, batch_size=4, lr=3e-2, eval_interval=0, progress=False)
    Trainer(model, config, RandomBatches(np.tile(np.arange(20), 50), 4, 16, seed=0)).fit()
    save_adapter(model, tmp_path / "adapter", base_model=tmp_path / "base")
    ours = load_adapter(Transformer.from_pretrained(tmp_path / "base"), tmp_path / "adapter")
    theirs = peft_logits(peft_model(tmp_path / "base", tmp_path / "adapter"))
    np.testing.assert_allclose(theirs, ours(IDS)[0].numpy(), atol=1e-4, rtol=0)
    before = Transformer.from_pretrained(tmp_path / "base")(IDS)[0].numpy()
    assert np.abs(theirs - before).max() > 1e-3  # the adapter changes the logits
