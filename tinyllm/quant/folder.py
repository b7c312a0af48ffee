"""Quantized model folders: ``tinyllm quantize`` turns a model folder into another.

The new folder is tinyllm's own form (``model.json`` + ``model.safetensors``, the packed
weights and scales as they lie in memory, no pickle) with the tokenizer beside it:
``load_model_folder`` (so ``tinyllm eval``) rebuilds the quantized model from it, each
``QuantizedLinear`` from its entry under ``"layers"`` in ``model.json``.
"""

from pathlib import Path

from ..data import load_tokenizer
from ..train.checkpoint import load_model_folder, save_model
from .linear import get_scheme, quantize, weight_bytes


def quantize_folder(model_dir, scheme, out, *, include=()):
    """Quantize the model in ``model_dir`` with ``scheme`` and write it, with its tokenizer,
    to ``out``; returns ``{"before": bytes, "after": bytes}`` (``weight_bytes`` of each)."""
    get_scheme(scheme)  # an unknown name fails before any loading
    if Path(out).resolve() == Path(model_dir).resolve():
        raise ValueError(f"quantize: --out {out} is the model folder itself; choose another")
    model = load_model_folder(model_dir)
    before = weight_bytes(model)
    quantize(model, scheme, include=include)
    save_model(out, model, load_tokenizer(model_dir))
    return {"before": before, "after": weight_bytes(model)}
