"""Hugging Face format: read and write the directories ``transformers`` uses.

A directory holds ``config.json`` (the architecture's options, under Hugging Face's names)
and ``model.safetensors`` (the weights, under the names of the ``transformers`` modules).
This file and ``hf_families.py`` are the import boundary: checkpoint names (``c_attn``,
``wte``, ``w1``) appear there and nowhere else. Three differences get translated:

- names: ``model.layers.0.self_attn.q_proj`` is our ``blocks.0.attention.q_proj``;
- layout: ``torch.nn.Linear`` stores its weight as (out, in), ours is (in, out), so those
  are transposed (GPT-2's ``Conv1D`` already stores (in, out));
- fusion: GPT-2 keeps query, key and value in one ``c_attn`` matrix; we keep three.

What differs between families (GPT-2, Llama, Mistral, Qwen2, Qwen3, Mixtral, Qwen3-MoE) is
data, one record each in ``hf_families.py``; the functions here read any record. Any option
tinyllm does not implement is an error that names it, never a silently different model.

Only what tinyllm's model does is written: its dropout follows the embeddings and each
residual branch (GPT-2's ``embd_pdrop`` and ``resid_pdrop``), never the attention
probabilities, so ``attn_pdrop`` / ``attention_dropout`` are written as 0.0; the Llama
family has no place for the other two. Dropout only acts in training, so a file's
attention dropout is not refused on reading, just not carried over.

>>> from tinyllm.models import get_preset
>>> hf = config_to_hf(get_preset("tiny-llama", vocab_size=1024, eos_token_id=0))
>>> hf["architectures"], hf["num_key_value_heads"], hf["attention_dropout"]
(['LlamaForCausalLM'], 2, 0.0)
>>> hf["bos_token_id"], hf["eos_token_id"]   # never transformers' defaults (1 and 2)
(None, 0)
>>> config_from_hf(hf) == get_preset("tiny-llama", vocab_size=1024, eos_token_id=0)
True
"""

import json
from pathlib import Path

import numpy as np

from ..files import atomic_open
from ..nn import Linear
from .config import ModelConfig
from .hf_families import FAMILIES
from .weights import load_weights, write_safetensors

ARCHITECTURES = {name: family.architecture for name, family in FAMILIES.items()}
TOKEN_IDS = ("bos_token_id", "eos_token_id")


def _unsupported(model_type, option, value, expected):
    return ValueError(
        f"{model_type} config: {option}={value!r} is not supported by tinyllm (expected {expected})"
    )


def _keys(theirs):
    """A config key, or a tuple of keys, as a tuple."""
    return (theirs,) if isinstance(theirs, str) else theirs


# --- config.json -> ModelConfig --------------------------------------------------------------
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
    count = hf.get("num_local_experts") or hf.get("num_experts")  # transformers 5 takes either
    if not isinstance(count, int) or count < 1:
        raise ValueError(
            f"{hf['model_type']} config: no expert count (num_local_experts={count!r})"
        )
    return count


def in_vocabulary(ids, vocab_size):
    """Token ids with those outside the vocabulary dropped (GPT-2's 50256 in a small model)."""
    if not isinstance(vocab_size, int) or ids is None:
        return ids
    if isinstance(ids, list):
        return [i for i in ids if 0 <= i < vocab_size] or None
    return ids if 0 <= ids < vocab_size else None


def config_from_hf(hf):
    """A :class:`ModelConfig` from a ``config.json`` dict; unsupported options raise."""
    model_type = hf.get("model_type")
    if model_type not in FAMILIES:
        raise ValueError(
            f"config.json: model_type {model_type!r} is not supported; tinyllm reads "
            f"{sorted(FAMILIES)} ({', '.join(ARCHITECTURES.values())})"
        )
    family = FAMILIES[model_type]
    for key, allowed in family.pinned.items():
        if hf.get(key, allowed[0]) not in allowed:
            raise _unsupported(model_type, key, hf[key], " or ".join(map(repr, allowed)))
    fields = dict(family.switches)
    for ours, theirs in family.config_keys.items():
        key = _keys(theirs)[0]
        if key not in hf and key not in family.defaults:
            raise KeyError(f"{model_type} config: no {key!r} (tinyllm's {ours})")
        fields[ours] = hf.get(key, family.defaults.get(key))
    if fields["position"] == "rope":
        theta, scaling, context = _rope_from_hf(hf, model_type)
        fields.update(rope_theta=theta, rope_scaling=scaling, context_length=context)
    if family.moe:
        fields["n_expert"] = _expert_count(hf)
    # the usual head shapes stay implied, as a tinyllm config leaves them
    n_head, d_head = fields["n_head"], fields.get("d_head")
    if fields.get("n_kv_head") == n_head:
        fields["n_kv_head"] = None
    if d_head is not None and d_head * n_head == fields["d_model"]:
        fields["d_head"] = None
    for name in TOKEN_IDS:
        fields[name] = in_vocabulary(fields[name], fields["vocab_size"])
    return ModelConfig(**fields)


# --- ModelConfig -> config.json --------------------------------------------------------------
def _cannot_hold(config, family):
    """``[(option, the value family needs)]`` for each option of ``config`` it cannot hold."""
    problems = [(f, repr(v)) for f, v in family.switches.items() if getattr(config, f) != v]
    if bool(config.n_expert) != bool(family.moe):
        problems.append(("n_expert", "a positive count" if family.moe else "0"))
    implied = {  # an option set away from its implied value needs a key of its own
        "n_kv_head": config.kv_heads == config.n_head,
        "d_head": config.head_dim * config.n_head == config.d_model,
        "sliding_window": config.sliding_window is None,
    }
    for option, is_implied in implied.items():
        if not is_implied and option not in family.config_keys:
            problems.append((option, "None"))
    return problems


def family_of(config):
    """The first family of ``hf_families.FAMILIES`` that holds ``config``, or an error."""
    problems = {name: _cannot_hold(config, family) for name, family in FAMILIES.items()}
    for name, found in problems.items():
        if not found:
            return FAMILIES[name]
    closest = min(problems, key=lambda name: len(problems[name]))  # the first of equals
    option, expected = problems[closest][0]
    raise ValueError(
        f"save_pretrained: no Hugging Face architecture has {option}="
        f"{getattr(config, option)!r} together with this config's other options (the "
        f"closest, {ARCHITECTURES[closest]}, needs {option}={expected})"
    )


def model_type_of(config):
    """The Hugging Face ``model_type`` that has exactly ``config``'s options, or an error."""
    return family_of(config).model_type


def _rope_to_hf(config):
    """The RoPE entries of ``config.json``, in both spellings of transformers 4 and 5."""
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
    return {
        "max_position_embeddings": context,
        "rope_theta": config.rope_theta,
        "rope_parameters": rope,
        "rope_scaling": rope if rope["rope_type"] != "default" else None,
    }


# fields a tinyllm config may leave None (implied); transformers' own defaults differ
_RESOLVED = {"d_ff": "ff_dim", "n_kv_head": "kv_heads", "d_head": "head_dim"}


def config_to_hf(config):
    """The ``config.json`` dict ``transformers`` reads for ``config``."""
    family = family_of(config)
    hf = {"architectures": [family.architecture], "model_type": family.model_type}
    for ours, theirs in family.config_keys.items():
        for key in _keys(theirs):
            hf[key] = getattr(config, _RESOLVED.get(ours, ours))
    hf.update({key: allowed[0] for key, allowed in family.pinned.items()})
    hf.update(family.written)
    if config.position == "rope":
        hf.update(_rope_to_hf(config))
    if family.moe:
        hf[family.moe.count_key] = config.n_expert
    hf["torch_dtype"] = "float32"
    return hf


# --- weight names ---------------------------------------------------------------------------
def hf_module_name(family, ours):
    """The checkpoint name of our module ``ours`` (a dotted path in :class:`Transformer`)."""
    names, moe = family.weights, family.moe
    if ours == "lm_head":
        return "lm_head"
    if ours.startswith("blocks."):
        _, i, inside = ours.split(".", 2)
        block = names.prefix + names.block.format(i=i)
        if moe and inside == "mlp.router":
            return block + moe.router
        if moe and inside.startswith("mlp.experts."):
            _, _, e, matrix = inside.split(".")
            return block + moe.experts.format(e=e) + moe.expert_weights[matrix]
        if inside in names.block_names:
            return block + names.block_names[inside]
    outside = {
        "token_embedding": names.embedding,
        "position_embedding": names.position_embedding,
        "final_norm": names.final_norm,
    }
    if outside.get(ours):
        return names.prefix + outside[ours]
    raise KeyError(f"{family.architecture} has no weight for tinyllm's {ours}")


def weight_map(model, family):
    """``[(hf_name, [our names], transposed)]`` for every tensor of ``model``.

    Ours that share one checkpoint name sit side by side on its last axis, in our order
    (GPT-2's ``c_attn``: q, k, v); ``transposed`` marks (out, in) ``torch.nn.Linear`` layouts.
    """
    linears = {name for name, module in model.named_modules() if isinstance(module, Linear)}
    entries = {}
    for ours, _ in model.named_parameters():
        module, kind = ours.rsplit(".", 1)
        transposed = kind == "weight" and module in linears
        transposed = transposed and (family.weights.out_in or module == "lm_head")
        hf_name = f"{hf_module_name(family, module)}.{kind}"
        entries.setdefault(hf_name, (hf_name, [], transposed))[1].append(ours)
    return list(entries.values())


# --- directories ---------------------------------------------------------------------------
def read_config(directory):
    """The ``config.json`` of a Hugging Face directory, as a dict."""
    path = Path(directory) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{directory}: no config.json; is this a model directory?")
    return json.loads(path.read_text())


def state_from_hf(model, family, tensors, directory):
    """``model``'s state dict (our names and layouts) from a checkpoint's ``tensors``."""
    prefix, embedding = family.weights.prefix, f"{family.weights.embedding}.weight"
    if prefix + embedding not in tensors and embedding in tensors:  # very old GPT-2 files
        tensors = {(k if k == "lm_head.weight" else prefix + k): v for k, v in tensors.items()}
    params = dict(model.named_parameters())
    state = {}
    for hf_name, ours, transposed in weight_map(model, family):
        if hf_name not in tensors:
            raise KeyError(f"{directory}: the weights have no {hf_name!r} (needed for {ours[0]})")
        array = tensors[hf_name].astype(np.float32)
        array = array.T if transposed else array
        ends = np.cumsum([params[name].shape[-1] for name in ours])
        for name, part in zip(ours, np.split(array, ends[:-1], axis=-1)):
            state[name] = part
    return state


def state_to_hf(model, family):
    """``model``'s tensors under the checkpoint's names and layouts."""
    state = model.state_dict()
    tensors = {}
    for hf_name, ours, transposed in weight_map(model, family):
        array = np.concatenate([state[name] for name in ours], axis=-1)
        tensors[hf_name] = array.T if transposed else array
    return tensors


def load_pretrained(cls, directory):
    """Build ``cls(config)`` from a Hugging Face directory and copy its weights in (eval mode)."""
    hf_config = read_config(directory)
    model = cls(config_from_hf(hf_config))
    family = FAMILIES[hf_config["model_type"]]
    state = state_from_hf(model, family, load_weights(directory), directory)
    return model.load_state_dict(state).eval()


SAVE_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}


def write_pretrained(directory, hf_config, tensors, dtype="float32"):
    """Write ``config.json`` (``hf_config``) and ``model.safetensors`` (``tensors``, stored
    as ``dtype``: "float32", "float16" or "bfloat16", rounded to nearest)."""
    if dtype not in SAVE_DTYPES:
        raise ValueError(f"save_pretrained: dtype {dtype!r} must be one of {list(SAVE_DTYPES)}")
    directory = Path(directory)
    write_safetensors(
        directory / "model.safetensors",
        tensors,
        metadata={"format": "pt"},
        floats=SAVE_DTYPES[dtype],
    )
    with atomic_open(directory / "config.json", "w") as f:
        json.dump({**hf_config, "torch_dtype": dtype}, f, indent=2)


def save_pretrained(model, directory, dtype="float32"):
    """Write ``config.json`` and ``model.safetensors`` for ``transformers`` to load."""
    family = family_of(model.config)
    write_pretrained(directory, config_to_hf(model.config), state_to_hf(model, family), dtype)
