"""LoRA adapters in PEFT's format: a folder ``peft.PeftModel.from_pretrained`` reads.

    adapter_config.json         LoraConfig's fields: r, lora_alpha, target_modules, ...
    adapter_model.safetensors   base_model.model.<module>.lora_A.weight    (r, in)
                                base_model.model.<module>.lora_B.weight    (out, r)
                                base_model.model.<embedding>.token_adapter
                                    .trainable_tokens_delta               (n, dim)

The last holds the trainable token rows (``trainable_token_indices`` in the config; the
rows themselves, whatever the name says), where the model has them.

PEFT wraps the modules of a ``transformers`` model, so ``<module>`` is the checkpoint's name
for a layer (``hf.py``: ``model.layers.0.self_attn.q_proj`` is our
``blocks.0.attention.q_proj``), and A and B are already in our (PEFT's) layout. One thing
needs translating: GPT-2 keeps query, key and value in one ``c_attn`` module where we keep
three layers. Their adapters become one adapter of ``c_attn``, of rank 3r (less where some
of the three have none):

    A = [A_q; A_k; A_v]   (3r, in)        B = [[B_q, 0, 0], [0, B_k, 0], [0, 0, B_v]]   (3d, 3r)

so ``B A = [B_q A_q; B_k A_k; B_v A_v]``: each layer's own update, on its own rows of the
output. A module whose rank or alpha is not the config's ``r`` and ``lora_alpha`` is named
in ``rank_pattern`` and ``alpha_pattern``, as PEFT writes layers of different ranks. Read
back, a ``c_attn`` adapter gives each of the three layers the shared A and its rows of B.

A mixture of experts has no place in the format: ``transformers`` keeps a mixture's experts
in fused tensors and its router as a bare weight, not modules PEFT could wrap.
"""

import json
import math
import re
from collections import Counter
from pathlib import Path

import numpy as np

from ..files import atomic_open
from ..nn.lora import (
    active_adapter,
    adaptable_layers,
    add_lora,
    add_trainable_tokens,
    lora_layers,
    set_adapter,
    trainable_tokens,
)
from .hf import family_of, hf_module_name
from .weights import read_safetensors, write_safetensors

CONFIG, WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
PREFIX = "base_model.model."  # PeftModel -> LoraModel -> the transformers model
_KEY = re.compile(rf"^{re.escape(PREFIX)}(.+)\.lora_([AB])\.weight$")
_TOKENS = ".token_adapter.trainable_tokens_delta"  # PEFT's name for the new rows themselves

# LoraConfig options that would make PEFT compute another function than ours: their
# values here are the only ones read (a missing option has this value too)
_PLAIN = {
    "use_dora": False, "bias": "none", "lora_bias": False, "modules_to_save": None,
    "layer_replication": None, "alora_invocation_tokens": None,
}  # fmt: skip


def save_adapter(model, folder, name=None, *, base_model=None):
    """Write ``model``'s adapter ``name`` (default: the active one) into ``folder`` as
    PEFT's ``save_pretrained`` does, trainable token rows included; ``base_model`` is the
    base model's folder, recorded as ``base_model_name_or_path``. Returns the folder."""
    _family(model, "save_adapter")
    name = name or active_adapter(model)
    adapted = dict(lora_layers(model, name))
    if not adapted:
        raise ValueError(f"save_adapter: the model has no adapter named {name!r}")
    tensors, settings = lora_tensors(model, adapted, name)
    rows, token_indices = token_tensors(model)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_safetensors(folder / WEIGHTS, {**tensors, **rows}, metadata={"format": "pt"})
    config = peft_config(model, settings, base_model)
    config["lora_dropout"] = next(iter(adapted.values())).adapters[name].dropout.p
    config["trainable_token_indices"] = token_indices
    with atomic_open(folder / CONFIG, "w") as file:
        json.dump(config, file, indent=2)
    return folder


def lora_tensors(model, adapted, name):
    """``(tensors, settings)``: the A and B of each PEFT module of the ``adapted`` layers
    ({path: LoRALinear}) and its ``(rank, alpha)``."""
    modules = peft_modules(model)
    placed = {path for members in modules.values() for path, _ in members}
    for path in adapted:
        if path not in placed:
            raise ValueError(
                f"save_adapter: {path} has no module in PEFT's format (a mixture's router "
                "and experts are not modules there)"
            )
    tensors, settings = {}, {}
    for module, members in modules.items():
        parts = [(adapted[p].adapters[name] if p in adapted else None, out) for p, out in members]
        if any(adapter is not None for adapter, _ in parts):
            A, B, scale = fuse(parts)
            tensors[f"{PREFIX}{module}.lora_A.weight"] = A
            tensors[f"{PREFIX}{module}.lora_B.weight"] = B
            settings[module] = (len(A), _number(scale * len(A)))
    return tensors, settings


def token_tensors(model):
    """``(tensors, trainable_token_indices)`` of the model's trainable token rows (None
    for the indices where it has none)."""
    family = family_of(model.config)
    tensors, indices = {}, {}
    for path, table in trainable_tokens(model):
        module = hf_module_name(family, path)
        tensors[f"{PREFIX}{module}{_TOKENS}"] = table.values.numpy().copy()
        indices[module.rsplit(".", 1)[-1]] = table.token_ids.numpy().tolist()
    return tensors, indices or None


def load_adapter(model, folder, name="default"):
    """Read a PEFT LoRA adapter folder into ``model`` as adapter ``name`` and make it the
    active one (the base frozen, the adapter trainable); returns ``model``.

    The adapter must be made for this base: a module it names that the model lacks, or a
    matrix of another shape, is an error naming both. Everything is checked before the
    model changes."""
    _family(model, "load_adapter")
    folder = Path(folder)
    config = _read_config(folder)
    pairs, rows = _read_tensors(folder)
    plan = [_check_pair(model, folder, module, A, B, name) for module, (A, B) in pairs.items()]
    tokens = _check_tokens(model, folder, config, rows)
    model.freeze()
    dropout = config.get("lora_dropout", 0.0)
    for module, members, A, B in plan:
        alpha = _number(_scale(config, module, len(A)) * len(A))
        ends = np.cumsum([out for _, out in members])[:-1]
        for (path, _), rows_of_B in zip(members, np.split(B, ends)):
            layer = add_lora(model, path, len(A), alpha, dropout=dropout, name=name)
            layer.adapters[name].load_state_dict({"A": A, "B": rows_of_B})
    if tokens is not None:
        token_ids, values = tokens
        add_trainable_tokens(model, token_ids)
        trainable_tokens(model)[0][1].load_state_dict({"values": values}, strict=False)
    return set_adapter(model, name)


def _check_pair(model, folder, module, A, B, name):
    """``(module, its members, A, B)`` once ``A`` and ``B`` are found to fit the model."""
    modules, layers = peft_modules(model), dict(model.named_modules())
    if module not in modules:
        raise ValueError(
            f"load_adapter: {folder} adapts {module}, which this "
            f"{family_of(model.config).architecture} does not have; the adapter was made "
            "for another base model"
        )
    members = modules[module]
    in_features = layers[members[0][0]].in_features
    out_features = sum(out for _, out in members)
    if A.shape[1] != in_features or B.shape != (out_features, A.shape[0]):
        raise ValueError(
            f"load_adapter: {folder} has lora_A {A.shape} and lora_B {B.shape} for "
            f"{module}, but this model's {module} maps {in_features} -> {out_features} "
            f"features (expected lora_A (r, {in_features}), lora_B ({out_features}, r)); "
            "the adapter was made for another base model"
        )
    for path, _ in members:
        if name in getattr(layers[path], "adapters", {}):
            raise ValueError(f"load_adapter: {path} already has an adapter named {name!r}")
    return module, members, A, B


def _check_tokens(model, folder, config, rows):
    """``(token ids, their rows)`` of the trainable tokens, or None; checked to fit."""
    indices = config.get("trainable_token_indices")
    if not indices and not rows:
        return None
    embedding = hf_module_name(family_of(model.config), "token_embedding")
    if isinstance(indices, dict):
        (key, indices), *others = indices.items()
        if others or not (embedding == key or embedding.endswith(f".{key}")):
            raise ValueError(
                f"load_adapter: {folder} trains tokens of {[key, *dict(others)]}; tinyllm "
                f"trains token rows of the input embedding ({embedding}) alone"
            )
    values = rows.get(embedding)
    shape = (len(indices or ()), model.config.d_model)
    if set(rows) != {embedding} or values.shape != shape:
        raise ValueError(
            f"load_adapter: {folder} holds token rows { ({m: v.shape for m, v in rows.items()}) } "
            f"for trainable_token_indices {indices!r}; expected {embedding} of shape {shape}"
        )
    if trainable_tokens(model):
        raise ValueError("load_adapter: the model already has trainable tokens")
    return indices, values


# --- the layout ---------------------------------------------------------------------------
def peft_modules(model):
    """``{PEFT module name: [(our layer path, its out_features)]}`` for every Linear layer
    PEFT's format has a place for; layers that share a module sit side by side in it, in our
    order (GPT-2's ``c_attn``: q, k, v)."""
    family = family_of(model.config)
    layers = dict(model.named_modules())
    modules = {}
    for path in adaptable_layers(model):
        inside = path.split(".", 2)[2] if path.startswith("blocks.") else ""
        if family.moe and inside.startswith("mlp."):  # fused experts, a bare router weight
            continue
        modules.setdefault(hf_module_name(family, path), []).append(
            (path, layers[path].out_features)
        )
    return modules


def fuse(parts):
    """``(A, B, scale)`` of one adapter for layers side by side in one module: ``parts`` is
    ``[(LowRank or None, out_features)]`` in output order. Each adapter's A rows stack; its
    B sits on its own output rows and its own rank columns, scaled to the first one's."""
    adapters = [adapter for adapter, _ in parts if adapter is not None]
    scale = adapters[0].scale
    A = np.concatenate([adapter.state_dict()["A"] for adapter in adapters])  # (R, in)
    B = np.zeros((sum(out for _, out in parts), len(A)), np.float32)  # (out, R)
    row = column = 0
    for adapter, out in parts:
        if adapter is not None:
            block = adapter.state_dict()["B"] * (adapter.scale / scale)  # (out, r)
            B[row : row + out, column : column + adapter.r] = block
            column += adapter.r
        row += out
    return A, B, scale


def peft_config(model, settings, base_model):
    """``adapter_config.json`` for modules of ``settings`` ({module: (rank, alpha)}): the
    commonest rank and alpha as ``r`` and ``lora_alpha``, the others in the patterns."""
    r, alpha = Counter(settings.values()).most_common(1)[0][0]
    others = {module: ra for module, ra in settings.items() if ra != (r, alpha)}
    conv1d = not family_of(model.config).weights.out_in  # GPT-2's Conv1D stores (in, out)
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": None if base_model is None else str(base_model),
        "r": r,
        "lora_alpha": alpha,
        "rank_pattern": {re.escape(m): rank for m, (rank, _) in others.items()},
        "alpha_pattern": {re.escape(m): a for m, (_, a) in others.items()},
        "target_modules": target_modules(list(settings), peft_modules(model)),
        "fan_in_fan_out": conv1d,
        "use_rslora": False,
        "init_lora_weights": True,
        "inference_mode": True,
        **_PLAIN,
    }


def target_modules(adapted, modules):
    """PEFT's ``target_modules`` for exactly the ``adapted`` modules, out of all
    ``modules``: for each, the shortest end of its name that ends no other module's name
    (PEFT takes a module whose name is an entry, or ends with "." and one).

    >>> modules = ["h.0.attn.c_attn", "h.0.attn.c_proj", "h.0.mlp.c_fc", "h.0.mlp.c_proj"]
    >>> target_modules(["h.0.attn.c_attn", "h.0.mlp.c_proj"], modules)
    ['c_attn', 'mlp.c_proj']
    """
    others = [m for m in modules if m not in adapted]
    return sorted({_shortest_end(module, others) for module in adapted})


def _shortest_end(name, others):
    parts = name.split(".")
    for count in range(1, len(parts) + 1):
        end = ".".join(parts[-count:])
        if not any(other == end or other.endswith(f".{end}") for other in others):
            return end
    return name


# --- reading --------------------------------------------------------------------------------
def _read_config(folder):
    path = folder / CONFIG
    if not path.is_file() or not (folder / WEIGHTS).is_file():
        raise FileNotFoundError(f"{folder}: expected {CONFIG} and {WEIGHTS} (a PEFT adapter)")
    config = json.loads(path.read_text())
    if config.get("peft_type") != "LORA":
        raise ValueError(f"{path}: peft_type {config.get('peft_type')!r}; tinyllm reads 'LORA'")
    for option, plain in _PLAIN.items():
        if config.get(option, plain) not in (plain, [], {}):
            raise ValueError(
                f"{path}: {option}={config[option]!r} is not supported by tinyllm "
                f"(expected {plain!r})"
            )
    return config


def _read_tensors(folder):
    """``({module: (A, B)}, {module: token rows})`` of an adapter file, every name checked."""
    pairs, rows = {}, {}
    for key, array in read_safetensors(folder / WEIGHTS).items():
        array = array.astype(np.float32)
        match = _KEY.match(key)
        if match is not None:
            pairs.setdefault(match.group(1), {})[match.group(2)] = array
        elif key.startswith(PREFIX) and key.endswith(_TOKENS):
            rows[key[len(PREFIX) : -len(_TOKENS)]] = array
        else:
            raise ValueError(
                f"{folder / WEIGHTS}: unexpected tensor {key!r}; a LoRA adapter holds "
                f"{PREFIX}<module>.lora_A.weight and .lora_B.weight (and <module>{_TOKENS})"
            )
    for module, pair in pairs.items():
        if len(pair) != 2:
            missing = "B" if "A" in pair else "A"
            raise ValueError(f"{folder / WEIGHTS}: {module} has no lora_{missing}.weight")
    return {module: (pair["A"], pair["B"]) for module, pair in pairs.items()}, rows


def _scale(config, module, rank):
    """PEFT's scale of ``module``: its alpha over its rank (over sqrt(rank), rsLoRA)."""
    r = _pattern(config.get("rank_pattern"), module, config["r"])
    alpha = _pattern(config.get("alpha_pattern"), module, config["lora_alpha"])
    if r != rank:
        raise ValueError(f"load_adapter: {module} has rank {rank} but the config says r={r}")
    return alpha / (math.sqrt(r) if config.get("use_rslora") else r)


def _pattern(patterns, module, default):
    """PEFT's lookup: the first pattern that matches the end of ``module``'s name."""
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def _family(model, caller):
    if not hasattr(model, "config"):
        raise TypeError(f"{caller}: needs a Transformer, got {type(model).__name__}")
    try:
        return family_of(model.config)
    except ValueError as err:
        raise ValueError(
            f"{caller}: PEFT's format names layers as the model's Hugging Face form does, "
            f"and this model has none ({err})"
        ) from None


def _number(x):
    """An integral float as an int (adapter_config.json's alphas are usually ints)."""
    return int(x) if float(x).is_integer() else float(x)
