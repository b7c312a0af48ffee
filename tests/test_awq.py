"""AWQ: folding the scales leaves the float model's function unchanged, the grid's score is
the layer's output error, and the searched scales beat rounding to nearest where a few input
channels are large."""

import numpy as np
import pytest

from tinyllm.models import Transformer, get_preset
from tinyllm.quant import QuantizedLinear, formats, quantize
from tinyllm.quant.awq import ALPHAS, clipped_q4_0, fold_scales, rounded, search_scale
from tinyllm.quant.calibration import InputStats


def model_with_outliers(preset, **changes):
    """A small random model whose norms make a few channels large, as trained models' are."""
    config = get_preset(preset, vocab_size=40, n_layer=2, d_model=64, context_length=16, **changes)
    model = Transformer(config, seed=0).eval()
    rng = np.random.default_rng(1)
    for path, m in model.named_modules():
        if path.endswith("_norm") and path.startswith("blocks"):
            weight = rng.uniform(0.5, 1.5, 64).astype(np.float32)
            weight[[5, 33]] = 12.0  # two salient channels
            m.weight.data = weight
            if getattr(m, "bias", None) is not None:
                m.bias.data = rng.normal(0, 0.3, 64).astype(np.float32)
    return model


IDS = np.random.default_rng(2).integers(0, 40, (8, 16))


@pytest.mark.parametrize(
    "preset, changes, unscaled",
    [
        ("tiny-llama", {"n_head": 4, "n_kv_head": 2}, set()),  # RMSNorm, GQA, SwiGLU
        ("tiny", {"n_head": 4}, {"mlp.down"}),  # GPT-2: LayerNorm with bias, biases, GELU
    ],
)
def test_folding_leaves_the_float_models_logits_unchanged(preset, changes, unscaled):
    model = model_with_outliers(preset, **changes)
    before = model(IDS)[0].numpy()
    scales = fold_scales(model, IDS)
    after = model(IDS)[0].numpy()
    assert np.abs(after - before).max() < 1e-5 * max(1.0, np.abs(before).max())
    linears = {p for p, m in model.named_modules() if type(m).__name__ == "Linear"}
    scaled = {p.split(".", 2)[2] for p in scales}
    assert scaled == {p.split(".", 2)[2] for p in linears if p.startswith("blocks")} - unscaled
    assert any(np.abs(s - 1).max() > 0.1 for s in scales.values())  # not all alpha = 0


def test_gqa_scales_are_shared_by_the_query_heads_of_a_group():
    model = model_with_outliers("tiny-llama", n_head=4, n_kv_head=2)
    s = fold_scales(model, IDS)["blocks.0.attention.o_proj"].reshape(2, 2, 16)  # kv, group, dim
    np.testing.assert_array_equal(s[:, 0], s[:, 1])


def inputs_with_outliers(n, cols, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, cols)).astype(np.float32)
    x[:, [7, 40, 90]] *= 25  # salient channels
    return x


def test_the_grid_score_is_the_mean_squared_output_error():
    rng = np.random.default_rng(3)
    w = rng.standard_normal((128, 48)).astype(np.float32)  # (in, out), tinyllm's layout
    x = inputs_with_outliers(300, 128, seed=4)
    stats = InputStats(128)
    stats.add(x[:100])
    stats.add(x[100:])  # sums over batches
    s, scores = search_scale(w.astype(np.float64), stats)
    assert len(scores) == len(ALPHAS) == 20
    np.testing.assert_allclose(stats.mean_abs(), np.abs(x.astype(np.float64)).mean(0), rtol=1e-9)
    for alpha, score in zip(ALPHAS, scores):
        size = np.maximum(stats.mean_abs() ** alpha, 1e-4)
        candidate = size / np.sqrt(size.max() * size.min())  # llm-awq's normalisation
        direct = np.mean(np.sum((x @ (rounded(w, candidate) - w)) ** 2, axis=1))
        assert score == pytest.approx(direct, rel=1e-4)
        if alpha == ALPHAS[int(np.argmin(scores))]:
            np.testing.assert_allclose(s, candidate, rtol=1e-6)
    rtn = formats.dequantize(formats.quantize(w.T, "q4_0"), "q4_0").T  # alpha = 0: s = 1
    assert scores[0] == pytest.approx(np.mean(np.sum((x @ (rtn - w)) ** 2, axis=1)), rel=1e-4)


def test_awq_has_less_output_error_than_rounding_to_nearest():
    rng = np.random.default_rng(5)
    w = rng.standard_normal((128, 64)).astype(np.float32)
    x = inputs_with_outliers(512, 128, seed=6)
    stats = InputStats(128)
    stats.add(x)
    s, _ = search_scale(w.astype(np.float64), stats)
    scaled = formats.quantize((w * s[:, None]).T, "q4_0")  # what the layer stores
    awq = (x / s) @ formats.dequantize(scaled, "q4_0").T  # and computes, reading x / s
    rtn = x @ formats.dequantize(formats.quantize(w.T, "q4_0"), "q4_0").T
    exact = x @ w
    assert np.linalg.norm(awq - exact) < 0.8 * np.linalg.norm(rtn - exact)


def test_an_awq_model_is_q4_0_and_closer_to_the_float_model_on_its_calibration_text():
    reference = model_with_outliers("tiny-llama", n_head=4, n_kv_head=2)
    exact = reference(IDS)[0].numpy()
    errors = {}
    for name in ("q4_0", "awq"):
        model = model_with_outliers("tiny-llama", n_head=4, n_kv_head=2)
        quantize(model, name, calibration=IDS if name == "awq" else None)
        layers = [m for _, m in model.named_modules() if isinstance(m, QuantizedLinear)]
        assert len(layers) == 14 and {m.format for m in layers} == {"q4_0"}
        errors[name] = np.abs(model(IDS)[0].numpy() - exact).mean()
    assert errors["awq"] < errors["q4_0"]


def test_clipping_lowers_each_groups_output_error_and_falls_back_to_q4_0():
    rng = np.random.default_rng(7)
    w = rng.standard_normal((16, 96)).astype(np.float32)  # (out, in)
    w[:, 10] *= 6  # a weight column far out: worth clipping where its input is small
    x = inputs_with_outliers(400, 96, seed=8)
    xtx = x.T.astype(np.float64) @ x / len(x)
    parts = clipped_q4_0(w, xtx)
    rtn = formats.quantize(w, "q4_0")

    def group_errors(p):  # (out, groups): e^T G e per group of 32 inputs
        e = (formats.dequantize(p, "q4_0") - w).reshape(16, 3, 32)
        return np.stack([np.einsum("ri,ij,rj->r", e[:, g], xtx[32 * g : 32 * g + 32,
                                                               32 * g : 32 * g + 32], e[:, g])
                         for g in range(3)], axis=1)  # fmt: skip

    ours, theirs = group_errors(parts), group_errors(rtn)
    assert (ours <= theirs * (1 + 1e-9)).all() and ours.sum() < 0.9 * theirs.sum()
    assert (np.abs(parts["scales"]) <= np.abs(rtn["scales"])).all()  # ranges only shrink
    same = clipped_q4_0(w, np.zeros((96, 96)))  # no error to lower: round to nearest
    for key in rtn:
        np.testing.assert_array_equal(same[key], rtn[key])
