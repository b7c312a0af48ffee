"""Grading tests for exercises/ex10_lora.py (lesson 10: LoRA).

Answers come from small cases worked out by hand in the comments, from tinyllm's own
``LoRALinear`` (its forward, ``merge`` and ``unmerge``, on a ``Linear`` holding the transpose
of the given weight) and ``lora_summary`` of a model that ``apply_lora`` adapted, and, where
they are installed, from PEFT: ``peft.tuners.lora.Linear`` wrapped around a PyTorch
``nn.Linear`` by ``get_peft_model`` (its forward, ``merge`` and ``unmerge``) and
``get_nb_trainable_parameters``.
"""

import importlib.util

import numpy as np
import pytest

import tinyllm
from tinyllm import Tensor
from tinyllm.models import Transformer, get_preset
from tinyllm.nn import Linear, LoRALinear, apply_lora
from tinyllm.nn.lora import lora_layers, lora_summary

EX = "ex10_lora"

# The PEFT case joins the oracles only where it can run. (A skipped case would be graded as
# failed, so without PEFT the tinyllm cases carry all the points.)
HAS_PEFT = all(importlib.util.find_spec(name) for name in ("torch", "peft"))
ORACLES = ["tinyllm", "peft"] if HAS_PEFT else ["tinyllm"]

IDENTITY, A1, B1 = np.eye(2), np.array([[1.0, 1.0]]), np.array([[1.0], [0.0]])


def adapter_case(seed, n_in=7, n_out=5, r=3, lead=(2, 4)):
    """Random float64 x (*lead, in), weight (out, in), bias (out,), A (r, in) and B (out, r).
    B is random, not zero: a trained adapter's."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((*lead, n_in))
    weight = rng.standard_normal((n_out, n_in))
    bias = rng.standard_normal(n_out)
    A = rng.standard_normal((r, n_in)) / np.sqrt(n_in)
    B = rng.standard_normal((n_out, r))
    return x, weight, bias, A, B


CASES = [  # (seed, shape, alpha): ranks 1 to min(in, out), wider and narrower layers
    (0, {}, 6),
    (1, {"n_in": 16, "n_out": 4, "r": 4, "lead": (3,)}, 8),
    (2, {"n_in": 3, "n_out": 9, "r": 1, "lead": (2, 2, 3)}, 0.5),
    (3, {"n_in": 12, "n_out": 12, "r": 8, "lead": (5,)}, 16),
]


def tinyllm_layer(weight, bias, A, B, alpha):
    """tinyllm's LoRALinear with the given arrays (float32, its weight transposed)."""
    out_features, in_features = weight.shape
    base = Linear(in_features, out_features, bias=bias is not None)
    base.load_state_dict({"weight": weight.T, **({} if bias is None else {"bias": bias})})
    layer = LoRALinear(base, r=len(A), alpha=alpha)
    layer.adapters["default"].load_state_dict({"A": A, "B": B})
    return layer


def peft_layer(weight, bias, A, B, alpha):
    """PEFT's lora.Linear around a float64 torch nn.Linear holding the given arrays."""
    import peft
    import torch

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            out_features, in_features = weight.shape
            self.proj = torch.nn.Linear(in_features, out_features, bias=bias is not None,
                                        dtype=torch.float64)  # fmt: skip

        def forward(self, x):
            return self.proj(x)

    config = peft.LoraConfig(r=len(A), lora_alpha=alpha, target_modules=["proj"])
    layer = peft.get_peft_model(Net(), config).base_model.model.proj
    with torch.no_grad():
        layer.base_layer.weight.copy_(torch.tensor(weight))
        if bias is not None:
            layer.base_layer.bias.copy_(torch.tensor(bias))
        layer.lora_A["default"].weight.copy_(torch.tensor(A))
        layer.lora_B["default"].weight.copy_(torch.tensor(B))
    return layer


def library_forward(oracle, x, weight, bias, A, B, alpha):
    if oracle == "tinyllm":
        with tinyllm.no_grad():
            return tinyllm_layer(weight, bias, A, B, alpha)(Tensor(x.astype(np.float32))).numpy()
    import torch

    with torch.no_grad():
        return peft_layer(weight, bias, A, B, alpha)(torch.tensor(x)).numpy()


def library_merge(oracle, weight, A, B, alpha):
    """(merged weight (out, in), the weight after merging and unmerging again)."""
    if oracle == "tinyllm":
        layer = tinyllm_layer(weight, None, A, B, alpha)
        layer.merge()
        merged = layer.base.weight.numpy().T.copy()
        layer.unmerge()
        return merged, layer.base.weight.numpy().T.copy()
    import torch

    layer = peft_layer(weight, None, A, B, alpha)
    with torch.no_grad():
        layer.merge()
        merged = layer.base_layer.weight.numpy().copy()
        layer.unmerge()
        return merged, layer.base_layer.weight.numpy().copy()


def tolerance(oracle):
    return {"rtol": 1e-5, "atol": 1e-5} if oracle == "tinyllm" else {"rtol": 1e-10, "atol": 1e-12}


# --- 10.1 the forward -----------------------------------------------------------------------------
@pytest.mark.exercise("10.1", points=1)
def test_lora_forward_by_hand(exercise):
    """lora_forward: small cases worked by hand"""
    ex = exercise(EX)
    # Base [1, 2]; x @ A.T = 3, @ B.T = [3, 0], times alpha / r = 2 / 1: y = [7, 2].
    got = np.asarray(ex.lora_forward(np.array([[1.0, 2.0]]), IDENTITY, None, A1, B1, 2))
    assert got.shape == (1, 2)
    np.testing.assert_allclose(got, [[7.0, 2.0]], rtol=1e-12)
    # The bias is the base layer's, added once.
    got = ex.lora_forward(np.array([[1.0, 2.0]]), IDENTITY, np.array([0.5, -1.0]), A1, B1, 2)
    np.testing.assert_allclose(got, [[7.5, 1.0]], rtol=1e-12)
    # alpha / r, not alpha: rank 2 with alpha 2 scales by 1. A = B = identity: update x.
    got = ex.lora_forward(np.array([[1.0, 2.0]]), IDENTITY, None, IDENTITY, IDENTITY, 2)
    np.testing.assert_allclose(got, [[2.0, 4.0]], rtol=1e-12)
    # B = 0, as LoRA starts: the base layer's output exactly, for any A.
    x, weight, bias, A, _ = adapter_case(0)
    start = ex.lora_forward(x, weight, bias, A, np.zeros((5, 3)), 6)
    np.testing.assert_array_equal(start, x @ weight.T + bias)
    # Any leading dimensions: (2, 4, 7) in, (2, 4, 5) out.
    assert np.shape(start) == (2, 4, 5)


@pytest.mark.exercise("10.1", points=2)
@pytest.mark.parametrize("oracle", ORACLES)
def test_lora_forward_matches_the_libraries(exercise, oracle):
    """lora_forward: tinyllm's LoRALinear or PEFT's lora.Linear, random layers and ranks"""
    ex = exercise(EX)
    for seed, shape, alpha in CASES:
        x, weight, bias, A, B = adapter_case(seed, **shape)
        kept = [array.copy() for array in (x, weight, bias, A, B)]
        for b in (bias, None):
            want = library_forward(oracle, x, weight, b, A, B, alpha)
            got = np.asarray(ex.lora_forward(x, weight, b, A, B, alpha))
            assert got.shape == want.shape
            np.testing.assert_allclose(got, want, **tolerance(oracle))
        for array, before in zip((x, weight, bias, A, B), kept):  # inputs left as they were
            np.testing.assert_array_equal(array, before)


# --- 10.2 merge -----------------------------------------------------------------------------------
@pytest.mark.exercise("10.2", points=1)
def test_lora_merge_by_hand(exercise):
    """lora_merge: small cases worked by hand"""
    ex = exercise(EX)
    weight = IDENTITY.copy()
    # B @ A = [[1, 1], [0, 0]], times alpha / r = 2, plus the identity.
    got = np.asarray(ex.lora_merge(weight, A1, B1, 2))
    np.testing.assert_allclose(got, [[3.0, 2.0], [0.0, 1.0]], rtol=1e-12)
    np.testing.assert_array_equal(weight, IDENTITY)  # a new array; the weight is untouched
    # alpha / r: rank 2, alpha 1, A = B = identity adds half the identity.
    np.testing.assert_allclose(ex.lora_merge(weight, IDENTITY, IDENTITY, 1), 1.5 * IDENTITY)
    # B = 0 merges nothing; a float32 weight stays float32.
    weight32 = np.arange(6, dtype=np.float32).reshape(2, 3)
    merged = np.asarray(ex.lora_merge(weight32, np.ones((1, 3)), np.zeros((2, 1)), 16))
    assert merged.dtype == np.float32
    np.testing.assert_array_equal(merged, weight32)


@pytest.mark.exercise("10.2", points=2)
@pytest.mark.parametrize("oracle", ORACLES)
def test_lora_merge_matches_the_libraries(exercise, oracle):
    """lora_merge: the library's merged weight, which computes the unmerged layer's output"""
    ex = exercise(EX)
    for seed, shape, alpha in CASES:
        x, weight, bias, A, B = adapter_case(seed, **shape)
        kept = weight.copy()
        merged = np.asarray(ex.lora_merge(weight, A, B, alpha))
        np.testing.assert_array_equal(weight, kept)
        want, _ = library_merge(oracle, weight, A, B, alpha)
        assert merged.shape == weight.shape
        np.testing.assert_allclose(merged, want, **tolerance(oracle))
        # one matrix, the same function: the merged layer is the adapted one
        unmerged_output = library_forward(oracle, x, weight, bias, A, B, alpha)
        np.testing.assert_allclose(x @ merged.T + bias, unmerged_output, **tolerance(oracle))


# --- 10.3 unmerge ---------------------------------------------------------------------------------
@pytest.mark.exercise("10.3", points=1)
def test_lora_unmerge_by_hand(exercise):
    """lora_unmerge: small cases worked by hand"""
    ex = exercise(EX)
    merged = np.array([[3.0, 2.0], [0.0, 1.0]])
    got = np.asarray(ex.lora_unmerge(merged, A1, B1, 2))
    np.testing.assert_allclose(got, IDENTITY, atol=1e-15)
    np.testing.assert_array_equal(merged, [[3.0, 2.0], [0.0, 1.0]])  # left as it was
    # alpha / r: rank 2, alpha 1, A = B = identity takes half the identity away.
    np.testing.assert_allclose(ex.lora_unmerge(1.5 * IDENTITY, IDENTITY, IDENTITY, 1), IDENTITY)
    # float32 in, float32 out
    merged32 = np.ones((2, 3), np.float32)
    assert np.asarray(ex.lora_unmerge(merged32, np.ones((1, 3)), np.ones((2, 1)), 1)).dtype == (
        np.float32
    )


@pytest.mark.exercise("10.3", points=2)
@pytest.mark.parametrize("oracle", ORACLES)
def test_lora_unmerge_matches_the_libraries(exercise, oracle):
    """lora_unmerge: the library's weight after merge and unmerge, from its merged weight"""
    ex = exercise(EX)
    for seed, shape, alpha in CASES:
        _, weight, _, A, B = adapter_case(seed, **shape)
        merged, want = library_merge(oracle, weight, A, B, alpha)
        kept = merged.copy()
        got = np.asarray(ex.lora_unmerge(merged, A, B, alpha))
        np.testing.assert_array_equal(merged, kept)
        assert got.shape == weight.shape
        np.testing.assert_allclose(got, want, **tolerance(oracle))
        np.testing.assert_allclose(got, weight, **tolerance(oracle))  # the base back


# --- 10.4 what trains -----------------------------------------------------------------------------
@pytest.mark.exercise("10.4", points=1)
def test_parameter_counts_by_hand(exercise):
    """lora_parameter_count and trainable_fraction: small cases worked by hand"""
    ex = exercise(EX)
    shapes = [(128, 128), (64, 128)]
    # 4 * (128 + 128) + 4 * (128 + 64) = 1024 + 768
    assert int(ex.lora_parameter_count(shapes, 4)) == 1792
    assert int(ex.lora_parameter_count(shapes, 1)) == 448
    assert int(ex.lora_parameter_count([(4096, 4096)], 8)) == 65_536  # 0.4% of 16.8M
    assert int(ex.lora_parameter_count([], 8)) == 0
    # The adapters count in the total: 1792 / (10,000 + 1792).
    assert float(ex.trainable_fraction(10_000, shapes, 4)) == pytest.approx(1792 / 11_792)
    assert float(ex.trainable_fraction(0, shapes, 4)) == pytest.approx(1.0)


def library_counts(oracle, preset, targets, r):
    """(adapted weight shapes (out, in), base parameters, adapter parameters, fraction)."""
    if oracle == "tinyllm":
        model = Transformer(get_preset(preset, n_layer=2, d_model=32, n_head=4), seed=0)
        base = model.num_parameters()
        apply_lora(model, r=r, alpha=2 * r, target_modules=targets)
        shapes = [(layer.out_features, layer.in_features) for _, layer in lora_layers(model)]
        summary = lora_summary(model)
        return shapes, base, summary["trainable_parameters"], summary["trainable_fraction"]
    import peft
    import torch

    sizes = {"tiny": [(32, 96), (96, 64), (64, 10)], "tiny-llama": [(48, 48), (48, 128)]}[preset]
    net = torch.nn.Sequential(*(torch.nn.Linear(n_in, n_out) for n_in, n_out in sizes))
    base = sum(p.numel() for p in net.parameters())
    names = [str(i) for i in range(len(sizes))][: 2 if targets == "some" else None]
    adapted = peft.get_peft_model(net, peft.LoraConfig(r=r, target_modules=names))
    trainable, total = adapted.get_nb_trainable_parameters()
    shapes = [(n_out, n_in) for (n_in, n_out), name in zip(sizes, names)]
    return shapes, base, trainable, trainable / total


COUNT_CASES = {
    "tinyllm": [("tiny-llama", ("q_proj", "v_proj"), 4), ("tiny", ("q_proj", "mlp.*"), 2),
                ("tiny-llama", "*", 8)],
    "peft": [("tiny", "all", 4), ("tiny-llama", "some", 2), ("tiny", "some", 16)],
}  # fmt: skip


@pytest.mark.exercise("10.4", points=2)
@pytest.mark.parametrize("oracle", ORACLES)
def test_parameter_counts_match_the_libraries(exercise, oracle):
    """lora_parameter_count and trainable_fraction: tinyllm's lora_summary or PEFT's count"""
    ex = exercise(EX)
    for preset, targets, r in COUNT_CASES[oracle]:
        shapes, base, trainable, fraction = library_counts(oracle, preset, targets, r)
        assert int(ex.lora_parameter_count(shapes, r)) == trainable
        assert float(ex.trainable_fraction(base, shapes, r)) == pytest.approx(fraction, rel=1e-12)
