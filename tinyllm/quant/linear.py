"""``QuantizedLinear`` and ``quantize(model, scheme)``: a model whose linear layers keep
their weights in a few bits.

A ``QuantizedLinear`` holds a format's parts (``formats.py``) as Buffers - saved and moved
with the model, never trained - and dequantizes them to float32 on every forward pass, as
llama.cpp's reference CPU path does block by block. The bias stays a float Parameter.
Gradients reach the input and the bias, never the packed weight: so a small trainable
adapter can sit on a frozen quantized layer (QLoRA's idea, ``tinyllm.nn.lora``). The float
weight lives only inside one op (``QuantizedMatmul``): made in the forward pass, dropped,
and made again in the backward pass for the input's gradient, so between the two a training
step keeps the packed bytes alone.

A *scheme* says how a layer's parts are chosen and in which format. The schemes here round
each weight to the nearest representable value (RTN). A scheme that first looks at
activations on calibration text - AWQ (``awq.py``) scales salient input channels, GPTQ
(``gptq.py``) corrects the rounding error as it goes - has a ``calibrate`` step and needs
``quantize(model, scheme, calibration=ids)``; it stores into the same formats and layer.

What gets quantized: every ``Linear`` of the blocks (attention and MLP). The output layer
(``lm_head``) stays in float32 unless named in ``include``: llama.cpp's ``llama-quantize``
also treats it apart, storing ``output.weight`` in a higher-precision type (Q6_K for the
4-bit types) unless asked for a ``--pure`` file, since every logit passes through it. The
token embedding is a lookup table, not a Linear, and stays float (with tied embeddings it is
also the output layer). A row length that a block format cannot hold (not a multiple of 32)
keeps that layer in per-channel int8, with one warning naming every such layer.

>>> import numpy as np
>>> from tinyllm.nn import Linear
>>> layer = Linear(64, 3, seed=0)
>>> small = QuantizedLinear.from_linear(layer, "q4_0")
>>> sorted(name for name, _ in small.named_buffers())
['weight.packed', 'weight.scales']
>>> x = np.random.default_rng(0).standard_normal((2, 64)).astype(np.float32)
>>> np.allclose(small(x).numpy(), x @ small.dequantized() + layer.bias.numpy())
True
>>> eight_bits = QuantizedLinear.from_linear(layer, "q8_0")
>>> bool(np.abs(eight_bits(x).numpy() - layer(x).numpy()).max() < 1e-3)
True
"""

import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..autograd import to_numpy
from ..autograd.function import Function
from ..nn import Buffer, Linear, Module, Parameter
from . import formats

FALLBACK = "int8"  # for rows a block format cannot hold
OUTPUT_LAYERS = ("lm_head",)  # kept in float unless included


class QuantizedLinear(Module):
    """``y = x @ dequantize(weight).T + bias``; ``weight`` holds a format's parts of the
    (out_features, in_features) matrix, as Buffers."""

    swapped_in = True  # put in after a model is built: checkpoints record it (describe_model)

    def __init__(self, in_features, out_features, format, bias=True):
        self.in_features, self.out_features = in_features, out_features
        self.format = formats.check_format(format)
        empty = formats.quantize(np.zeros((out_features, in_features), np.float32), format)
        self.weight = {name: Buffer(part) for name, part in empty.items()}
        self.bias = Parameter(np.zeros(out_features, np.float32)) if bias else None

    @classmethod
    def from_linear(cls, linear, format, fill=None):
        """A quantized copy of ``linear``; ``fill(weight (out, in), format) -> parts`` chooses
        the parts (default: round to nearest)."""
        in_features, out_features = linear.weight.shape
        layer = cls(in_features, out_features, format, bias=linear.bias is not None)
        parts = (fill or formats.quantize)(to_numpy(linear.weight.data).T, format)
        for name, part in parts.items():
            layer.weight[name].data = linear.weight.backend.asarray(part)
        if linear.bias is not None:
            layer.bias.data = linear.bias.data
        return layer

    def dequantized(self):
        """The float32 weight (in_features, out_features) on the layer's backend."""
        parts = {name: buffer.data for name, buffer in self.weight.items()}
        xp = next(iter(self.weight.values())).backend.xp
        return formats.dequantize(parts, self.format, xp).T  # (in, out)

    def requantize(self, weight):
        """Store the float ``weight`` (in_features, out_features) in the layer's format,
        rounding to nearest (how a merged adapter goes into a quantized base)."""
        backend = next(iter(self.weight.values())).backend
        parts = formats.quantize(np.asarray(to_numpy(weight), np.float32).T, self.format)
        for name, part in parts.items():
            self.weight[name].data = backend.asarray(part)

    def forward(self, x):
        names = tuple(self.weight)
        parts = [self.weight[name] for name in names]
        y = QuantizedMatmul.apply(x, *parts, format=self.format, names=names)  # (..., out)
        return y if self.bias is None else y + self.bias

    def describe(self):
        return {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "format": self.format,
            "bias": self.bias is not None,
        }

    @classmethod
    def from_description(cls, description):
        return cls(**{k: description[k] for k in ("in_features", "out_features", "format", "bias")})


class QuantizedMatmul(Function):
    """``x @ W`` for the ``W`` (in, out) that packed ``parts`` stand for. The forward and the
    backward each dequantize ``W`` for themselves: the tape keeps the parts, not the float
    matrix. The gradient goes to ``x`` alone; the parts are frozen."""

    @staticmethod
    def forward(ctx, x, *parts, format, names):
        ctx.save_for_backward(*parts)
        ctx.format, ctx.names = format, names
        weight = _weight(ctx, parts)  # (out, in)
        rows = x.reshape(-1, x.shape[-1])  # (N, in): one product, whatever the batch axes
        return (rows @ weight.T).reshape(*x.shape[:-1], weight.shape[0])  # (..., out)

    @staticmethod
    def backward(ctx, grad):
        weight = _weight(ctx, ctx.saved)  # (out, in), made again
        rows = grad.reshape(-1, grad.shape[-1])  # (N, out)
        grad_x = (rows @ weight).reshape(*grad.shape[:-1], weight.shape[1])  # (..., in)
        return (grad_x, *(None for _ in ctx.saved))


def _weight(ctx, parts):
    return formats.dequantize(dict(zip(ctx.names, parts)), ctx.format, ctx.xp)


# --- schemes ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Scheme:
    """A way to quantize a layer: the ``format`` it stores and ``fill(weight, format) ->
    parts``, which picks the stored values (round to nearest by default); or, for a scheme
    that looks at activations, ``calibrate(model, ids, paths)``, which returns the parts of
    the layers at ``paths`` from calibration token ids (and may change the float model in
    ways that keep its function, as AWQ's folded scales do)."""

    name: str
    format: str
    fill: Callable = formats.quantize
    calibrate: Callable | None = None  # (model, ids, paths) -> {path: parts}, may change model


SCHEMES = {}


def register_scheme(scheme):
    """Add ``scheme`` to ``SCHEMES`` (an error if its name is taken); returns it."""
    if scheme.name in SCHEMES:
        raise ValueError(f"a quantization scheme named {scheme.name!r} exists already")
    formats.check_format(scheme.format)
    SCHEMES[scheme.name] = scheme
    return scheme


for _name in ("f16", "bf16", "int8", "q8_0", "q4_1", "q4_0"):
    register_scheme(Scheme(_name, _name))


def get_scheme(name):
    """The registered scheme called ``name``, or a ValueError listing the known ones."""
    if name not in SCHEMES:
        raise ValueError(
            f"unknown quantization scheme {name!r}: expected one of {', '.join(SCHEMES)}"
        )
    return SCHEMES[name]


def is_quantized(model):
    return any(isinstance(m, QuantizedLinear) for _, m in model.named_modules())


def quantize(model, scheme, *, include=(), calibration=None):
    """Replace the ``Linear`` layers of ``model`` by ``QuantizedLinear`` ones in place (see
    the module docstring for which); returns the model.

    ``scheme`` is a name in ``SCHEMES`` or a ``Scheme``; ``include`` names output layers to
    quantize too (``("lm_head",)``). ``calibration``: token ids (n_sequences, length) for
    the schemes that look at activations (awq, gptq; ``calibration.corpus_calibration``
    cuts them from a corpus's training text), and only for them.
    """
    scheme = scheme if isinstance(scheme, Scheme) else get_scheme(scheme)
    if is_quantized(model):
        raise ValueError(
            f"{type(model).__name__} is quantized already; quantize the float model instead"
        )
    linears = [
        (path, m)
        for path, m in model.named_modules()
        if isinstance(m, Linear) and (_name(path) not in OUTPUT_LAYERS or _name(path) in include)
    ]
    calibrated = {}
    if scheme.calibrate is not None:
        ids = _calibration_ids(calibration, model, scheme)
        fitting = [p for p, m in linears if formats.fits(scheme.format, m.weight.shape[0])]
        calibrated = scheme.calibrate(model, ids, fitting)
    elif calibration is not None:
        raise ValueError(
            f"scheme {scheme.name!r} rounds to nearest and takes no calibration; "
            f"leave calibration out (awq and gptq take it)"
        )
    fallbacks = {}  # row length: the paths of the layers a block cannot hold
    for path, linear in linears:
        parts = calibrated.get(path)
        if parts is None and not formats.fits(scheme.format, linear.weight.shape[0]):
            fallbacks.setdefault(linear.weight.shape[0], []).append(path)
        model.set_submodule(path, _quantized(linear, scheme, parts))
    if fallbacks:
        rows = "; ".join(f"{', '.join(paths)}: rows of {n}" for n, paths in fallbacks.items())
        warnings.warn(
            f"quantize: {rows} weights, not a multiple of {formats.BLOCK}, which "
            f"{scheme.format} needs; these layers are stored as {FALLBACK} per channel",
            stacklevel=2,
        )
    return model


def _calibration_ids(calibration, model, scheme):
    """``calibration`` as an int64 array (n_sequences, length), checked against the model."""
    if calibration is None:
        raise ValueError(
            f"scheme {scheme.name!r} looks at activations: give calibration= token ids "
            "(n_sequences, length), e.g. from tinyllm.quant.calibration.corpus_calibration"
        )
    ids = np.asarray(calibration)
    context = getattr(getattr(model, "config", None), "context_length", ids.shape[-1])
    if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer) or 0 in ids.shape:
        raise ValueError(
            f"calibration: expected integer token ids of shape (n_sequences, length), got "
            f"shape {ids.shape} and dtype {ids.dtype}"
        )
    if ids.shape[1] > context:
        raise ValueError(
            f"calibration: windows of {ids.shape[1]} tokens are longer than the model's "
            f"context_length of {context}"
        )
    return ids.astype(np.int64)


def _name(path):
    return path.rpartition(".")[2]


def _quantized(linear, scheme, parts=None):
    if parts is not None:  # chosen by the scheme's calibration
        return QuantizedLinear.from_linear(linear, scheme.format, lambda *_: parts)
    if formats.fits(scheme.format, linear.weight.shape[0]):
        return QuantizedLinear.from_linear(linear, scheme.format, scheme.fill)
    return QuantizedLinear.from_linear(linear, FALLBACK)  # named in quantize's one warning


def weight_bytes(model):
    """Bytes of every parameter and buffer of ``model`` as stored, and of the linear layers'
    weights alone: ``{"total": .., "linear": ..}``."""
    linear = 0
    for _, m in model.named_modules():
        if isinstance(m, QuantizedLinear):
            linear += sum(b.size * b.dtype.itemsize for b in m.weight.values())
        elif isinstance(m, Linear):
            linear += m.weight.size * m.weight.dtype.itemsize
    tensors = [*model.named_parameters(), *model.named_buffers()]
    return {"total": sum(t.size * t.dtype.itemsize for _, t in tensors), "linear": linear}
