"""Reference answers for exercises/ex12_quantization.py: tinyllm's quantization code.

The exercises work on plain NumPy arrays, so each answer is a thin adapter around the
library's code - the int8 and Q4_0 formats and llama.cpp's block bytes of
tinyllm/quant/formats.py, and the activation statistics of tinyllm/quant/calibration.py that
AWQ's search (tinyllm/quant/awq.py) reads - never a second copy of their arithmetic. The
search itself is AWQ's loop over the grid, with the rounding passed in.
"""

import numpy as np

from tinyllm.quant import formats
from tinyllm.quant.awq import ALPHAS
from tinyllm.quant.calibration import InputStats

__all__ = [
    "absmax_dequantize",
    "absmax_quantize",
    "awq_search",
    "q4_0_matmul",
    "q4_0_pack",
    "q4_0_unpack",
]


def absmax_quantize(w):
    parts = formats.quantize(np.asarray(w, np.float32), "int8")
    return parts["values"], parts["scales"]


def absmax_dequantize(q, scale):
    return formats.dequantize({"values": np.asarray(q), "scales": np.asarray(scale)}, "int8")


def q4_0_pack(x):
    parts = formats.quantize(np.asarray(x, np.float32).reshape(1, formats.BLOCK), "q4_0")
    return formats.to_ggml(parts, "q4_0")[0]


def q4_0_unpack(data):
    parts = formats.from_ggml(np.asarray(data, np.uint8).reshape(1, -1), "q4_0")
    return formats.dequantize(parts, "q4_0")[0]


def q4_0_matmul(x, scales, values):
    values = np.asarray(values, np.uint8)
    rows = values.shape[0]
    packed = formats.pack_nibbles(values.reshape(rows, -1, formats.BLOCK)).reshape(rows, -1)
    weight = formats.dequantize({"scales": np.asarray(scales), "packed": packed}, "q4_0")
    return (np.asarray(x, np.float32) @ weight.T).astype(np.float32)  # (..., out)


def awq_search(x, w, round_trip, alphas=ALPHAS):
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)  # (n, in), (out, in)
    stats = InputStats(w.shape[1])
    stats.add(x)
    size = stats.mean_abs()  # (in,)
    exact = x @ w.T  # (n, out)
    errors, scales = [], []
    for alpha in alphas:
        s = np.maximum(size**alpha, 1e-4)
        s = s / np.sqrt(s.max() * s.min())
        stored = np.asarray(round_trip(w * s), np.float64)  # (out, in)
        errors.append(float(np.sum(((x / s) @ stored.T - exact) ** 2) / len(x)))
        scales.append(s)
    best = int(np.argmin(errors))
    return float(alphas[best]), scales[best], errors
