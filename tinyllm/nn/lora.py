"""LoRA on a whole model: which layers get adapters, several named adapters, merging them
in, and their weights apart from the model's (the layer itself is ``lora_layer.LoRALinear``).

Which layers: ``apply_lora(model, r, alpha, target_modules)`` wraps every ``Linear`` whose
path ends with one of the targets (``q_proj``, ``mlp.*``, or PEFT's names such as
``gate_proj``; ``lora_targets.py`` matches them).

One base can carry several named adapters (``add_adapter``, ``set_adapter``): one is
active, and only the active one adds its update and trains. Tokens the base model never
learned (a chat template's) can train their embedding rows beside the adapters:
``add_trainable_tokens`` (``trainable_tokens.py``). The base layer is any module
with ``forward``, ``in_features`` and ``out_features``; merging also needs its ``weight`` as
a dense (in, out) Parameter, or a quantized one.
"""

import numpy as np

from .layers import Embedding, Linear
from .lora_layer import LoRALinear, check_rank, float_linear, is_quantized_layer
from .lora_targets import get_module, match_targets, set_module
from .trainable_tokens import TrainableTokens


def apply_lora(model, r=8, alpha=16, target_modules=("q_proj", "v_proj"), *, dropout=0.0,
               name="default", seed=0):  # fmt: skip
    """Freeze ``model`` and give every Linear that ``target_modules`` names an adapter
    ``name`` of rank ``r``; returns ``model``. A target that names no Linear layer is an
    error that lists them. The first adapter is the active one; on a model that has one,
    the new adapter waits (frozen) until ``set_adapter`` picks it.

    >>> from tinyllm.models import Transformer, get_preset
    >>> model = apply_lora(Transformer(get_preset("tiny-llama", n_layer=2)), r=4, alpha=8)
    >>> [path for path, _ in lora_layers(model)][:2]
    ['blocks.0.attention.q_proj', 'blocks.0.attention.v_proj']
    >>> lora_summary(model)["trainable_parameters"]   # 2 x (4 (128 + 128) + 4 (128 + 64))
    3584
    """
    chosen = find_targets(model, target_modules)
    for path in chosen:  # every layer checked before any is changed
        layer = get_module(model, path)
        check_rank(r, layer.in_features, layer.out_features, path)
        if name in getattr(layer, "adapters", {}):
            raise ValueError(f"apply_lora: {path} already has an adapter named {name!r}")
    active = active_adapter(model)
    model.freeze()
    rng = np.random.default_rng(seed)
    for path in chosen:
        add_lora(model, path, r, alpha, dropout=dropout, name=name, seed=rng)
    return set_adapter(model, active or name)


def find_targets(model, target_modules):
    """The paths of the Linear layers ``target_modules`` (a name or several) name, in the
    model's order; a target that names none is an error that lists the model's layers."""
    aliases = getattr(model, "hf_module_name", lambda path: None)
    return match_targets(adaptable_layers(model), target_modules, aliases)


def add_lora(model, path, r, alpha, *, dropout=0.0, name="default", seed=None):
    """Give the Linear (or LoRALinear) at ``path`` an adapter ``name``; returns the layer."""
    layer = get_module(model, path)
    if isinstance(layer, LoRALinear):
        layer.add_adapter(name, r, alpha, dropout=dropout, seed=seed)
        return layer
    layer = LoRALinear(layer, r, alpha, dropout=dropout, name=name, seed=seed)
    set_module(model, path, layer)
    return layer


def add_trainable_tokens(model, token_ids, path="token_embedding"):
    """Let the rows ``token_ids`` of the Embedding at ``path`` train, the rest frozen
    (``TrainableTokens``: new chat tokens under LoRA); returns ``model``."""
    table = get_module(model, path)
    if not isinstance(table, Embedding):
        raise ValueError(f"LoRA: {path} is a {type(table).__name__}, not an Embedding")
    set_module(model, path, TrainableTokens(table, token_ids))
    return model


def trainable_tokens(model):
    """``[(path, TrainableTokens)]`` of ``model``."""
    return [(p, m) for p, m in model.named_modules() if isinstance(m, TrainableTokens)]


def adaptable_layers(model):
    """The paths of the Linear layers of ``model``, quantized ones too (and of those
    already adapted)."""
    paths, inside = [], set()
    for path, module in model.named_modules():
        if isinstance(module, LoRALinear):
            inside.add(id(module.base))
            paths.append(path)
        elif (isinstance(module, Linear) or is_quantized_layer(module)) and id(
            module
        ) not in inside:
            paths.append(path)
    return paths


def lora_layers(model, name=None):
    """``[(path, LoRALinear)]`` of ``model``; with ``name``, those carrying that adapter."""
    return [
        (path, m)
        for path, m in model.named_modules()
        if isinstance(m, LoRALinear) and (name is None or name in m.adapters)
    ]


def _adapted(model, name):
    layers = lora_layers(model, name)
    if not layers:
        names = sorted({n for _, m in lora_layers(model) for n in m.adapters})
        raise ValueError(f"LoRA: no adapter named {name!r} in the model (it has {names or 'none'})")
    return layers


def set_adapter(model, name):
    """Make ``name`` the active adapter of every adapted layer (it trains; the others rest)."""
    _adapted(model, name)  # some layer has it
    for _, layer in lora_layers(model):
        layer.set_adapter(name)
    return model


def active_adapter(model):
    """The name of the active adapter (the first adapted layer's), or None."""
    layers = lora_layers(model)
    return layers[0][1].active if layers else None


def merge(model):
    """Fold every layer's active adapter into its base weight (see ``LoRALinear.merge``)."""
    for _, layer in _adapted(model, active_adapter(model)):
        layer.merge()
    return model


def unmerge(model):
    """Take the merged adapters back out of the base weights."""
    for _, layer in _adapted(model, active_adapter(model)):
        layer.unmerge()
    return model


def merge_and_unload(model):
    """Fold the active adapters in and put the bare base layers back: a plain model (its
    Hugging Face form, where it has one, then saves as usual); returns ``model``. On a
    quantized base every quantized layer comes back as a float ``Linear``, the update added
    to its dequantized weight unrounded: the adapted model's function exactly."""
    for path, layer in lora_layers(model):
        update = layer.active in layer.adapters and not layer.merged
        if is_quantized_layer(layer.base):
            delta = layer.adapters[layer.active].delta() if update else None
            set_module(model, path, float_linear(layer.base, delta))
            continue
        if update:
            layer.merge()
        set_module(model, path, layer.base)
    for path, module in [(p, m) for p, m in model.named_modules() if is_quantized_layer(m)]:
        set_module(model, path, float_linear(module))
    for path, table in trainable_tokens(model):
        set_module(model, path, table.unload())
    return model


def lora_state_dict(model, name=None):
    """``{path: array}`` of one adapter's A and B matrices (default: the active one) and of
    the trainable token rows, which every adapter shares."""
    name = name or active_adapter(model)
    matrices = {
        f"{path}.adapters.{name}.{key}": array
        for path, layer in _adapted(model, name)
        for key, array in layer.adapters[name].state_dict().items()
    }
    rows = {
        f"{path}.values": table.values.numpy().copy() for path, table in trainable_tokens(model)
    }
    return {**matrices, **rows}


def lora_summary(model, name=None):
    """What an adapter costs beside its model: its parameters and bytes, and the share of
    the model's parameters that train (a quantized layer's weights count as parameters)."""
    adapter = lora_state_dict(model, name)
    packed = [m for _, m in model.named_modules() if is_quantized_layer(m)]  # weights as Buffers
    total = model.num_parameters() + sum(m.in_features * m.out_features for m in packed)
    trainable = sum(p.size for p in model.parameters() if p.requires_grad)
    return {
        "adapter_parameters": sum(a.size for a in adapter.values()),
        "adapter_bytes": sum(a.nbytes for a in adapter.values()),
        "trainable_parameters": trainable,
        "total_parameters": total,
        "trainable_fraction": trainable / total,
    }


# --- describing an adapted model (checkpoints rebuild it) --------------------------------------
def describe_lora(model):
    """JSON-ready ``{"active": name, "merged": bool, "layers": {path: {name: settings}},
    "tokens": {path: token ids}}``, or None for a model without adapters."""
    layers = lora_layers(model)
    if not layers:
        return None
    return {
        "active": active_adapter(model),
        "merged": any(layer.merged for _, layer in layers),
        "layers": {
            path: {n: adapter.settings() for n, adapter in layer.adapters.items()}
            for path, layer in layers
        },
        "tokens": {
            path: table.token_ids.numpy().tolist() for path, table in trainable_tokens(model)
        },
    }


def rebuild_lora(model, description):
    """Put back the adapters ``describe_lora`` described (load their weights next)."""
    model.freeze()
    for path, adapters in description["layers"].items():
        for name, settings in adapters.items():
            add_lora(model, path, name=name, **settings)
    for path, token_ids in description.get("tokens", {}).items():
        add_trainable_tokens(model, token_ids, path)
    set_adapter(model, description["active"])
    for _, layer in lora_layers(model, description["active"]):
        layer.merged = description["merged"]  # the weights loaded next hold the update
    return model
