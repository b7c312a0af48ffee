"""Grading tests for exercises/ex12_quantization.py (lesson 12: quantization).

Answers come from small cases worked out by hand in the comments, from tinyllm's own formats
(``tinyllm.quant.formats``: per-channel int8, Q4_0 and llama.cpp's block bytes), its
``QuantizedLinear`` and AWQ's ``search_scale`` on a layer with outlier input channels, and,
where it is installed, from the ``gguf`` package: the Python port of llama.cpp's reference
quantizers, which writes the bytes a GGUF file holds.
"""

import importlib.util

import numpy as np
import pytest

from tinyllm.nn import Linear
from tinyllm.quant import QuantizedLinear, awq, formats
from tinyllm.quant.calibration import InputStats

EX = "ex12_quantization"

# The gguf case joins the oracles only where it can run. (A skipped case would be graded as
# failed, so without gguf the tinyllm case carries all the points.)
ORACLES = ["tinyllm", "gguf"] if importlib.util.find_spec("gguf") else ["tinyllm"]


def weights(seed, shape, tail=None):
    """Random float32 weights of a trained layer's size (std 0.02); ``tail``: Student's t
    with that many degrees of freedom (a few large weights) instead of a Gaussian."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(shape) if tail is None else rng.standard_t(tail, shape)
    return (w * 0.02).astype(np.float32)


def q4_0_round_trip(w):
    """tinyllm's Q4_0, quantized and dequantized: (out, in) -> (out, in) float32."""
    return formats.dequantize(formats.quantize(w, "q4_0"), "q4_0")


# --- 12.1 absmax int8 per row ------------------------------------------------------------------
@pytest.mark.exercise("12.1", points=1)
def test_absmax_by_hand(exercise):
    """absmax_quantize and absmax_dequantize: small cases worked by hand, halves, a zero row"""
    ex = exercise(EX)
    # absmax 127: scale 1, and halves round away from zero (roundf), not to even.
    w = np.array([[0.5, -1.0, 0.25, 127.0], [1.5, 2.5, -0.5, -127.0]], np.float32)
    q, scale = ex.absmax_quantize(w)
    assert np.asarray(q).dtype == np.int8 and np.asarray(scale).dtype == np.float32
    assert np.asarray(scale).shape == (2, 1)
    np.testing.assert_array_equal(scale, [[1.0], [1.0]])
    np.testing.assert_array_equal(q, [[1, -1, 0, 127], [2, 3, -1, -127]])
    # Each row has its own step: the largest magnitude lands on +-127.
    w = np.array([[-2.54, 0.02, 1.0], [0.0, 0.0, 0.0], [0.001, 0.0, -0.0005]], np.float32)
    q, scale = ex.absmax_quantize(w)
    np.testing.assert_allclose(np.ravel(scale), [0.02, 0.0, 0.001 / 127], rtol=1e-6)
    np.testing.assert_array_equal(q[0], [-127, 1, 50])
    np.testing.assert_array_equal(q[1], [0, 0, 0])  # a zero row: scale 0, no NaN
    np.testing.assert_array_equal(q[2], [127, 0, -64])  # -63.5 rounds away from zero
    back = np.asarray(ex.absmax_dequantize(q, scale))
    assert back.dtype == np.float32 and back.shape == w.shape
    assert np.isfinite(back).all() and not back[1].any()
    np.testing.assert_allclose(back[0], [-2.54, 0.02, 1.0], rtol=1e-6)


@pytest.mark.exercise("12.1", points=2)
def test_absmax_matches_tinyllm_int8(exercise):
    """absmax_quantize: tinyllm's per-channel int8, value for value; the round trip within
    half a step of every weight"""
    ex = exercise(EX)
    cases = [weights(0, (64, 96)), weights(1, (48, 128), tail=3), weights(2, (1, 7)) * 1e4]
    for w in cases:
        kept = w.copy()
        q, scale = ex.absmax_quantize(w)
        np.testing.assert_array_equal(w, kept)  # the input is left as it was
        want = formats.quantize(w, "int8")
        np.testing.assert_array_equal(q, want["values"])
        np.testing.assert_array_equal(scale, want["scales"])
        back = np.asarray(ex.absmax_dequantize(q, scale))
        np.testing.assert_array_equal(back, formats.dequantize(want, "int8"))
        step = np.asarray(scale, np.float64)
        assert np.all(np.abs(back - w) <= step / 2 * (1 + 1e-5) + 1e-12)
        assert np.all(np.abs(q).max(axis=1) == 127)  # every row reaches its absmax


# --- 12.2 one Q4_0 block, packed and unpacked ----------------------------------------------------
@pytest.mark.exercise("12.2", points=1)
def test_q4_0_block_by_hand(exercise):
    """q4_0_pack and q4_0_unpack: the scale, llama.cpp's nibble order, ties and a zero block"""
    ex = exercise(EX)
    # [-1, 0, ..., 0]: d = -1 / -8 = 0.125 (bytes 00 30), v = [0, 8, ..., 8]; byte 2 holds value
    # 0 (0) in its low nibble and value 16 (8) in its high one.
    x = np.zeros(32, np.float32)
    x[0] = -1.0
    data = np.asarray(ex.q4_0_pack(x))
    assert data.dtype == np.uint8 and data.shape == (18,)
    np.testing.assert_array_equal(data, [0x00, 0x30, 0x80] + [0x88] * 15)
    np.testing.assert_array_equal(ex.q4_0_unpack(data), x)
    # x_j = (j - 8) / 8 and x_(j+16) = (7 - j) / 8: max = -1 (the first of -1 and -1), d = 0.125,
    # v = 8 x + 8 = j in the first half and 15 - j in the second, so byte j = j | (15 - j) << 4.
    j = np.arange(16)
    x = np.concatenate([(j - 8) / 8, (7 - j) / 8]).astype(np.float32)
    data = np.asarray(ex.q4_0_pack(x))
    np.testing.assert_array_equal(data[:2], [0x00, 0x30])
    np.testing.assert_array_equal(data[2:], j | (15 - j) << 4)
    assert data[2] == 0xF0 and data[3] == 0xE1  # v 0 (low) and 15 (high); v 1 and 14
    np.testing.assert_array_equal(ex.q4_0_unpack(data), x)
    # A tie for the largest magnitude: the first one (-2) sets d = 0.25 and lands on -8; +2
    # would be 8 steps up, past 7, and is clipped.
    x = np.zeros(32, np.float32)
    x[3], x[20] = -2.0, 2.0
    back = np.asarray(ex.q4_0_unpack(ex.q4_0_pack(x)))
    assert back.dtype == np.float32 and back.shape == (32,)
    assert back[3] == -2.0 and back[20] == 1.75
    # A zero block: d = 0 / -8 = -0.0 (float16 bytes 00 80, as llama.cpp writes it), every v = 8.
    np.testing.assert_array_equal(ex.q4_0_pack(np.zeros(32, np.float32)), [0, 0x80] + [0x88] * 16)
    np.testing.assert_array_equal(ex.q4_0_unpack(np.array([0, 0x80] + [0x88] * 16, np.uint8)), 0.0)


def reference_block_bytes(oracle, x):
    """The 18 bytes of one Q4_0 block from tinyllm's ``to_ggml`` or gguf's ``quantize``."""
    if oracle == "tinyllm":
        return formats.to_ggml(formats.quantize(x[None], "q4_0"), "q4_0")[0]
    from gguf import GGMLQuantizationType
    from gguf.quants import quantize

    return quantize(x[None], GGMLQuantizationType.Q4_0)[0]


@pytest.mark.exercise("12.2", points=2)
@pytest.mark.parametrize("oracle", ORACLES)
def test_q4_0_block_matches_the_libraries(exercise, oracle):
    """q4_0_pack: the bytes of tinyllm's to_ggml and gguf's reference quantizer on random blocks;
    q4_0_unpack: the weights they stand for"""
    ex = exercise(EX)
    blocks = np.concatenate([weights(3, (40, 32)), weights(4, (40, 32), tail=2),
                             weights(5, (8, 32)) * 1e3, np.round(weights(6, (8, 32)) * 400) / 8])  # fmt: skip
    for x in blocks:
        kept = x.copy()
        data = np.asarray(ex.q4_0_pack(x))
        np.testing.assert_array_equal(x, kept)
        np.testing.assert_array_equal(data, reference_block_bytes(oracle, x))
        want = formats.dequantize(formats.from_ggml(data[None], "q4_0"), "q4_0")[0]
        np.testing.assert_array_equal(ex.q4_0_unpack(data), want)


# --- 12.3 a matmul with Q4_0 weights ---------------------------------------------------------
@pytest.mark.exercise("12.3", points=1)
def test_q4_0_matmul_by_hand(exercise):
    """q4_0_matmul: small cases worked by hand, a scale per block, the -8 offset"""
    ex = exercise(EX)
    x = np.arange(1, 33, dtype=np.float32)[None]  # (1, 32)
    got = np.asarray(ex.q4_0_matmul(x, np.array([[0.5]], np.float16), np.full((1, 32), 9)))
    assert got.shape == (1, 1) and got.dtype == np.float32
    np.testing.assert_allclose(got, [[264.0]])  # 0.5 * (1 + ... + 32)
    # Two blocks with their own scales, two outputs: v = 8 is a zero weight.
    x = np.ones((1, 64), np.float32)
    values = np.full((2, 64), 8)
    values[0, :32], values[1, 32:] = 10, 0  # output 0: +2 d0 in block 0; output 1: -8 d1 in block 1
    scales = np.array([[0.25, 4.0], [1.0, 0.125]], np.float16)
    np.testing.assert_allclose(
        ex.q4_0_matmul(x, scales, values), [[32 * 2 * 0.25, 32 * -8 * 0.125]]
    )


@pytest.mark.exercise("12.3", points=2)
def test_q4_0_matmul_matches_tinyllm(exercise):
    """q4_0_matmul: x @ dequantize(W).T from tinyllm's Q4_0 parts, and a QuantizedLinear's
    forward pass, for batches of any leading shape"""
    ex = exercise(EX)
    rng = np.random.default_rng(7)
    for out_features, in_features, lead in ((16, 32, (5,)), (24, 96, (2, 3)), (1, 256, (1,))):
        w = weights(out_features + in_features, (out_features, in_features), tail=4)
        parts = formats.quantize(w, "q4_0")
        values = formats.unpack_nibbles(parts["packed"].reshape(out_features, -1, 16))
        values = values.reshape(out_features, in_features)
        x = rng.standard_normal((*lead, in_features)).astype(np.float32)
        got = np.asarray(ex.q4_0_matmul(x, parts["scales"], values))
        assert got.shape == (*lead, out_features) and got.dtype == np.float32
        want = x @ formats.dequantize(parts, "q4_0").T
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    # A Linear quantized to Q4_0 by tinyllm: its forward pass is this matmul.
    layer = QuantizedLinear.from_linear(Linear(128, 40, bias=False, seed=0), "q4_0")
    scales, packed = layer.weight["scales"].data, layer.weight["packed"].data
    values = formats.unpack_nibbles(packed.reshape(40, -1, 16)).reshape(40, 128)
    x = rng.standard_normal((3, 7, 128)).astype(np.float32)
    np.testing.assert_allclose(ex.q4_0_matmul(x, scales, values), layer(x).numpy(), rtol=1e-4,
                               atol=1e-6)  # fmt: skip


# --- 12.4 AWQ's scale search -------------------------------------------------------------------
def outlier_layer(seed, n=256, in_features=64, out_features=48, outliers=(3, 17, 40)):
    """Inputs whose ``outliers`` channels are 20-50x the others (float64) and a weight."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, in_features)) * rng.uniform(0.5, 1.5, in_features)
    x[:, list(outliers)] *= rng.uniform(20, 50, len(outliers))
    return x, weights(seed + 100, (out_features, in_features), tail=5).astype(np.float64)


@pytest.mark.exercise("12.4", points=1)
def test_awq_search_by_hand(exercise):
    """awq_search: alpha 0 is plain rounding, the scales' normalisation, the error's definition,
    the rounding used is the one passed in"""
    ex = exercise(EX)
    x, w = outlier_layer(0, n=64, in_features=32, out_features=8, outliers=(3, 17))
    # With a lossless rounding every alpha is exact: the first alpha wins the tie.
    alpha, s, errors = ex.awq_search(x, w, lambda m: np.asarray(m, np.float32))
    assert alpha == 0.0 and len(errors) == len(ex.ALPHAS)
    np.testing.assert_allclose(s, 1.0)
    np.testing.assert_allclose(errors, 0.0, atol=1e-9)
    # alpha 0 alone: s = 1 and the error is plain rounding's mean squared output error.
    alpha, s, errors = ex.awq_search(x, w, q4_0_round_trip, alphas=[0.0])
    want = np.sum((x @ (q4_0_round_trip(w) - w).T) ** 2) / len(x)
    assert alpha == 0.0 and errors[0] == pytest.approx(want, rel=1e-9)
    # alpha 1: s = mean|x|, scaled so that sqrt(max(s) min(s)) = 1.
    size = np.abs(x).mean(axis=0)
    alpha, s, _ = ex.awq_search(x, w, q4_0_round_trip, alphas=[1.0])
    np.testing.assert_allclose(s, size / np.sqrt(size.max() * size.min()), rtol=1e-12)

    # A rounding to multiples of 0.01 (not Q4_0): the error is computed through it.
    def coarse(m):
        return (np.round(np.asarray(m) * 100) / 100).astype(np.float32)

    alpha, s, errors = ex.awq_search(x, w, coarse, alphas=[0.0, 0.5])
    s_half = np.sqrt(size) / np.sqrt(np.sqrt(size.max() * size.min()))
    want = [np.sum((x @ (coarse(w) - w).T) ** 2) / len(x),
            np.sum(((x / s_half) @ coarse(w * s_half).T - x @ w.T) ** 2) / len(x)]  # fmt: skip
    np.testing.assert_allclose(errors, want, rtol=1e-6)
    assert alpha == [0.0, 0.5][int(np.argmin(want))]


@pytest.mark.exercise("12.4", points=2)
def test_awq_search_matches_tinyllm(exercise):
    """awq_search: tinyllm's awq.search_scale (the grid, the scores, the scales) on layers with
    outlier input channels; the outliers get the largest scales and the error falls"""
    ex = exercise(EX)
    for seed, shape in ((1, (256, 64, 48)), (2, (512, 96, 32)), (3, (128, 32, 64))):
        n, in_features, out_features = shape
        x, w = outlier_layer(seed, n, in_features, out_features, outliers=(0, in_features // 2))
        stats = InputStats(in_features)
        stats.add(x)
        want_s, want_errors = awq.search_scale(w.T, stats)  # tinyllm's weight is (in, out)
        alpha, s, errors = ex.awq_search(x, w, q4_0_round_trip)
        np.testing.assert_allclose(errors, want_errors, rtol=1e-6)
        assert alpha == awq.ALPHAS[int(np.argmin(want_errors))]
        np.testing.assert_allclose(s, want_s, rtol=1e-6)
        assert alpha > 0 and min(errors) < errors[0]  # the outliers are worth protecting
        assert set(np.argsort(-np.asarray(s))[:2]) == {0, in_features // 2}
