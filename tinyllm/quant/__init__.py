"""Quantization: weights in fewer bits, and the layers and folders that hold them.

| file         | what it holds                                                           |
|--------------|-------------------------------------------------------------------------|
| `formats.py` | f16, bf16, per-channel int8 and llama.cpp's Q8_0, Q4_0, Q4_1 block layouts |
| `linear.py`  | `QuantizedLinear`, the schemes, `quantize(model, scheme)`, `weight_bytes` |
| `calibration.py` | calibration windows from a corpus's training text; each layer's input statistics |
| `awq.py`     | AWQ: per-channel scales that protect salient inputs, folded away; Q4_0   |
| `gptq.py`    | GPTQ: column-by-column rounding with inverse-Hessian error compensation; Q4_0 |
| `folder.py`  | `quantize_folder`: a model folder in, a quantized model folder out        |
| `gguf_export.py` | GGUF files for llama.cpp: tensor names, types per tensor, the file      |
| `gguf_tokenizer.py` | the tokenizer's GGUF keys (vocabulary, merges, pre-tokenizer)        |
"""

from . import awq, gptq  # register the "awq" and "gptq" schemes
from .calibration import corpus_calibration
from .folder import quantize_folder
from .formats import BLOCK, FORMATS, dequantize, from_ggml, to_ggml
from .linear import (
    SCHEMES,
    QuantizedLinear,
    Scheme,
    get_scheme,
    is_quantized,
    quantize,
    register_scheme,
    weight_bytes,
)

__all__ = [
    "BLOCK",
    "FORMATS",
    "SCHEMES",
    "awq",
    "corpus_calibration",
    "gptq",
    "QuantizedLinear",
    "Scheme",
    "dequantize",
    "from_ggml",
    "get_scheme",
    "is_quantized",
    "quantize",
    "quantize_folder",
    "register_scheme",
    "to_ggml",
    "weight_bytes",
]
