"""Exercises for lesson 12: quantization. Replace each ``raise NotImplementedError``.

A weight matrix is stored in fewer bits as small integers and a scale per group of weights:
per row for absmax int8 (12.1), per block of 32 for llama.cpp's Q4_0, whose 18-byte blocks you
pack and unpack (12.2). A layer with Q4_0 weights computes its matmul block by block, scaling
each block's integer dot product once (12.3). AWQ protects the input channels that carry large
activations by scaling them before rounding, with the scale searched per layer (12.4).

Everything here is plain NumPy. A weight matrix is (out_features, in_features), one row per
output feature - the layout of ``torch.nn.Linear`` and of a GGUF file - and a layer computes
``y = x @ W.T`` for inputs ``x`` (..., in_features).

Grade with ``tinyllm grade exercises -k ex12`` (lesson: lessons/12-quantization.md).
"""

import numpy as np  # noqa: F401 - you will need it

BLOCK = 32  # weights per block in llama.cpp's Q4_0
ALPHAS = np.arange(20) / 20  # AWQ's grid: alpha = 0, 0.05, ..., 0.95


# --- Exercise 12.1 --------------------------------------------------------------------------
def absmax_quantize(w):
    """Symmetric 8-bit quantization of each row of ``w`` (rows, cols): ``(q, scale)``.

    scale: float32 (rows, 1), the row's largest magnitude / 127 (its step).
    q:     int8 (rows, cols), round(w / scale): each row's largest magnitude lands on +-127.

    Round halves away from zero, as C's ``roundf`` (and llama.cpp) does - NumPy's ``np.round``
    rounds them to even. Compute ``w * (1 / scale)`` in float32, as llama.cpp does. A row of
    zeros has scale 0 and q 0 (no division by zero, no NaN).

    [[0.5, -1.0, 0.25, 127.0]] -> scale [[1.0]], q [[1, -1, 0, 127]]   (0.5 rounds up to 1)
    """
    raise NotImplementedError("Exercise 12.1: absmax int8 quantization per row")


def absmax_dequantize(q, scale):
    """The float32 matrix ``q * scale`` that ``absmax_quantize``'s output stands for; each
    weight comes back within half a step (scale / 2) of the original."""
    raise NotImplementedError("Exercise 12.1: int8 back to float32")


# --- Exercise 12.2 --------------------------------------------------------------------------
def q4_0_pack(x):
    """One block of 32 float32 weights -> its 18 bytes in llama.cpp's Q4_0 (uint8 (18,)).

    The scale: d = max / -8, with ``max`` the *signed* weight of largest magnitude (the first
    one, on a tie), so that weight lands exactly on -8 and the grid runs -8 d .. 7 d.
    The values: v = trunc(x * (1 / d) + 8.5) clipped to 0..15 (round(x / d) + 8, halves up),
    computed in float32 from the float32 d (the float16 rounding is for storage only). An
    all-zero block has d = 0 / -8 = -0.0 (float16 bytes 00 80) and every v = 8.

    The bytes:  | d as little-endian float16 (2 bytes) | 16 bytes of values |
    byte 2 + j holds value j in its low nibble and value j + 16 in its high nibble: the first
    16 values in the low nibbles, the last 16 in the high ones.

    x = [-1, then 31 zeros]: d = -1 / -8 = 0.125, v = [0, 8, 8, ..., 8]
    -> bytes 00 30 (0.125 as float16), then 0x80 (value 16 = 8 high, value 0 = 0 low), then
       fifteen 0x88.
    """
    raise NotImplementedError("Exercise 12.2: pack one Q4_0 block")


def q4_0_unpack(data):
    """The 18 bytes of one Q4_0 block -> its 32 float32 weights, d * (v - 8)."""
    raise NotImplementedError("Exercise 12.2: unpack one Q4_0 block")


# --- Exercise 12.3 --------------------------------------------------------------------------
def q4_0_matmul(x, scales, values):
    """``x @ W.T`` for a Q4_0 weight W, computed block by block: an array (..., out_features).

    x:      float32 (..., in_features).
    scales: float16 (out_features, in_features // 32), each block's d.
    values: integers 0..15 (out_features, in_features), each weight's v (the weight is
            d * (v - 8), its block's d).

    For each output o, sum over the blocks b of  d[o, b] * (x_b . (v[o, b] - 8)): the integer
    part of each block is multiplied with the inputs first, and the block's scale applied once
    to the sum - how a quantized kernel saves the multiplications, and why the float16 scale is
    all it needs to read besides the 4-bit values. Return float32.

    x = [1, 2, ..., 32], one output whose block has d = 0.5 and v = 9 everywhere (weights all
    0.5): 0.5 * (1 + 2 + ... + 32) = 264.
    """
    raise NotImplementedError("Exercise 12.3: a matmul with Q4_0 weights, block by block")


# --- Exercise 12.4 --------------------------------------------------------------------------
def awq_search(x, w, round_trip, alphas=ALPHAS):
    """AWQ's per-channel scale for one layer: ``(best_alpha, s, errors)``.

    x:          float (n, in_features), the layer's inputs on calibration text.
    w:          float (out_features, in_features), its weight.
    round_trip: a function (out, in) float -> (out, in) float32, the weight quantized and
                dequantized (the grader passes Q4_0's; use it, do not write your own).
    alphas:     the grid.

    For each alpha, in order:
        s = mean(|x|, over the n tokens) ** alpha          (in_features,), float64
        s = max(s, 1e-4), then s / sqrt(max(s) * min(s))   (the scales' geometric middle is 1)
        the layer stores round_trip(w * s) (each column j of w times s_j) and reads x / s:
        error = mean over the n tokens of || (x / s) @ round_trip(w * s).T - x @ w.T ||^2
    (the squared norm summed over the outputs). ``errors`` lists them (floats), ``best_alpha``
    is the alpha of the smallest (the first, on a tie) and ``s`` its scales (in_features,).
    alpha = 0 gives s = 1 everywhere: plain rounding, so the best is never worse than it.
    """
    raise NotImplementedError("Exercise 12.4: AWQ's scale search for one layer")
