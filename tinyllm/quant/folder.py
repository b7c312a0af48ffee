"""Quantized model folders: ``tinyllm quantize`` turns a model folder into another.

The new folder is tinyllm's own form (``model.json`` + ``model.safetensors``, the packed
weights and scales as they lie in memory, no pickle) with the tokenizer beside it:
``load_model_folder`` (so ``tinyllm eval``) rebuilds the quantized model from it, each
``QuantizedLinear`` from its entry under ``"layers"`` in ``model.json``. An AWQ folder's
norms and layers hold the folded scales; nothing else is needed to run it.
"""

from pathlib import Path

from ..data import load_tokenizer
from ..train.checkpoint import load_model_folder, save_model
from .calibration import N_SEQUENCES, corpus_calibration
from .linear import get_scheme, is_quantized, quantize, weight_bytes

CALIBRATION_CORPUS = "tinyshakespeare"  # the shipped corpus; its training split


def quantize_folder(
    model_dir, scheme, out, *, include=(), calibration=None, n_sequences=N_SEQUENCES, length=None
):
    """Quantize the model in ``model_dir`` with ``scheme`` and write it, with its tokenizer,
    to ``out``; returns ``{"before": bytes, "after": bytes}`` (``weight_bytes`` of each).

    Schemes that look at activations (awq, gptq) read ``n_sequences`` windows of ``length``
    tokens (default: the model's context length) from the training split of corpus
    ``calibration`` (a shipped corpus's name or a text file; default tinyshakespeare)."""
    scheme = get_scheme(scheme)  # an unknown name fails before any loading
    if Path(out).resolve() == Path(model_dir).resolve():
        raise ValueError(f"quantize: --out {out} is the model folder itself; choose another")
    model = load_model_folder(model_dir)
    tokenizer = load_tokenizer(model_dir)
    ids = None
    if scheme.calibrate is not None and not is_quantized(model):
        length = length or model.config.context_length
        ids = corpus_calibration(calibration or CALIBRATION_CORPUS, tokenizer, n_sequences, length)
    before = weight_bytes(model)
    quantize(model, scheme, include=include, calibration=ids)
    save_model(out, model, tokenizer)
    return {"before": before, "after": weight_bytes(model)}
