"""Quantization: llama.cpp's block bytes against the ``gguf`` package's reference quantizers,
rounding properties, the quantized layer, ``quantize(model)``, quantized model folders."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinyllm.autograd import Tensor
from tinyllm.cli import main
from tinyllm.data import CharVocab
from tinyllm.models import Transformer, get_preset
from tinyllm.nn import Linear
from tinyllm.quant import QuantizedLinear, formats, quantize, weight_bytes
from tinyllm.train.checkpoint import load_model, load_model_folder, save_model

gguf = pytest.importorskip("gguf", reason="the gguf package is the reference (the 'dev' extra)")
from gguf import GGMLQuantizationType  # noqa: E402
from gguf.quants import dequantize as gguf_dequantize  # noqa: E402
from gguf.quants import quantize as gguf_quantize  # noqa: E402

GGML_TYPES = {
    "q8_0": GGMLQuantizationType.Q8_0,
    "q4_0": GGMLQuantizationType.Q4_0,
    "q4_1": GGMLQuantizationType.Q4_1,
}
QMAX = {"q8_0": 127, "q4_0": 8, "q4_1": 15}  # the largest |q| a scale multiplies


def awkward_matrix(rows, cols, seed):
    """Random rows with a zero block, a constant block, and ties for the largest magnitude."""
    w = np.random.default_rng(seed).standard_normal((rows, cols)).astype(np.float32)
    w[0, :32] = 0.0  # an all-zero block: d = 0
    if rows > 1:
        w[1, :32] = 0.25  # a constant block (Q4_1: max == min)
    if rows > 2:
        w[2, :32] = np.where(np.arange(32) % 2, 0.5, -0.5)  # +-0.5 tie: the first one wins
    return w


@pytest.mark.parametrize("name", list(GGML_TYPES))
@pytest.mark.parametrize("shape", [(1, 32), (3, 64), (5, 96), (4, 256)])
def test_block_bytes_and_values_equal_gguf(name, shape):
    w = awkward_matrix(*shape, seed=sum(shape))
    parts = formats.quantize(w, name)
    ours = formats.to_ggml(parts, name)
    reference = gguf_quantize(w, GGML_TYPES[name])
    assert ours.dtype == np.uint8 and ours.shape == reference.shape
    np.testing.assert_array_equal(ours, reference)
    np.testing.assert_array_equal(
        formats.dequantize(parts, name), gguf_dequantize(reference, GGML_TYPES[name])
    )
    back = formats.from_ggml(reference, name)
    assert sorted(back) == sorted(parts)
    for key in parts:
        np.testing.assert_array_equal(back[key], parts[key])


def test_q4_0_nibble_order_is_llama_cpps():
    """Byte j holds value j (low nibble) and value j + 16 (high nibble)."""
    d = np.float32(0.5)
    q = np.arange(32) % 16  # stored values 0..15 twice
    w = ((q - 8) * d).astype(np.float32)[None]
    w[0, 0] = -8 * d  # the signed largest magnitude sets d = max / -8 = 0.5
    packed = formats.quantize(w, "q4_0")["packed"][0]
    assert [int(b) & 0x0F for b in packed] == list(range(16))
    assert [int(b) >> 4 for b in packed] == list(range(16))
    assert formats.to_ggml(formats.quantize(w, "q4_0"), "q4_0")[0, :2].view("<f2")[0] == d


finite = st.floats(-1e3, 1e3, allow_nan=False, width=32)


@settings(max_examples=40, deadline=None)
@given(
    name=st.sampled_from(list(GGML_TYPES)),
    blocks=st.integers(1, 3),
    values=st.lists(finite, min_size=96, max_size=96),
)
def test_block_formats_round_within_half_a_step(name, blocks, values):
    """Each value lands within half a step (d), plus what rounding d to float16 moves; Q4_0
    reaches -8 steps on the side of the largest magnitude but only +7 on the other, so a value
    past 7.5 steps there is clipped to 7."""
    w = np.asarray(values[: 32 * blocks], np.float32)[None]
    parts = formats.quantize(w, name)
    got = formats.dequantize(parts, name).reshape(-1, 32)
    x = w.reshape(-1, 32)
    if name == "q4_1":
        exact = (x.max(1) - x.min(1)) / np.float32(15)
        moved = QMAX[name] * np.abs(exact - parts["scales"][0]) + np.abs(
            x.min(1) - parts["mins"][0]
        )
    else:
        largest = np.take_along_axis(x, np.abs(x).argmax(1)[:, None], 1)[:, 0]
        exact = np.abs(largest) / (127 if name == "q8_0" else 8)
        moved = QMAX[name] * np.abs(exact - np.abs(parts["scales"][0].astype(np.float32)))
    bound = exact / 2 + moved + 1e-6 * np.abs(x).max(1)
    clipped = np.maximum(np.abs(x) - 7.5 * exact[:, None], 0) if name == "q4_0" else 0
    assert (np.abs(got - x) <= bound[:, None] + clipped).all()


@settings(max_examples=40, deadline=None)
@given(
    name=st.sampled_from(["int8", *GGML_TYPES]),
    step=st.integers(1, 255),
    low=st.integers(-2000, 2000),
    seed=st.integers(0, 2**16),
)
def test_representable_values_come_back_exactly(name, step, low, seed):
    """x = d * q (+ m for Q4_1) with float16 d and m and q in range: no error at all."""
    rng = np.random.default_rng(seed)
    d, m = np.float32(step / 256), np.float32(low / 256)
    if name == "q4_1":
        q = rng.integers(0, 16, (2, 64))
        q[:, [0, 32]], q[:, [1, 33]] = 0, 15  # each block's min and max
        w = q * d + m
    else:
        top = {"int8": 127, "q8_0": 127, "q4_0": 7}[name]
        q = rng.integers(-top, top + 1, (2, 64))
        q[:, [0, 32]] = -8 if name == "q4_0" else 127  # sets each block's d
        w = q * d
    w = w.astype(np.float32)
    np.testing.assert_array_equal(formats.dequantize(formats.quantize(w, name), name), w)


def test_int8_rounds_within_half_a_step_per_channel():
    w = np.random.default_rng(0).standard_normal((6, 40)).astype(np.float32)
    parts = formats.quantize(w, "int8")
    assert parts["values"].dtype == np.int8 and parts["scales"].shape == (6, 1)
    assert (np.abs(formats.dequantize(parts, "int8") - w) <= parts["scales"] / 2 + 1e-7).all()


def test_casts_round_to_nearest_even():
    torch = pytest.importorskip("torch")
    w = np.random.default_rng(1).standard_normal((4, 50)).astype(np.float32)
    w[0, :3] = [1 + 2**-8, 1 + 3 * 2**-8, 1 + 2**-11]  # exact ties for bf16 / f16
    bf16 = torch.from_numpy(w).to(torch.bfloat16).float().numpy()
    np.testing.assert_array_equal(formats.dequantize(formats.quantize(w, "bf16"), "bf16"), bf16)
    f16 = torch.from_numpy(w).half().float().numpy()
    np.testing.assert_array_equal(formats.dequantize(formats.quantize(w, "f16"), "f16"), f16)


@pytest.mark.parametrize("name", ["f16", "bf16", "int8", "q8_0", "q4_1", "q4_0"])
def test_parts_are_in_c_order_for_a_transposed_matrix(name):
    """A layer quantizes its (in, out) weight transposed; its parts are C-ordered all the
    same, as a copy loaded from a folder holds them (so both compute the same bits)."""
    w = np.random.default_rng(0).standard_normal((64, 8)).astype(np.float32)
    parts = formats.quantize(w.T, name)
    assert all(part.flags.c_contiguous for part in parts.values())
    for key, part in formats.quantize(np.ascontiguousarray(w.T), name).items():
        np.testing.assert_array_equal(parts[key], part)


def test_unknown_format_and_bad_rows_are_named():
    with pytest.raises(ValueError, match="'q3'.*q8_0"):
        formats.quantize(np.zeros((1, 32)), "q3")
    with pytest.raises(ValueError, match="multiple of 32.*\\(2, 40\\)"):
        formats.quantize(np.zeros((2, 40)), "q4_0")


# --- the layer -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["f16", "bf16", "int8", "q8_0", "q4_1", "q4_0"])
def test_quantized_linear_computes_with_the_dequantized_weight(name):
    linear = Linear(64, 5, seed=0)
    linear.bias.data = np.arange(5, dtype=np.float32)
    layer = QuantizedLinear.from_linear(linear, name)
    weight = formats.dequantize(formats.quantize(linear.weight.numpy().T, name), name)  # (5, 64)
    x = Tensor(np.random.default_rng(2).standard_normal((3, 64)), requires_grad=True)
    y = layer(x)
    np.testing.assert_allclose(y.numpy(), x.numpy() @ weight.T + np.arange(5), atol=1e-5)
    y.sum().backward()  # gradients reach the input and the bias, never the weight
    np.testing.assert_allclose(x.grad, np.ones((3, 5)) @ weight, atol=1e-5)
    np.testing.assert_allclose(layer.bias.grad, np.full(5, 3.0))
    assert [n for n, _ in layer.named_parameters()] == ["bias"]
    assert all(b.grad is None for _, b in layer.named_buffers())


def small_model(d_model=64, tie=True):
    config = get_preset("tiny", vocab_size=40, n_layer=2, d_model=d_model, n_head=2)
    return Transformer(config.replace(context_length=16, tie_embeddings=tie), seed=0).eval()


def test_quantize_swaps_every_block_linear_and_keeps_the_output_layer():
    model = small_model(tie=False)
    linears = [p for p, m in model.named_modules() if isinstance(m, Linear)]
    quantize(model, "q4_0")
    kinds = {p: type(m).__name__ for p, m in model.named_modules() if p in linears}
    assert kinds.pop("lm_head") == "Linear"
    assert set(kinds.values()) == {"QuantizedLinear"} and len(kinds) == len(linears) - 1
    included = quantize(small_model(tie=False), "q8_0", include=("lm_head",))
    assert isinstance(included.lm_head, QuantizedLinear)


def test_quantize_refuses_unknown_schemes_and_quantized_models():
    with pytest.raises(ValueError, match="'q2'.*int8, q8_0, q4_1, q4_0"):
        quantize(small_model(), "q2")
    model = quantize(small_model(), "int8")
    with pytest.raises(ValueError, match="quantized already"):
        quantize(model, "q4_0")


def test_rows_a_block_cannot_hold_fall_back_to_int8_by_name():
    model = small_model(d_model=48)  # attention rows of 48 weights; MLP down rows of 192
    with pytest.warns(
        UserWarning, match="blocks.0.attention.q_proj, .*48.*int8 per channel"
    ) as got:
        quantize(model, "q4_0")
    assert len(got) == 1  # one warning for all of them
    assert "blocks.1.attention.o_proj" in str(got[0].message)
    layers = {p: m.format for p, m in model.named_modules() if isinstance(m, QuantizedLinear)}
    assert layers["blocks.0.attention.q_proj"] == "int8"
    assert "q4_0" in layers.values()


def test_quantized_models_keep_their_logits_and_shrink():
    ids = np.arange(32).reshape(2, 16) % 40
    float_model = small_model()
    reference, _ = float_model(ids)
    before = weight_bytes(float_model)
    for name, tolerance in [("q8_0", 0.02), ("q4_0", 0.2)]:
        model = quantize(small_model(), name)
        logits, _ = model(ids)
        assert np.abs(logits.numpy() - reference.numpy()).max() < tolerance
        after = weight_bytes(model)
        bits = {"q8_0": 8.5, "q4_0": 4.5}[name]
        assert after["linear"] == before["linear"] * bits / 32
        assert after["total"] - after["linear"] == before["total"] - before["linear"]


# --- folders -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["bf16", "q4_1"])
def test_a_quantized_model_folder_rebuilds_the_same_model(tmp_path, name):
    model = quantize(small_model(), name)
    save_model(tmp_path, model)
    description = json.loads((tmp_path / "model.json").read_text())
    assert description["layers"]["blocks.1.mlp.up"]["format"] == name
    loaded = load_model(tmp_path)
    ours, theirs = model.state_dict(), loaded.state_dict()
    assert sorted(ours) == sorted(theirs)
    assert all(
        theirs[k].dtype == ours[k].dtype and np.array_equal(theirs[k], ours[k]) for k in ours
    )
    ids = np.arange(16)[None] % 40
    np.testing.assert_array_equal(loaded(ids)[0].numpy(), model(ids)[0].numpy())


def test_cli_quantize_writes_a_folder_that_eval_measures(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TINYLLM_CACHE", str(tmp_path / "cache"))
    text = "the quick brown fox jumps over the lazy dog. " * 60
    corpus = tmp_path / "fox.txt"
    corpus.write_text(text)
    vocab = CharVocab.from_text(text)
    config = get_preset("tiny", vocab_size=vocab.vocab_size, n_layer=1, d_model=64, n_head=2)
    base = tmp_path / "base"
    Transformer(config.replace(context_length=16), seed=0).save_pretrained(base)
    vocab.save(base)
    assert main(["quantize", str(base), "--scheme", "q8_0", "--out", str(tmp_path / "q")]) == 0
    assert "q8_0: linear weights" in capsys.readouterr().out
    rebuilt = load_model_folder(tmp_path / "q").blocks[0].mlp.up
    assert type(rebuilt).__name__ == "QuantizedLinear"  # (doctests may import a second copy)
    ppl = {}
    for folder in ("base", "q"):
        args = ["eval", "--model", str(tmp_path / folder), "--data", f"corpus:{corpus}"]
        assert main(args) == 0
        ppl[folder] = json.loads((tmp_path / folder / "eval.json").read_text())["val_ppl"]
    assert abs(ppl["q"] / ppl["base"] - 1) < 0.01  # Q8_0 keeps perplexity within 1%
    assert (
        main(["quantize", str(tmp_path / "q"), "--scheme", "q4_0", "--out", str(tmp_path / "qq")])
        == 2
    )
    assert "quantized already" in capsys.readouterr().err
