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

from .layers import Dropout, Linear
from .module import Module, Parameter


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
