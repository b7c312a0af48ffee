"""Hugging Face format: read and write the directories ``transformers`` uses.

A directory holds ``config.json`` (the architecture's options, under Hugging Face's names)
and ``model.safetensors`` (the weights, under the names of the ``transformers`` modules).
This file is the import boundary: checkpoint names (``c_attn``, ``wte``, ``w1``) appear here
and nowhere else. Three differences get translated:

- names: ``model.layers.0.self_attn.q_proj`` is our ``blocks.0.attention.q_proj``;
- layout: ``torch.nn.Linear`` stores its weight as (out, in), ours is (in, out), so those
  are transposed (GPT-2's ``Conv1D`` already stores (in, out));
- fusion: GPT-2 keeps query, key and value in one ``c_attn`` matrix; we keep three.

Supported: GPT2LMHeadModel, LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM,
Qwen3ForCausalLM, MixtralForCausalLM and Qwen3MoeForCausalLM. Any option tinyllm does not
implement is an error that names it, never a silently different model.
"""

import json
from pathlib import Path

import numpy as np

from ..files import atomic_open
from .config import ModelConfig
from .weights import load_weights, write_safetensors

ARCHITECTURES = {
    "gpt2": "GPT2LMHeadModel",
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "mixtral": "MixtralForCausalLM",
    "qwen3_moe": "Qwen3MoeForCausalLM",
}
# The MoE families: the name their config.json gives the expert count (transformers 5 calls
# both "num_local_experts" and takes either spelling), where the experts sit in a block,
# and their weights' names -> ours.
_MOE = {
    "mixtral": ("num_local_experts", "block_sparse_moe.", {"w1": "gate", "w2": "down", "w3": "up"}),
    "qwen3_moe": ("num_experts", "mlp.", {f"{p}_proj": p for p in ("gate", "up", "down")}),
}


def _unsupported(model_type, option, value, expected):
    return ValueError(
        f"{model_type} config: {option}={value!r} is not supported by tinyllm (expected {expected})"
    )


# --- config.json <-> ModelConfig -------------------------------------------------------------
def _rope_from_hf(hf, model_type):
    """(rope_theta, rope_scaling, context_length) from either spelling of the RoPE options."""
    params = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    theta = params.pop("rope_theta", hf.get("rope_theta", 10000.0))
    kind = params.pop("rope_type", params.pop("type", "default"))
    partial = params.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))
    if partial != 1.0:
        raise _unsupported(model_type, "partial_rotary_factor", partial, 1.0)
    context = hf.get("max_position_embeddings", 2048)
    if kind == "default":
        return theta, None, context
    if kind not in ("linear", "dynamic", "yarn", "llama3"):
        raise _unsupported(
            model_type, "rope_type", kind, "default, linear, dynamic, yarn or llama3"
        )
    scaling = {"type": kind, "factor": float(params.get("factor") or 1.0)}
    if kind == "dynamic":  # trained on max_position_embeddings; runs `factor` times longer
        scaling["original_context_length"] = context
        context = int(context * scaling["factor"])
    if kind == "llama3":  # max_position_embeddings is already the extended length
        scaling["original_context_length"] = params.get("original_max_position_embeddings")
        scaling["low_freq_factor"] = params.get("low_freq_factor")
        scaling["high_freq_factor"] = params.get("high_freq_factor")
    if kind == "yarn":
        scaling["original_context_length"] = params.get("original_max_position_embeddings", context)
        for key in ("beta_fast", "beta_slow", "attention_factor", "mscale", "mscale_all_dim"):
            if params.get(key) is not None:
                scaling[key] = params[key]
        if "truncate" in params:
            scaling["truncate"] = params["truncate"]
    return theta, scaling, context


def _expert_count(hf):
    count = hf.get("num_local_experts") or hf.get("num_experts")
    if not isinstance(count, int) or count < 1:
        raise ValueError(
            f"{hf['model_type']} config: no expert count (num_local_experts={count!r})"
        )
    return count


def config_from_hf(hf):
    """A :class:`ModelConfig` from a ``config.json`` dict; unsupported options raise."""
    model_type = hf.get("model_type")
    if model_type not in ARCHITECTURES:
        raise ValueError(
            f"config.json: model_type {model_type!r} is not supported; tinyllm reads "
            f"{sorted(ARCHITECTURES)} ({', '.join(ARCHITECTURES.values())})"
        )
    if model_type == "gpt2":
        act = hf.get("activation_function", "gelu_new")
        if act not in ("gelu_new", "gelu_pytorch_tanh"):
            raise _unsupported("gpt2", "activation_function", act, "gelu_new")
        for option, want in (
            ("scale_attn_weights", True),
            ("scale_attn_by_inverse_layer_idx", False),
        ):
            if hf.get(option, want) != want:
                raise _unsupported("gpt2", option, hf[option], want)
        return ModelConfig(
            vocab_size=hf["vocab_size"],
            context_length=hf.get("n_positions", 1024),
            d_model=hf["n_embd"],
            n_layer=hf["n_layer"],
            n_head=hf["n_head"],
            d_ff=hf.get("n_inner"),
            norm_eps=hf.get("layer_norm_epsilon", 1e-5),
            tie_embeddings=hf.get("tie_word_embeddings", True),
            dropout=hf.get("resid_pdrop", 0.0),
            init_std=hf.get("initializer_range", 0.02),
        )

    if hf.get("hidden_act", "silu") != "silu":
        raise _unsupported(model_type, "hidden_act", hf["hidden_act"], "silu")
    d_model, n_head, head_dim = hf["hidden_size"], hf["num_attention_heads"], hf.get("head_dim")
    if head_dim is not None and head_dim * n_head == d_model:
        head_dim = None  # the usual width: leave it implied
    for option in ("attention_bias", "mlp_bias", "use_sliding_window"):
        if hf.get(option):
            raise _unsupported(model_type, option, hf[option], False)
    if model_type == "qwen3_moe":  # every layer a mixture: no dense layers in between
        if hf.get("mlp_only_layers"):
            raise _unsupported(model_type, "mlp_only_layers", hf["mlp_only_layers"], [])
        if hf.get("decoder_sparse_step", 1) != 1:
            raise _unsupported(model_type, "decoder_sparse_step", hf["decoder_sparse_step"], 1)
    theta, scaling, context = _rope_from_hf(hf, model_type)
    window = hf.get("sliding_window") if model_type in ("mistral", "mixtral") else None
    return ModelConfig(
        vocab_size=hf["vocab_size"],
        context_length=context,
        d_model=d_model,
        n_layer=hf["num_hidden_layers"],
        n_head=n_head,
        n_kv_head=hf.get("num_key_value_heads") or n_head,
        d_head=head_dim,
        d_ff=hf["moe_intermediate_size" if model_type == "qwen3_moe" else "intermediate_size"],
        mlp="swiglu",
        norm="rmsnorm",
        norm_eps=hf.get("rms_norm_eps", 1e-6),
        position="rope",
        rope_theta=theta,
        rope_scaling=scaling,
        sliding_window=window,
        bias=False,
        qkv_bias=model_type == "qwen2",
        qk_norm=model_type in ("qwen3", "qwen3_moe"),
        tie_embeddings=hf.get("tie_word_embeddings", False),
        dropout=hf.get("attention_dropout", 0.0),
        n_expert=_expert_count(hf) if model_type in _MOE else 0,
        top_k=hf.get("num_experts_per_tok", 2),
        norm_top_k=model_type != "qwen3_moe" or hf.get("norm_topk_prob", False),
        router_aux_loss_coef=hf.get("router_aux_loss_coef", 0.01),
        init_std=hf.get("initializer_range", 0.02),
    )


def model_type_of(config):
    """The Hugging Face architecture that has exactly ``config``'s options, or an error."""

    def need(condition, option, expected):
        if not condition:
            raise ValueError(
                f"save_pretrained: no Hugging Face architecture has {option}="
                f"{getattr(config, option)!r} together with this config's other options "
                f"(expected {expected})"
            )

    if config.position == "learned":  # GPT-2
        need(config.norm == "layernorm", "norm", "layernorm with learned positions")
        need(config.mlp == "gelu", "mlp", "gelu with learned positions")
        need(config.bias and config.qkv_bias, "bias", "biases everywhere, as GPT-2")
        need(config.kv_heads == config.n_head, "n_kv_head", "n_head: GPT-2 has no GQA")
        need(config.head_dim * config.n_head == config.d_model, "d_head", "d_model / n_head")
        need(not config.n_expert, "n_expert", "0 for GPT-2")
        need(config.sliding_window is None, "sliding_window", "None for GPT-2")
        need(not config.qk_norm, "qk_norm", "False for GPT-2")
        return "gpt2"
    need(config.norm == "rmsnorm", "norm", "rmsnorm with RoPE")
    need(config.mlp == "swiglu", "mlp", "swiglu with RoPE")
    need(not config.bias, "bias", "False: Llama-family output and MLP layers have no bias")
    if config.qk_norm:
        need(not config.qkv_bias, "qkv_bias", "False for Qwen3")
        need(config.sliding_window is None, "sliding_window", "None for Qwen3")
        return "qwen3_moe" if config.n_expert else "qwen3"
    if config.n_expert:
        need(not config.qkv_bias, "qkv_bias", "False for Mixtral")
        need(config.norm_top_k, "norm_top_k", "True for Mixtral")
        return "mixtral"
    if config.qkv_bias:
        need(config.sliding_window is None, "sliding_window", "None for Qwen2")
        return "qwen2"
    return "mistral" if config.sliding_window is not None else "llama"


def config_to_hf(config):
    """The ``config.json`` dict ``transformers`` reads for ``config``."""
    model_type = model_type_of(config)
    common = {
        "architectures": [ARCHITECTURES[model_type]],
        "model_type": model_type,
        "vocab_size": config.vocab_size,
        "tie_word_embeddings": config.tie_embeddings,
        "initializer_range": config.init_std,
        "torch_dtype": "float32",
    }
    if model_type == "gpt2":
        return {
            **common,
            "n_positions": config.context_length,
            "n_embd": config.d_model,
            "n_layer": config.n_layer,
            "n_head": config.n_head,
            "n_inner": config.ff_dim,
            "activation_function": "gelu_new",
            "layer_norm_epsilon": config.norm_eps,
            **{key: config.dropout for key in ("resid_pdrop", "embd_pdrop", "attn_pdrop")},
        }
    scaling = dict(config.rope_scaling or {})
    context = config.context_length
    rope = {"rope_type": scaling.pop("type", "default"), "rope_theta": config.rope_theta}
    if "original_context_length" in scaling:
        original = scaling.pop("original_context_length")
        if rope["rope_type"] == "dynamic":
            context = original
        else:
            rope["original_max_position_embeddings"] = original
    rope.update(scaling)
    hf = {
        **common,
        "hidden_size": config.d_model,
        "intermediate_size": config.ff_dim,
        "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head,
        "num_key_value_heads": config.kv_heads,
        "head_dim": config.head_dim,
        "max_position_embeddings": context,
        "hidden_act": "silu",
        "rms_norm_eps": config.norm_eps,
        "rope_theta": config.rope_theta,
        "rope_parameters": rope,
        "rope_scaling": rope if rope["rope_type"] != "default" else None,
        "attention_dropout": config.dropout,
    }
    if model_type in ("mistral", "mixtral"):
        hf["sliding_window"] = config.sliding_window
    if model_type == "qwen3_moe":
        hf.update(moe_intermediate_size=config.ff_dim, norm_topk_prob=config.norm_top_k,
                  decoder_sparse_step=1, mlp_only_layers=[])  # fmt: skip
    if model_type in _MOE:
        hf[_MOE[model_type][0]] = config.n_expert
        hf["num_experts_per_tok"] = config.top_k
        hf["router_aux_loss_coef"] = config.router_aux_loss_coef
    return hf


# --- weight names ---------------------------------------------------------------------------
def weight_map(config, model_type):
    """``[(hf_name, [our names], transposed)]`` for every checkpoint tensor.

    One checkpoint tensor may hold several of ours side by side on its last axis (GPT-2's
    ``c_attn``); ``transposed`` marks (out, in) ``torch.nn.Linear`` layouts.
    """
    entries = []

    def add(hf_name, ours, transposed=False):
        entries.append((hf_name, [ours] if isinstance(ours, str) else ours, transposed))

    if model_type == "gpt2":
        add("transformer.wte.weight", "token_embedding.weight")
        add("transformer.wpe.weight", "position_embedding.weight")
        for i in range(config.n_layer):
            hf, ours = f"transformer.h.{i}.", f"blocks.{i}."
            for kind in ("weight", "bias"):
                add(hf + f"ln_1.{kind}", ours + f"attention_norm.{kind}")
                add(
                    hf + f"attn.c_attn.{kind}", [ours + f"attention.{p}_proj.{kind}" for p in "qkv"]
                )
                add(hf + f"attn.c_proj.{kind}", ours + f"attention.o_proj.{kind}")
                add(hf + f"ln_2.{kind}", ours + f"mlp_norm.{kind}")
                add(hf + f"mlp.c_fc.{kind}", ours + f"mlp.up.{kind}")
                add(hf + f"mlp.c_proj.{kind}", ours + f"mlp.down.{kind}")
        add("transformer.ln_f.weight", "final_norm.weight")
        add("transformer.ln_f.bias", "final_norm.bias")
    else:
        add("model.embed_tokens.weight", "token_embedding.weight")
        for i in range(config.n_layer):
            hf, ours = f"model.layers.{i}.", f"blocks.{i}."
            add(hf + "input_layernorm.weight", ours + "attention_norm.weight")
            for p in "qkvo":
                add(hf + f"self_attn.{p}_proj.weight", ours + f"attention.{p}_proj.weight", True)
                if config.qkv_bias and p != "o":
                    add(hf + f"self_attn.{p}_proj.bias", ours + f"attention.{p}_proj.bias")
            if config.qk_norm:
                for p in "qk":
                    add(hf + f"self_attn.{p}_norm.weight", ours + f"attention.{p}_norm.weight")
            add(hf + "post_attention_layernorm.weight", ours + "mlp_norm.weight")
            if config.n_expert:
                _, where, names = _MOE[model_type]
                moe = hf + where
                add(moe + "gate.weight", ours + "mlp.router.weight", True)
                for e in range(config.n_expert):
                    for hf_w, our_w in names.items():
                        add(
                            f"{moe}experts.{e}.{hf_w}.weight",
                            f"{ours}mlp.experts.{e}.{our_w}.weight",
                            True,
                        )
            else:
                for p in ("gate", "up", "down"):
                    add(hf + f"mlp.{p}_proj.weight", ours + f"mlp.{p}.weight", True)
        add("model.norm.weight", "final_norm.weight")
    if not config.tie_embeddings:
        add("lm_head.weight", "lm_head.weight", True)  # an nn.Linear in every family
    return entries


# --- directories ---------------------------------------------------------------------------
def load_pretrained(cls, directory):
    """Build ``cls(config)`` from a Hugging Face directory and copy its weights in (eval mode)."""
    directory = Path(directory)
    config_path = directory / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{directory}: no config.json; is this a model directory?")
    config = config_from_hf(json.loads(config_path.read_text()))
    tensors = load_weights(directory)
    if "transformer.wte.weight" not in tensors and "wte.weight" in tensors:  # very old GPT-2 files
        tensors = {f"transformer.{k}": v for k, v in tensors.items()}
    model = cls(config)
    params = dict(model.named_parameters())
    state = {}
    for hf_name, ours, transposed in weight_map(config, model_type_of(config)):
        if hf_name not in tensors:
            raise KeyError(f"{directory}: the weights have no {hf_name!r} (needed for {ours[0]})")
        array = tensors[hf_name].astype(np.float32)
        array = array.T if transposed else array
        ends = np.cumsum([params[name].shape[-1] for name in ours])
        for name, part in zip(ours, np.split(array, ends[:-1], axis=-1)):
            state[name] = part
    return model.load_state_dict(state).eval()


SAVE_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}


def save_pretrained(model, directory, dtype="float32"):
    """Write ``config.json`` and ``model.safetensors`` for ``transformers`` to load.

    ``dtype`` is "float32", "float16" or "bfloat16" (the weights are rounded to nearest).
    """
    if dtype not in SAVE_DTYPES:
        raise ValueError(f"save_pretrained: dtype {dtype!r} must be one of {list(SAVE_DTYPES)}")
    config, directory = model.config, Path(directory)
    hf_config = config_to_hf(config)
    hf_config["torch_dtype"] = dtype
    state = model.state_dict()
    tensors = {}
    for hf_name, ours, transposed in weight_map(config, hf_config["model_type"]):
        array = np.concatenate([state[name] for name in ours], axis=-1)
        tensors[hf_name] = array.T if transposed else array
    write_safetensors(
        directory / "model.safetensors",
        tensors,
        metadata={"format": "pt"},
        floats=SAVE_DTYPES[dtype],
    )
    with atomic_open(directory / "config.json", "w") as f:
        json.dump(hf_config, f, indent=2)
