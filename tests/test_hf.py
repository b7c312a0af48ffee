"""Hugging Face format: logits equal ``transformers``' both ways, safetensors read and written."""

import json

import numpy as np
import pytest

from tinyllm.models import Transformer, get_preset
from tinyllm.models.hf import config_from_hf
from tinyllm.models.weights import load_weights, read_safetensors, write_safetensors

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

SMALL = dict(
    vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2,
)  # fmt: skip
GPT2 = dict(vocab_size=97, n_embd=32, n_layer=2, n_head=4, n_positions=32)

CASES = {
    "gpt2": ("GPT2", GPT2),
    "gpt2-untied": ("GPT2", {**GPT2, "tie_word_embeddings": False}),
    "llama-gqa": ("Llama", SMALL),
    "llama-mqa-tied": ("Llama", {**SMALL, "num_key_value_heads": 1, "tie_word_embeddings": True}),
    "llama-linear-rope": ("Llama", {**SMALL, "rope_scaling": {"rope_type": "linear", "factor": 2.0}}),
    "llama-dynamic-rope": ("Llama", {**SMALL, "max_position_embeddings": 8,
                                     "rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}),
    "llama-yarn-rope": ("Llama", {**SMALL, "rope_scaling": {
        "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8}}),
    "llama3-rope": ("Llama", {**SMALL, "max_position_embeddings": 512, "tie_word_embeddings": True,
                              "rope_scaling": {"rope_type": "llama3", "factor": 8.0,
                                               "original_max_position_embeddings": 64,
                                               "low_freq_factor": 1.0, "high_freq_factor": 4.0}}),
    "llama-wide-heads": ("Llama", {**SMALL, "head_dim": 16}),  # 4 x 16 > hidden_size 32
    "qwen2-narrow-heads": ("Qwen2", {**SMALL, "head_dim": 4}),
    "qwen3-wide-heads-tied": ("Qwen3", {**SMALL, "head_dim": 16, "tie_word_embeddings": True}),
    "mistral-sliding-window": ("Mistral", {**SMALL, "sliding_window": 5}),
    "qwen2": ("Qwen2", SMALL),
    "mixtral": ("Mixtral", {**SMALL, "num_local_experts": 4, "num_experts_per_tok": 2}),
    "qwen3-moe": ("Qwen3Moe", {**SMALL, "head_dim": 16, "num_experts": 4, "num_experts_per_tok": 2,
                               "moe_intermediate_size": 24, "norm_topk_prob": True}),
    "qwen3-moe-unnormalized": ("Qwen3Moe", {**SMALL, "head_dim": 8, "num_experts": 4,
                                            "num_experts_per_tok": 2, "moe_intermediate_size": 24}),
}  # fmt: skip


def hf_model(case):
    family, options = CASES[case]
    torch.manual_seed(0)
    config = getattr(transformers, f"{family}Config")(**options)
    head = "LMHeadModel" if family == "GPT2" else "ForCausalLM"
    model = getattr(transformers, f"{family}{head}")(config).eval()
    with torch.no_grad():  # norms start at 1 and biases at 0: move them so a mix-up shows
        for name, param in model.named_parameters():
            if "norm" in name or "ln_" in name or name.endswith("bias"):
                param.add_(0.1 * torch.randn_like(param))
    return model


def hf_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor(ids)).logits.numpy()


@pytest.mark.parametrize("case", CASES)
def test_logits_equal_transformers_after_load_and_after_save(case, tmp_path):
    reference = hf_model(case)
    reference.save_pretrained(tmp_path / "hf")
    ours = Transformer.from_pretrained(tmp_path / "hf")
    assert not ours.training  # like transformers: loaded for inference
    ids = np.random.default_rng(0).integers(0, 97, (2, 12))  # 12 > sliding window and 8 positions
    logits, _ = ours(ids)
    np.testing.assert_allclose(logits.numpy(), hf_logits(reference, ids), atol=1e-4, rtol=0)

    ours.save_pretrained(tmp_path / "ours")
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ours").eval()
    assert type(reloaded).__name__ == type(reference).__name__
    np.testing.assert_allclose(hf_logits(reloaded, ids), logits.numpy(), atol=1e-4, rtol=0)


def test_tinyllm_presets_load_in_transformers_with_the_same_logits(tmp_path):
    for preset in ("tiny", "tiny-llama", "tiny-moe"):
        model = Transformer(get_preset(preset, n_layer=2), seed=1).eval()
        model.save_pretrained(tmp_path / preset)
        reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / preset).eval()
        ids = np.random.default_rng(1).integers(0, 65, (2, 10))
        np.testing.assert_allclose(
            hf_logits(reloaded, ids), model(ids)[0].numpy(), atol=1e-4, rtol=0, err_msg=preset
        )
        saved = json.loads((tmp_path / preset / "config.json").read_text())
        assert saved["torch_dtype"] == "float32"
        assert all(a.dtype == np.float32 for a in load_weights(tmp_path / preset).values())


@pytest.mark.parametrize(
    "hf, message",
    [
        ({"model_type": "bert"}, "model_type 'bert' is not supported"),
        ({**SMALL, "model_type": "llama", "hidden_act": "gelu"}, "hidden_act='gelu'"),
        ({**SMALL, "model_type": "llama", "attention_bias": True}, "attention_bias=True"),
        ({**SMALL, "model_type": "llama", "rope_scaling": {"rope_type": "longrope", "factor": 8.0}},
         "rope_type='longrope'"),
        ({**SMALL, "model_type": "qwen2", "use_sliding_window": True}, "use_sliding_window=True"),
        ({**SMALL, "model_type": "llama", "partial_rotary_factor": 0.5}, "partial_rotary_factor=0.5"),
        ({**GPT2, "model_type": "gpt2", "activation_function": "relu"}, "activation_function='relu'"),
        ({**SMALL, "model_type": "qwen3_moe", "num_experts": 4, "moe_intermediate_size": 8,
          "mlp_only_layers": [0]}, r"mlp_only_layers=\[0\] is not supported"),
        ({**SMALL, "model_type": "qwen3_moe", "num_experts": 4, "moe_intermediate_size": 8,
          "decoder_sparse_step": 2}, "decoder_sparse_step=2"),
    ],
)  # fmt: skip
def test_unsupported_architectures_and_options_are_named(hf, message):
    with pytest.raises(ValueError, match=message):
        config_from_hf(hf)


def test_a_config_no_architecture_has_cannot_be_saved(tmp_path):
    odd = get_preset("tiny", norm="rmsnorm")  # learned positions with RMSNorm: no HF family
    with pytest.raises(ValueError, match="norm='rmsnorm'"):
        Transformer(odd).save_pretrained(tmp_path)
    assert not (tmp_path / "model.safetensors").exists()


def test_missing_weights_and_missing_files_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        Transformer.from_pretrained(tmp_path)
    model = Transformer(get_preset("tiny-llama", n_layer=1))
    model.save_pretrained(tmp_path)
    tensors = read_safetensors(tmp_path / "model.safetensors")
    del tensors["model.norm.weight"]
    write_safetensors(tmp_path / "model.safetensors", tensors)
    with pytest.raises(KeyError, match="no 'model.norm.weight'"):
        Transformer.from_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="never pickled"):
        Transformer.from_pretrained(tmp_path)


# --- checkpoint files ----------------------------------------------------------------------
def test_very_old_gpt2_files_without_the_transformer_prefix_load(tmp_path):
    model = Transformer(get_preset("tiny", n_layer=1, tie_embeddings=False), seed=0)
    model.save_pretrained(tmp_path)
    tensors = read_safetensors(tmp_path / "model.safetensors")
    assert "transformer.wte.weight" in tensors and "lm_head.weight" in tensors
    unprefixed = {name.removeprefix("transformer."): array for name, array in tensors.items()}
    write_safetensors(tmp_path / "model.safetensors", unprefixed)
    ids = np.random.default_rng(0).integers(0, 65, (1, 6))
    back = Transformer.from_pretrained(tmp_path)
    np.testing.assert_array_equal(back(ids)[0].numpy(), model.eval()(ids)[0].numpy())


def test_sharded_checkpoints_load_through_their_index(tmp_path):
    reference = hf_model("llama-gqa")
    reference.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    ours = Transformer.from_pretrained(tmp_path)
    ids = np.random.default_rng(0).integers(0, 97, (1, 6))
    np.testing.assert_allclose(ours(ids)[0].numpy(), hf_logits(reference, ids), atol=1e-4)


def test_float16_save_halves_the_file_and_loads_back_close(tmp_path):
    model = Transformer(get_preset("tiny-llama", n_layer=1), seed=0)
    model.save_pretrained(tmp_path / "f32")
    model.save_pretrained(tmp_path / "f16", dtype="float16")
    size = {d: (tmp_path / d / "model.safetensors").stat().st_size for d in ("f32", "f16")}
    assert size["f16"] < 0.51 * size["f32"]
    back = Transformer.from_pretrained(tmp_path / "f16")
    np.testing.assert_allclose(
        back.state_dict()["lm_head.weight"], model.state_dict()["lm_head.weight"], atol=1e-4
    )
    with pytest.raises(ValueError, match="dtype 'int8' must be one of .*'bfloat16'"):
        model.save_pretrained(tmp_path / "x", dtype="int8")


def test_bfloat16_save_loads_in_transformers_with_our_logits(tmp_path):
    model = Transformer(get_preset("tiny-llama", n_layer=1, vocab_size=97), seed=0)
    model.save_pretrained(tmp_path / "f32")
    model.save_pretrained(tmp_path / "bf16", dtype="bfloat16")
    size = {d: (tmp_path / d / "model.safetensors").stat().st_size for d in ("f32", "bf16")}
    assert size["bf16"] < 0.51 * size["f32"]
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["torch_dtype"] == "bfloat16"
    reference = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "bf16").float().eval()
    back = Transformer.from_pretrained(tmp_path / "bf16")  # the rounded weights, as float32
    expected = {
        k: torch.from_numpy(v).bfloat16().float().numpy() for k, v in model.state_dict().items()
    }
    for name, array in back.state_dict().items():
        np.testing.assert_array_equal(array, expected[name], err_msg=name)
    ids = np.random.default_rng(0).integers(0, 97, (1, 10))
    np.testing.assert_allclose(back(ids)[0].numpy(), hf_logits(reference, ids), atol=1e-4, rtol=0)


# --- dropout and token ids: only what the model really has ----------------------------------
def test_dropout_is_written_only_where_tinyllm_drops(tmp_path):
    gpt2 = Transformer(get_preset("tiny", n_layer=1, dropout=0.2))
    gpt2.save_pretrained(tmp_path / "gpt2")
    saved = json.loads((tmp_path / "gpt2" / "config.json").read_text())
    assert (saved["embd_pdrop"], saved["resid_pdrop"], saved["attn_pdrop"]) == (0.2, 0.2, 0.0)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "gpt2").transformer
    # ours: after the embeddings, after attention's output and after the MLP; never inside
    assert theirs.drop.p == 0.2 and theirs.h[0].mlp.dropout.p == 0.2
    assert theirs.h[0].attn.resid_dropout.p == 0.2 and theirs.h[0].attn.attn_dropout.p == 0.0
    assert Transformer.from_pretrained(tmp_path / "gpt2").config.dropout == 0.2

    llama = Transformer(get_preset("tiny-llama", n_layer=1, dropout=0.2))
    llama.save_pretrained(tmp_path / "llama")  # Llama drops only attention probabilities
    assert json.loads((tmp_path / "llama" / "config.json").read_text())["attention_dropout"] == 0.0
    read = config_from_hf({**SMALL, "model_type": "llama", "attention_dropout": 0.1})
    assert read.dropout == 0.0  # not our residual dropout: a different place in the model


def test_saved_token_ids_are_the_models_own_and_transformers_accepts_them(tmp_path):
    import logging

    messages = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    logging.getLogger("transformers").addHandler(handler)
    try:
        for preset in ("tiny", "tiny-llama"):
            for ids in ({}, {"eos_token_id": 1023}):
                model = Transformer(get_preset(preset, n_layer=1, vocab_size=1024, **ids))
                folder = tmp_path / f"{preset}{len(ids)}"
                model.save_pretrained(folder)
                saved = json.loads((folder / "config.json").read_text())
                assert saved["bos_token_id"] is None  # null, not transformers' 50256 or 1
                assert saved["eos_token_id"] == ids.get("eos_token_id")
                config = transformers.AutoModelForCausalLM.from_pretrained(folder).config
                for name, value in config.to_dict().items():  # transformers' own check
                    if name.endswith("_token_id") and value is not None:
                        assert 0 <= value < 1024, (preset, name, value)
                assert config.eos_token_id == ids.get("eos_token_id")
                back = Transformer.from_pretrained(folder)
                assert back.config.eos_token_id == config.eos_token_id
    finally:
        logging.getLogger("transformers").removeHandler(handler)
    assert not [m for m in messages if "token_id" in m], messages


def test_token_ids_read_from_hugging_face_configs_are_kept_when_in_the_vocabulary():
    gpt2 = transformers.GPT2Config(**GPT2).to_dict()  # bos/eos 50256, vocabulary of 97
    assert (config_from_hf(gpt2).bos_token_id, config_from_hf(gpt2).eos_token_id) == (None, None)
    full = config_from_hf({**gpt2, "vocab_size": 50257})
    assert (full.bos_token_id, full.eos_token_id) == (50256, 50256)
    llama3 = {**SMALL, "model_type": "llama", "bos_token_id": 96, "eos_token_id": [1, 2, 500]}
    assert config_from_hf(llama3).eos_token_id == [1, 2]  # Llama 3 stops on any of several
    assert config_from_hf(llama3).bos_token_id == 96
    with pytest.raises(ValueError, match=r"eos_token_id=50256 is not a token .* 1023"):
        get_preset("tiny", vocab_size=1024, eos_token_id=50256)
