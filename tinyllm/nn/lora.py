"""LoRA: fine-tune a large frozen matrix through a small low-rank change to it.

A fine-tuned weight rarely moves far from the pretrained one, and the move it makes has low
rank (Hu et al., 2021). So LoRA freezes the base layer ``W`` (in, out) and learns the change
as a product of two thin matrices, ``A`` (r, in) and ``B`` (out, r), in PEFT's layout:

    y = x @ W + b  +  dropout(x) @ A^T @ B^T * (alpha / r)                 (..., out)

``A`` starts random (PEFT's Kaiming-uniform draw) and ``B`` at zero, so at step 0 the
adapted model *is* the base model. Only ``A`` and ``B`` train: ``r * (in + out)`` numbers
instead of ``in * out``, so the optimizer keeps moments for those alone. ``alpha / r``
scales the update: with ``alpha`` fixed, a change of rank leaves the learning rate about
right. After training, ``merge`` folds ``B A * alpha / r`` into ``W``: one matrix again,
no cost at inference; ``unmerge`` takes it back out.

>>> import numpy as np
>>> from tinyllm.nn import Linear
>>> layer = LoRALinear(Linear(16, 8, seed=0), r=2, alpha=4, seed=0)
>>> [name for name, p in layer.named_parameters() if p.requires_grad]
['adapters.default.A', 'adapters.default.B']
>>> x = np.ones((3, 16), np.float32)
>>> bool((layer(x).numpy() == layer.base(x).numpy()).all())     # B = 0: the base model
True

Which layers: ``apply_lora(model, r, alpha, target_modules)`` wraps every ``Linear`` whose
path ends with one of the targets (``q_proj``, ``mlp.*``, or PEFT's names such as
``gate_proj``; ``lora_targets.py`` matches them).

One base can carry several named adapters (``add_adapter``, ``set_adapter``): one is
active, and only the active one adds its update and trains. Tokens the base model never
learned (a chat template's) can train their embedding rows beside the adapters:
``add_trainable_tokens`` (``trainable_tokens.py``). The base layer is any module
with ``forward``, ``in_features`` and ``out_features``; merging also needs its ``weight`` as
a dense (in, out) Parameter, or a quantized one.

QLoRA (Dettmers et al., 2023) is LoRA on a quantized base: the frozen weights stay packed
in 4 bits (``tinyllm.quant``: ``quantize(model, "q4_0")`` before ``apply_lora``), each
forward and backward pass dequantizes them for its own product, and the gradient reaches
the input through that float copy, never the packed bytes. Only the adapters are float32
and trained. A quantized layer here is one with ``dequantized()``, its float (in, out)
weight, and ``requantize(weight)`` (``QuantizedLinear``). ``merge`` into such a base does
what PEFT does for a 4-bit base: dequantize, add the update, quantize again - the rounding
changes the function a little, and a warning says so. ``merge_and_unload`` gives float
layers instead (the dequantized weight plus the update, unrounded): the adapted model's
function exactly, in a form the Hugging Face format holds.
"""

import warnings

import numpy as np

from .layers import Dropout, Embedding, Linear
from .lora_targets import get_module, match_targets, set_module
from .module import Module, Parameter
from .trainable_tokens import TrainableTokens


class LowRank(Module):
    """One adapter: ``A`` (r, in), ``B`` (out, r), ``alpha`` and its dropout on the input."""

    def __init__(self, in_features, out_features, r, alpha, *, dropout=0.0, seed=None):
        rng = np.random.default_rng(seed)
        bound = 1 / np.sqrt(in_features)  # kaiming_uniform_(a=sqrt(5)): torch's Linear, PEFT's A
        self.A = Parameter(rng.uniform(-bound, bound, (r, in_features)).astype(np.float32))
        self.B = Parameter(np.zeros((out_features, r), np.float32))
        self.alpha = alpha
        self.dropout = Dropout(dropout, seed=rng.integers(2**31))

    @property
    def r(self):
        return self.A.shape[0]

    @property
    def scale(self):
        return self.alpha / self.r

    def forward(self, x):
        h = self.dropout(x) @ self.A.T  # (..., r)
        return (h @ self.B.T) * self.scale  # (..., out)

    def delta(self):
        """The change to the base weight, ``(B A)^T * scale``: an (in, out) array."""
        return (self.B.data @ self.A.data).T * self.scale

    def settings(self):
        return {"r": self.r, "alpha": self.alpha, "dropout": self.dropout.p}


class LoRALinear(Module):
    """A frozen ``base`` layer plus named low-rank adapters; see the module docstring."""

    def __init__(self, base, r, alpha, *, dropout=0.0, name="default", seed=None):
        self.base = base.freeze()
        self.adapters = {}
        self.active = name
        self.merged = False  # whether the active adapter is folded into base.weight
        self.add_adapter(name, r, alpha, dropout=dropout, seed=seed)

    @property
    def in_features(self):
        return self.base.in_features

    @property
    def out_features(self):
        return self.base.out_features

    def add_adapter(self, name, r, alpha, *, dropout=0.0, seed=None):
        """A new adapter ``name`` beside the others (not made active)."""
        if not isinstance(name, str) or not name or "." in name:
            raise ValueError(f"LoRA: adapter name {name!r} must be a non-empty string without '.'")
        if name in self.adapters:
            raise ValueError(f"LoRA: this layer already has an adapter named {name!r}")
        check_rank(r, self.in_features, self.out_features)
        check_alpha(alpha)
        adapter = LowRank(self.in_features, self.out_features, r, alpha, dropout=dropout, seed=seed)
        self.adapters[name] = adapter.to(_backend(self.base))
        adapter.freeze(name != self.active)
        return adapter

    def set_adapter(self, name):
        """Make ``name`` the active adapter: the one that adds its update and trains. A
        layer without an adapter of that name (the model's others have one) adds nothing."""
        if self.merged and name != self.active:
            raise ValueError(f"LoRA: adapter {self.active!r} is merged; unmerge it first")
        self.active = name
        for other, adapter in self.adapters.items():
            adapter.freeze(other != name)

    def forward(self, x):
        y = self.base(x)  # (..., out)
        if self.merged or self.active not in self.adapters:
            return y
        return y + self.adapters[self.active](x)

    def merge(self):
        """Fold the active adapter into the base weight: ``W += (B A)^T * alpha / r`` (a
        quantized base is dequantized, changed and quantized again; see the module docstring)."""
        if self.merged:
            raise ValueError(f"LoRA: adapter {self.active!r} is already merged; unmerge it first")
        self._store(self._weight() + self._active_adapter().delta())
        self.merged = True

    def unmerge(self):
        """Take the merged adapter back out of the base weight."""
        if not self.merged:
            raise ValueError(f"LoRA: adapter {self.active!r} is not merged")
        self._store(self._weight() - self._active_adapter().delta())
        self.merged = False

    def _active_adapter(self):
        if self.active not in self.adapters:
            raise ValueError(f"LoRA: this layer has no adapter {self.active!r} to merge")
        return self.adapters[self.active]

    def _weight(self):
        """The base's weight as a float (in, out) array."""
        if is_quantized_layer(self.base):
            return self.base.dequantized()
        return self._dense_weight().data

    def _store(self, weight):
        if not is_quantized_layer(self.base):
            self._dense_weight().data = weight
            return
        warnings.warn(
            f"LoRA: merging into (or out of) a quantized {getattr(self.base, 'format', '')} "
            "base rounds the merged weight to its format again, so the merged model computes "
            "close to the adapted one, not exactly (as PEFT's merge into a 4-bit base); "
            "merge_and_unload gives float layers instead",
            stacklevel=3,
        )
        self.base.requantize(weight)

    def _dense_weight(self):
        weight = getattr(self.base, "weight", None)
        shape = (self.in_features, self.out_features)
        if not isinstance(weight, Parameter) or weight.shape != shape:
            raise TypeError(
                f"LoRA: merging needs a base with a dense (in, out) weight Parameter or a "
                f"quantized one (dequantized, requantize); {type(self.base).__name__} has neither"
            )
        return weight


def is_quantized_layer(layer):
    """Whether ``layer`` keeps its weight packed and gives it as floats with ``dequantized()``
    (``tinyllm.quant.QuantizedLinear``)."""
    return callable(getattr(layer, "dequantized", None))


def float_linear(layer, delta=None):
    """A frozen float ``Linear`` computing what the quantized ``layer`` does, its weight
    dequantized and ``delta`` (an (in, out) update) added in float, on its backend."""
    bias = getattr(layer, "bias", None)
    linear = Linear(layer.in_features, layer.out_features, bias=bias is not None, seed=0)
    weight = layer.dequantized()  # (in, out)
    linear.weight.data = weight if delta is None else weight + delta
    if bias is not None:
        linear.bias.data = bias.data
    return linear.freeze()


def _backend(module):
    """The backend ``module``'s first parameter or buffer lives on."""
    tensors = [*module.named_parameters(), *module.named_buffers()]
    if not tensors:
        raise TypeError(f"LoRA: the base {type(module).__name__} holds no weights")
    return tensors[0][1].backend


def check_rank(r, in_features, out_features, where="a layer"):
    """An error unless ``r`` is an integer in 1 .. min(in, out)."""
    most = min(in_features, out_features)
    if isinstance(r, bool) or not isinstance(r, (int, np.integer)) or not 1 <= r <= most:
        raise ValueError(
            f"LoRA: rank r={r!r} must be an integer from 1 to min(in, out) = {most} for "
            f"{where} ({in_features} -> {out_features} features)"
        )


def check_alpha(alpha):
    """An error unless ``alpha`` is a number > 0."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0:
        raise ValueError(f"LoRA: alpha={alpha!r} must be a number > 0")


# --- a whole model ----------------------------------------------------------------------------
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
