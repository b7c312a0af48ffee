"""GPTQ: against a loop-by-loop transcription of Frantar et al.'s Algorithm 1 (its Cholesky
from torch where installed), lower output error than rounding to nearest, Q4_0's grid exactly,
and the layer-by-layer plumbing through a model."""

import numpy as np
import pytest

from tinyllm.models import Transformer, get_preset
from tinyllm.quant import formats, quantize
from tinyllm.quant.calibration import block_inputs, record_inputs, run_block
from tinyllm.quant.gptq import gptq_quantize


def inputs_with_outliers(n, cols, seed, outliers=(3, 17, 40)):
    """Correlated calibration inputs (n, cols), as a layer's are (a few directions carry
    most of them), whose channels ``outliers`` are 20x the others."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 16)) @ rng.standard_normal((16, cols)) / 4
    x += 0.1 * rng.standard_normal((n, cols))
    x[:, list(outliers)] *= 20
    return x


def cholesky_of_inverse(H):
    """Upper U with H^-1 = U^T U: torch's routines where installed (independent of NumPy's)."""
    try:
        import torch
    except ImportError:
        upper = np.linalg.cholesky(np.linalg.inv(H)).T
        return upper
    H = torch.tensor(H, dtype=torch.float64)
    inverse = torch.cholesky_inverse(torch.linalg.cholesky(H))
    return torch.linalg.cholesky(inverse, upper=True).numpy()


def q4_0_scalar(x, d):
    """llama.cpp's quantize_row_q4_0 for one weight: float32 arithmetic, halves up."""
    inverse = np.float32(0) if d == 0 else np.float32(1) / d
    return int(min(max(np.trunc(np.float32(x) * inverse + np.float32(8.5)), 0), 15))


def reference_gptq(w, H, damp=0.01):
    """Algorithm 1, one column and one row at a time, no lazy batches; Q4_0 groups of 32
    whose scale is taken from the updated weights at the group's first column."""
    W = np.array(w, np.float64)
    H = np.array(H, np.float64)
    rows, cols = W.shape
    for i in range(cols):
        if H[i, i] == 0:  # a dead input
            H[i, i] = 1
            W[:, i] = 0
    mean_diag = np.mean([H[i, i] for i in range(cols)])
    for i in range(cols):
        H[i, i] += damp * mean_diag
    U = cholesky_of_inverse(H)
    q = np.zeros((rows, cols), np.uint8)
    d = np.zeros((rows, cols // 32), np.float32)
    for j in range(cols):
        for r in range(rows):
            if j % 32 == 0:
                group = [np.float32(v) for v in W[r, j : j + 32]]
                largest = max(range(32), key=lambda k: (abs(group[k]), -k))  # first on a tie
                d[r, j // 32] = group[largest] / np.float32(-8)
            scale = d[r, j // 32]
            q[r, j] = q4_0_scalar(W[r, j], scale)
            error = (W[r, j] - (int(q[r, j]) - 8) * float(np.float16(scale))) / U[j, j]
            for k in range(j, cols):
                W[r, k] -= error * U[j, k]
    return q, d.astype(np.float16)


def unpacked(parts):
    rows = parts["packed"].shape[0]
    return formats.unpack_nibbles(parts["packed"].reshape(rows, -1, 16)).reshape(rows, -1)


@pytest.mark.parametrize("lazy", [32, 128])
def test_gptq_equals_algorithm_1_bit_for_bit(lazy):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((6, 96)).astype(np.float32)
    x = inputs_with_outliers(200, 96, seed=1)
    x[:, 50] = 0  # a dead input: H[50, 50] = 0
    H = 2 * x.T @ x / len(x)
    parts = gptq_quantize(w, H, lazy=lazy)
    values, scales = reference_gptq(w, H)
    np.testing.assert_array_equal(parts["scales"], scales)
    np.testing.assert_array_equal(unpacked(parts), values)
    assert (unpacked(parts)[:, 50] == 8).all()  # the dead input's weights are 0


def test_gptq_has_less_output_error_than_rounding_to_nearest():
    rng = np.random.default_rng(2)
    w = rng.standard_normal((64, 128)).astype(np.float32)
    x = inputs_with_outliers(512, 128, seed=3)
    parts = gptq_quantize(w, 2 * x.T @ x / len(x))

    def error(p):
        return np.linalg.norm(x @ (formats.dequantize(p, "q4_0") - w).T)

    rounded = error(formats.quantize(w, "q4_0"))
    assert error(parts) < 0.8 * rounded, (error(parts), rounded)


def test_with_a_diagonal_hessian_gptq_is_round_to_nearest_q4_0():
    """No column informs another, so nothing is compensated: llama.cpp's Q4_0, bit for bit."""
    w = np.random.default_rng(4).standard_normal((5, 64)).astype(np.float32)
    w[0, :32] = 0  # an all-zero group
    parts = gptq_quantize(w, np.diag(np.linspace(0.5, 2, 64)))
    reference = formats.quantize(w, "q4_0")
    for key in reference:
        np.testing.assert_array_equal(parts[key], reference[key])


def test_gptq_refuses_rows_q4_0_cannot_group():
    with pytest.raises(ValueError, match="rows of 48 weights.*multiples of 32"):
        gptq_quantize(np.zeros((2, 48), np.float32), np.eye(48))


def test_a_models_first_layers_get_gptq_of_their_float_inputs():
    """Block 0's q, k and v read the float embeddings: their parts are gptq_quantize of
    their stacked weights with the Hessian of those inputs."""
    config = get_preset("tiny-llama", vocab_size=40, n_layer=2, d_model=64, n_head=4)
    ids = np.random.default_rng(5).integers(0, 40, (6, 16))
    float_model = Transformer(config.replace(context_length=16), seed=0).eval()
    stats, firsts = record_inputs(
        float_model.blocks[0], block_inputs(float_model, ids), ["attention.q_proj"]
    )
    attention = float_model.blocks[0].attention
    stacked = np.concatenate([attention.q_proj.weight.numpy().T, attention.k_proj.weight.numpy().T])
    expected = gptq_quantize(stacked, stats["attention.q_proj"].hessian())
    model = quantize(Transformer(config.replace(context_length=16), seed=0).eval(), "gptq",
                     calibration=ids)  # fmt: skip
    ours = [model.blocks[0].attention.q_proj.weight, model.blocks[0].attention.k_proj.weight]
    rows = attention.q_proj.weight.shape[1]
    for key in expected:
        np.testing.assert_array_equal(ours[0][key].numpy(), expected[key][:rows])
        np.testing.assert_array_equal(ours[1][key].numpy(), expected[key][rows:])
    assert list(firsts) == ["attention.q_proj"]


def test_later_blocks_read_the_quantized_earlier_blocks_outputs():
    """Block 1's q, k and v get the Hessian of block 0's output with block 0 quantized."""
    config = get_preset("tiny", vocab_size=40, n_layer=2, d_model=64, n_head=4)
    ids = np.random.default_rng(6).integers(0, 40, (6, 16))
    model = quantize(Transformer(config.replace(context_length=16), seed=0).eval(), "gptq",
                     calibration=ids)  # fmt: skip
    mixed = Transformer(config.replace(context_length=16), seed=0).eval()  # float weights
    for path, layer in model.blocks[0].named_modules():
        if type(layer).__name__ == "QuantizedLinear":
            mixed.blocks[0].set_submodule(path, layer)  # block 0 as GPTQ left it
    inputs = run_block(mixed.blocks[0], block_inputs(mixed, ids))
    stats, _ = record_inputs(mixed.blocks[1], inputs, ["attention.q_proj"])
    attention = mixed.blocks[1].attention
    stacked = np.concatenate([getattr(attention, f"{n}_proj").weight.numpy().T for n in "qkv"])
    expected = gptq_quantize(stacked, stats["attention.q_proj"].hessian())
    rows = attention.q_proj.weight.shape[1]
    ours = model.blocks[1].attention.v_proj.weight
    for key in expected:
        np.testing.assert_array_equal(ours[key].numpy(), expected[key][2 * rows :])
    float_stats, _ = record_inputs(mixed.blocks[1], run_block(
        Transformer(config.replace(context_length=16), seed=0).eval().blocks[0],
        block_inputs(mixed, ids)), ["attention.q_proj"])  # fmt: skip
    assert not np.allclose(float_stats["attention.q_proj"].xtx, stats["attention.q_proj"].xtx)
