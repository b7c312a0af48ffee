"""Grading tests for exercises/ex13_gpus_and_scale.py (lesson 13: GPUs, backends and scale).

Answers come from small cases worked out by hand in the comments, from tinyllm's own
accounting (``tinyllm.analysis``: the FLOPs, weight and KV-cache bytes of published model
shapes; ``tinyllm.train.sharding``: how each layout cuts an array), from the ZeRO paper's
Figure 1, from published accelerator peaks (NVIDIA's A100 and H100 data sheets), and, where
they are installed, from outside oracles: JAX placing arrays with tinyllm's ``ShardingPlan`` on
forced host devices (the bytes each device really holds), and the bfloat16 casts of
``ml_dtypes`` and PyTorch. Blocked attention is graded against tinyllm's ``query_blocks`` and
its attention op and, where installed, PyTorch's; its products are counted as it takes them.
"""

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tinyllm.functional as F
from tinyllm import Tensor
from tinyllm.analysis import (
    KNOWN_MODELS,
    inference_flops_per_token,
    kv_cache_bytes,
    parameter_count,
    weight_bytes,
)
from tinyllm.functional.attention import query_blocks
from tinyllm.models import get_preset
from tinyllm.quant import formats
from tinyllm.train.sharding import SHARD_MODES, layout_summary, split_axes

EX = "ex13_gpus_and_scale"
ROOT = Path(__file__).resolve().parent.parent

A100 = dict(peak_flops=312e12, bandwidth=1.555e12)  # SXM 40GB: dense bfloat16, HBM2
H100 = dict(peak_flops=989e12, bandwidth=3.35e12)  # SXM: dense bfloat16, HBM3

# Outside oracles join only where they can run. (A skipped case would be graded as failed, so
# without them the tinyllm cases carry all the points.)
LAYOUT_ORACLES = ["tinyllm", "jax"] if importlib.util.find_spec("jax") else ["tinyllm"]
BF16_ORACLES = ["tinyllm"] + [
    name for name in ("ml_dtypes", "torch") if importlib.util.find_spec(name)
]
ATTENTION_ORACLES = ["tinyllm"] + (["torch"] if importlib.util.find_spec("torch") else [])


def dense_models():
    """Published dense shapes and two of tinyllm's presets: every kind of attention and MLP."""
    names = ("gpt2", "llama-2-7b", "llama-3-8b", "mistral-7b", "qwen2.5-32b", "qwen3-0.6b")
    return [KNOWN_MODELS[n] for n in names] + [get_preset("tiny"), get_preset("tiny-llama")]


# --- 13.1 FLOPs and bytes ----------------------------------------------------------------------
@pytest.mark.exercise("13.1", points=1)
def test_costs_by_hand(exercise):
    """matmul_cost and decode_cost: small cases worked by hand"""
    ex = exercise(EX)
    # (1, 4096) @ (4096, 4096): 2 * 4096^2 FLOPs; (4096 + 4096^2 + 4096) float32 values.
    assert tuple(ex.matmul_cost(1, 4096, 4096)) == (33_554_432, 67_141_632)
    # (2, 3) @ (3, 5) in bfloat16: 2 * 30 FLOPs, (6 + 15 + 10) * 2 bytes.
    assert tuple(ex.matmul_cost(2, 3, 5, bytes_per_value=2)) == (60, 62)
    # A square product of n: 2 n^3 FLOPs on 3 n^2 values, n / 6 FLOP per float32 byte.
    flops, nbytes = ex.matmul_cost(1200, 1200, 1200)
    assert flops / nbytes == pytest.approx(1200 / 6)
    # GPT-2 small, 0 cached keys: N = 85,056,000 non-embedding parameters + 768 x 50,257
    # output weights = 123,653,376 multiplied by; 2 FLOPs and 2 bytes (16 bits) each.
    gpt2 = KNOWN_MODELS["gpt2"]
    flops, nbytes = ex.decode_cost(gpt2, seq_len=0)
    assert flops == pytest.approx(2 * 123_653_376) and nbytes == pytest.approx(2 * 123_653_376)
    assert flops / nbytes == pytest.approx(1.0)
    # 1,000 cached keys: attention adds 4 x 12 layers x 768 x 1000 FLOPs, the cache 2 (k and v)
    # x 12 x 768 x 1000 values of 2 bytes; 8 sequences: 8 times the FLOPs and the cache.
    flops, nbytes = ex.decode_cost(gpt2, seq_len=1000, batch_size=8)
    assert flops == pytest.approx(8 * (2 * 123_653_376 + 4 * 12 * 768 * 1000))
    assert nbytes == pytest.approx(2 * 123_653_376 + 8 * 2 * 12 * 768 * 1000 * 2)
    # Llama-3-8B's grouped-query cache: 8 key/value heads of 128, not 32.
    llama = KNOWN_MODELS["llama-3-8b"]
    _, with_cache = ex.decode_cost(llama, seq_len=4096)
    _, without = ex.decode_cost(llama, seq_len=0)
    assert with_cache - without == pytest.approx(2 * 32 * 8 * 128 * 4096 * 2)  # 0.5 GiB


@pytest.mark.exercise("13.1", points=2)
def test_decode_cost_matches_tinyllm(exercise):
    """decode_cost: tinyllm.analysis's FLOPs, weight bytes and KV-cache bytes, on published
    shapes at several precisions, context lengths and batch sizes; matmul_cost over shapes"""
    ex = exercise(EX)
    for config in dense_models():
        multiplied = parameter_count(config).active_non_embedding
        multiplied += config.d_model * config.vocab_size
        for seq_len, batch_size, bits, kv_bits in ((0, 1, 16, 16), (512, 4, 4.5, 16),
                                                   (2048, 32, 8, 8), (100, 1, 32, 32)):  # fmt: skip
            seq_len = min(seq_len, config.context_length)
            flops, nbytes = ex.decode_cost(config, seq_len, batch_size, bits=bits, kv_bits=kv_bits)
            want = batch_size * inference_flops_per_token(config, seq_len)
            assert flops == pytest.approx(want, rel=1e-12)
            cache = kv_cache_bytes(config, seq_len, batch_size, kv_bits)
            assert nbytes == pytest.approx(weight_bytes(multiplied, bits) + cache, rel=1e-9)
    rng = np.random.default_rng(0)
    for _ in range(20):
        m, k, n = (int(v) for v in rng.integers(1, 5000, 3))
        size = int(rng.choice([1, 2, 4]))
        assert tuple(ex.matmul_cost(m, k, n, size)) == (
            2 * m * k * n,
            (m * k + k * n + m * n) * size,
        )


# --- 13.2 the roofline ---------------------------------------------------------------------------
@pytest.mark.exercise("13.2", points=1)
def test_roofline_by_hand(exercise):
    """attainable_flops and roofline: the slope, the roof, the ridge and its tie, arrays"""
    ex = exercise(EX)
    # A toy processor: 100 FLOP/s, 10 bytes/s; its ridge point is 10 FLOP/byte.
    assert ex.attainable_flops(1, 100, 10) == pytest.approx(10)  # on the slope: 1 x 10
    assert ex.attainable_flops(10, 100, 10) == pytest.approx(100)  # the ridge
    assert ex.attainable_flops(50, 100, 10) == pytest.approx(100)  # under the roof
    out = np.asarray(ex.attainable_flops(np.array([[0.5, 2.0], [20.0, 1e6]]), 100, 10))
    assert out.shape == (2, 2)
    np.testing.assert_allclose(out, [[5, 20], [100, 100]])
    # 1000 FLOPs on 10 bytes: 10 s of arithmetic, 1 s of bytes -> compute-bound, 10 s.
    seconds, bound = ex.roofline(1000, 10, 100, 10)
    assert seconds == pytest.approx(10) and bound == "compute"
    # 100 FLOPs on 100 bytes: 1 s against 10 s -> memory-bound, 10 s.
    seconds, bound = ex.roofline(100, 100, 100, 10)
    assert seconds == pytest.approx(10) and bound == "memory"
    # Exactly on the ridge: 1000 FLOPs on 100 bytes, 10 s each: "compute".
    assert tuple(ex.roofline(1000, 100, 100, 10)) == (pytest.approx(10), "compute")
    # An A100: intensity 1 reaches 1.555 TFLOP/s, 1000 reaches the 312 TFLOP/s roof.
    assert ex.attainable_flops(1, **A100) == pytest.approx(1.555e12)
    assert ex.attainable_flops(1000, **A100) == pytest.approx(312e12)


@pytest.mark.exercise("13.2", points=2)
def test_roofline_on_published_peaks(exercise):
    """roofline: decoding published models on an A100 and an H100 (tinyllm.analysis's counts),
    the batch at which decoding turns compute-bound, and the roof's own identities"""
    ex = exercise(EX)
    # Decoding Llama-2-7B in bfloat16, one sequence: the 6.61B weights a token is multiplied by
    # (all but the input embedding), 13.2 GB, over 1.555 TB/s.
    llama = KNOWN_MODELS["llama-2-7b"]
    multiplied = parameter_count(llama).active_non_embedding + 4096 * 32000
    flops, nbytes = inference_flops_per_token(llama, 0), weight_bytes(multiplied, 16)
    seconds, bound = ex.roofline(flops, nbytes, **A100)
    assert bound == "memory" and seconds == pytest.approx(nbytes / 1.555e12)
    assert 1 / seconds == pytest.approx(117.7, rel=1e-3)  # tokens/s, at most
    # Prefill of 2,048 tokens at once: each weight meets 2,048 tokens - compute-bound.
    seconds, bound = ex.roofline(2048 * flops, nbytes, **H100)
    assert bound == "compute" and seconds == pytest.approx(2048 * flops / 989e12)
    # With the weights alone (flops = 2 N b on 2 N bytes), decoding a batch of b sequences has
    # intensity b: on an H100 (ridge 989 / 3.35 = 295.2) a batch of 295 is memory-bound and a
    # batch of 296 compute-bound.
    n = 1_000_000_000
    assert ex.roofline(2 * n * 295, 2 * n, **H100)[1] == "memory"
    assert ex.roofline(2 * n * 296, 2 * n, **H100)[1] == "compute"
    # The roof's identities, over random kernels and processors: the time is the larger of the
    # two, and it agrees with attainable_flops.
    rng = np.random.default_rng(3)
    for _ in range(200):
        flops, nbytes = 10 ** rng.uniform(3, 15), 10 ** rng.uniform(3, 12)
        peak, bandwidth = 10 ** rng.uniform(9, 15), 10 ** rng.uniform(9, 13)
        seconds, bound = ex.roofline(flops, nbytes, peak, bandwidth)
        assert seconds == pytest.approx(max(flops / peak, nbytes / bandwidth), rel=1e-12)
        assert bound == ("memory" if nbytes / bandwidth > flops / peak else "compute")
        rate = float(ex.attainable_flops(flops / nbytes, peak, bandwidth))
        assert flops / seconds == pytest.approx(rate, rel=1e-9)
    intensity = np.logspace(-2, 4, 61)
    curve = np.asarray(ex.attainable_flops(intensity, **H100))
    np.testing.assert_allclose(curve, np.minimum(989e12, intensity * 3.35e12), rtol=1e-12)


# --- 13.3 who holds which bytes ---------------------------------------------------------------
@pytest.mark.exercise("13.3", points=1)
def test_bytes_per_device_by_hand(exercise):
    """zero_bytes: the ZeRO paper's Figure 1; device_bytes: small layouts worked by hand"""
    ex = exercise(EX)
    # Rajbhandari et al. 2020, Figure 1: 7.5B parameters, 64 devices, K = 12. The paper prints
    # 120 GB, 31.4 GB, 16.6 GB and 1.9 GB.
    psi, want = 7.5e9, [120e9, 31.40625e9, 16.640625e9, 1.875e9]
    for stage, total in enumerate(want):
        held = ex.zero_bytes(psi, 64, stage)
        assert set(held) == {"parameters", "gradients", "optimizer", "total"}
        assert held["total"] == pytest.approx(total)
        assert held["total"] == pytest.approx(
            held["parameters"] + held["gradients"] + held["optimizer"]
        )
    stage2 = ex.zero_bytes(psi, 64, 2)
    assert stage2["parameters"] == pytest.approx(2 * psi)  # whole until stage 3
    assert stage2["gradients"] == pytest.approx(2 * psi / 64)
    assert stage2["optimizer"] == pytest.approx(12 * psi / 64)
    # Adam with no master copy (K = 8): stage 1 on 4 devices, 1,000 parameters.
    assert ex.zero_bytes(1000, 4, 1, optimizer_bytes=8)["total"] == pytest.approx(
        2000 + 2000 + 2000
    )
    with pytest.raises(ValueError, match="4"):
        ex.zero_bytes(1000, 4, 4)
    # A (65, 128) embedding over 4 devices: 128 is cut (65 does not divide), 65 x 32 values.
    # A (65,) bias stays whole. float32: 4 bytes; two moments.
    shapes = {"embedding": (65, 128), "bias": (65,)}
    fsdp = ex.device_bytes("fsdp", shapes, 4)
    assert fsdp == {"parameters": 4 * (2080 + 65), "gradients": 4 * (2080 + 65),
                    "moments": 8 * (2080 + 65), "total": 16 * (2080 + 65)}  # fmt: skip
    zero1 = ex.device_bytes("zero1", shapes, 4)
    assert zero1 == {"parameters": 4 * 8385, "gradients": 4 * 8385, "moments": 8 * (2080 + 65),
                     "total": 8 * 8385 + 8 * 2145}  # fmt: skip
    assert ex.device_bytes("dp", shapes, 4)["total"] == 16 * 8385
    # (96, 64) over 8: 96 is the larger axis 8 divides; (6, 64) over 4: only 64 divides.
    assert ex.device_bytes("fsdp", {"w": (96, 64)}, 8)["parameters"] == 4 * 12 * 64
    assert ex.device_bytes("fsdp", {"w": (6, 64)}, 4)["parameters"] == 4 * 6 * 16
    # One device holds everything, whatever the mode.
    assert ex.device_bytes("fsdp", shapes, 1) == ex.device_bytes("dp", shapes, 1)
    with pytest.raises(ValueError, match="zero3"):
        ex.device_bytes("zero3", shapes, 4)


# The oracle run in a child Python that sees ``n`` CPU devices: tinyllm's ShardingPlan places
# float32 parameters and a fresh AdamW-shaped state; the bytes of device 0's pieces come back.
PLACE = """
import json, sys
import numpy as np
from tinyllm.train.sharding import ShardingPlan
spec = json.loads(sys.argv[1])


def on_device_0(arrays):
    return sum(s.data.nbytes for a in arrays for s in a.addressable_shards if s.device.id == 0)


out = []
for shapes in spec["layouts"]:
    out.append({})
    for mode in spec["modes"]:
        plan = ShardingPlan(mode, spec["n"])
        params = {k: np.zeros(s, np.float32) for k, s in shapes.items()}
        state = plan.place_state({"step": {k: 0 for k in params},
                                  "exp_avg": dict(params), "exp_avg_sq": dict(params)})
        moments = [*state["exp_avg"].values(), *state["exp_avg_sq"].values()]
        out[-1][mode] = {"parameters": on_device_0(plan.place_params(params).values()),
                         "moments": on_device_0(moments)}
print(json.dumps(out))
"""


def placed_bytes(layouts, n):
    """For each {name: shape} of ``layouts``: {mode: {"parameters", "moments"}}, the bytes
    device 0 holds as JAX lays them out over n devices (a child Python that sees n)."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "OPENBLAS_NUM_THREADS": "1"}
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={n}"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    layouts = [{k: list(s) for k, s in shapes.items()} for shapes in layouts]
    spec = {"modes": list(SHARD_MODES), "n": n, "layouts": layouts}
    proc = subprocess.run([sys.executable, "-c", PLACE, json.dumps(spec)], env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def model_shapes(config):
    """{name: shape} of every parameter of a Transformer with ``config``, built on the host."""
    from tinyllm.models import Transformer

    return {name: tuple(p.shape) for name, p in Transformer(config, seed=0).named_parameters()}


@pytest.mark.exercise("13.3", points=2)
@pytest.mark.parametrize("oracle", LAYOUT_ORACLES)
def test_device_bytes_match_tinyllm_layouts(exercise, oracle):
    """device_bytes: tinyllm's layouts (sharding.split_axes, layout_summary) or, with JAX, the
    bytes a ShardingPlan really puts on a device; zero_bytes over stages and device counts"""
    ex = exercise(EX)
    tiny = model_shapes(get_preset("tiny", n_layer=2, d_model=64, n_head=4, context_length=32))
    odd = {"a": (65, 96), "b": (7, 11), "c": (24,), "d": (3, 40, 6)}
    if oracle == "jax":  # two child Pythons: 4 devices, then 3
        cases = [(tiny, 4), (odd, 4), (odd, 3)]
        got = [
            {mode: ex.device_bytes(mode, shapes, n) for mode in SHARD_MODES} for shapes, n in cases
        ]
        placed = placed_bytes([tiny, odd], 4) + placed_bytes([odd], 3)
        for (_, n), answers, want in zip(cases, got, placed):
            for mode, held in answers.items():
                assert held["total"] == held["parameters"] + held["gradients"] + held["moments"]
                assert held["parameters"] == want[mode]["parameters"], (mode, n)
                assert held["moments"] == want[mode]["moments"], (mode, n)
    for shapes, n in ((tiny, 4), (odd, 4), (odd, 8), (tiny, 2), (odd, 3), (odd, 1)):
        for mode in SHARD_MODES:
            got = ex.device_bytes(mode, shapes, n)
            assert got["total"] == got["parameters"] + got["gradients"] + got["moments"]
            params = moments = 0
            for shape in shapes.values():
                size = int(np.prod(shape))
                param_axis, moment_axis = split_axes(mode, shape, n)
                params += size // (1 if param_axis is None else n)
                moments += size // (1 if moment_axis is None else n)
            assert got["parameters"] == 4 * params and got["moments"] == 8 * moments
            assert got["gradients"] == got["parameters"]  # laid out as the parameters
            total = sum(int(np.prod(s)) for s in shapes.values())
            line = layout_summary(mode, n, shapes)  # the same shares, as tinyllm prints them
            assert f"holds {params / total:.0%} of the parameters" in line
            assert f"{moments / total:.0%} of each AdamW moment" in line
    # ZeRO's stages against the closed forms, 2 + 2 + K bytes a parameter.
    for psi, nd, k in ((1e9, 8, 12), (7e10, 1024, 12), (123_456, 3, 8)):
        totals = [ex.zero_bytes(psi, nd, stage, optimizer_bytes=k)["total"] for stage in range(4)]
        want = [(4 + k) * psi, 4 * psi + k * psi / nd, 2 * psi + (2 + k) * psi / nd,
                (4 + k) * psi / nd]  # fmt: skip
        np.testing.assert_allclose(totals, want, rtol=1e-12)
        assert totals == sorted(totals, reverse=True)


# --- 13.4 bfloat16 by its bits ---------------------------------------------------------------
def _bits(value):
    return int(np.float32(value).view(np.uint32))


@pytest.mark.exercise("13.4", points=1)
def test_bfloat16_by_hand(exercise):
    """to_bfloat16_bits and from_bfloat16_bits: ties to even, carries, signs, infinities, NaN"""
    ex = exercise(EX)
    step = 2.0**-7  # bfloat16's step between 1 and 2
    cases = [  # (float32, the bits of the nearest bfloat16)
        (1.0, 0x3F80),
        (-2.0, 0xC000),
        (1 + step / 2, 0x3F80),  # halfway to 1 + 2^-7: the even neighbour, 1.0
        (1 + 3 * step / 2, 0x3F82),  # halfway between 0x3F81 and 0x3F82: the even one
        (1 + step / 2 + 2.0**-23, 0x3F81),  # just past halfway: up
        (2 - step / 4, 0x4000),  # rounds up across the exponent: the carry makes 2.0
        (0.0, 0x0000),
        (-0.0, 0x8000),
        (float("inf"), 0x7F80),
        (float("-inf"), 0xFF80),
        (3.4028235e38, 0x7F80),  # float32's largest rounds past bfloat16's: infinity
        (3.3895314e38, 0x7F7F),  # bfloat16's largest stays
        (2.0**-133, 0x0001),  # a float32 subnormal: the smallest bfloat16 subnormal
    ]
    x = np.array([value for value, _ in cases], np.float32)
    want = np.array([bits for _, bits in cases], np.uint16)
    got = np.asarray(ex.to_bfloat16_bits(x))
    assert got.dtype == np.uint16 and got.shape == x.shape
    np.testing.assert_array_equal(got, want)
    back = np.asarray(ex.from_bfloat16_bits(got))
    assert back.dtype == np.float32 and back.shape == x.shape
    np.testing.assert_array_equal(back.view(np.uint32), want.astype(np.uint32) << 16)
    # NaN stays NaN, whatever its payload (rounding would carry 0x7FFFFFFF into 0x8000).
    nans = np.array([_bits(np.nan), 0x7FFFFFFF, 0xFFFFFFFF, 0x7F800001], np.uint32).view(np.float32)
    assert np.isnan(ex.from_bfloat16_bits(ex.to_bfloat16_bits(nans))).all()
    # Any shape; bfloat16 values come back exactly.
    grid = (np.arange(24, dtype=np.uint32).reshape(2, 3, 4) + 0x3F80) << 16
    exact = grid.view(np.float32)
    np.testing.assert_array_equal(ex.to_bfloat16_bits(exact), (grid >> 16).astype(np.uint16))
    np.testing.assert_array_equal(ex.from_bfloat16_bits(ex.to_bfloat16_bits(exact)), exact)


def oracle_bits(oracle, x):
    """The bfloat16 bits of float32 ``x`` from tinyllm's bf16 format, ml_dtypes or torch."""
    if oracle == "tinyllm":
        return formats.quantize(x.reshape(1, -1), "bf16")["values"].reshape(x.shape)
    if oracle == "ml_dtypes":
        from ml_dtypes import bfloat16

        return x.astype(bfloat16).view(np.uint16)
    import torch

    return torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)


@pytest.mark.exercise("13.4", points=2)
@pytest.mark.parametrize("oracle", BF16_ORACLES)
def test_bfloat16_matches_the_libraries(exercise, oracle):
    """to_bfloat16_bits: tinyllm's bf16 format, ml_dtypes' and PyTorch's casts, bit for bit, on
    random floats of every size, every tie and subnormals; from_bfloat16_bits exactly"""
    ex = exercise(EX)
    rng = np.random.default_rng(13)
    raw = rng.integers(0, 2**32, 200_000, dtype=np.uint64).astype(np.uint32)  # every bit pattern
    ties = (rng.integers(0, 2**16, 20_000, dtype=np.uint32) << 16) | 0x8000  # exactly halfway
    near = ties + rng.choice(np.array([-1, 1], np.int64), ties.size).astype(np.uint32)
    x = np.concatenate([raw, ties, near]).view(np.float32)
    x = np.concatenate([x[~np.isnan(x)], rng.standard_normal(10_000).astype(np.float32) * 1e-3,
                        rng.standard_normal(10_000).astype(np.float32) * 1e-39])  # fmt: skip
    kept = x.copy()
    got = np.asarray(ex.to_bfloat16_bits(x))
    np.testing.assert_array_equal(x.view(np.uint32), kept.view(np.uint32))  # the input as it was
    np.testing.assert_array_equal(got, oracle_bits(oracle, x))
    bits = rng.integers(0, 2**16, 50_000, dtype=np.uint32).astype(np.uint16)
    want = (bits.astype(np.uint32) << 16).view(np.float32)
    got = np.asarray(ex.from_bfloat16_bits(bits))
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


# --- 13.5 attention that skips the hidden tiles ----------------------------------------------
@pytest.mark.exercise("13.5", points=1)
def test_query_blocks_by_hand(exercise):
    """query_blocks: blocks cut at T * b // n, each with the keys its queries see"""
    ex = exercise(EX)
    assert ex.query_blocks(8, 8, 4) == [(0, 2, 0, 2), (2, 4, 0, 4), (4, 6, 0, 6), (6, 8, 0, 8)]
    # 11 queries after 3 past keys: cut at 0, 2, 5, 8, 11; query i sees keys up to 3 + i
    assert ex.query_blocks(11, 14, 4) == [(0, 2, 0, 5), (2, 5, 0, 8), (5, 8, 0, 11), (8, 11, 0, 14)]
    # a window of 3: query i sees keys i - 2 ... i, so a block starting at t0 needs t0 - 2 on
    assert ex.query_blocks(9, 9, 3, window=3) == [(0, 3, 0, 3), (3, 6, 1, 6), (6, 9, 4, 9)]
    assert ex.query_blocks(5, 7, 1) == [(0, 5, 0, 7)]  # one block: every key
    assert ex.query_blocks(5, 7, 1, window=2) == [(0, 5, 1, 7)]  # but the window's
    rng = np.random.default_rng(5)
    for _ in range(200):
        T = int(rng.integers(1, 40))
        S, n = T + int(rng.integers(0, 10)), int(rng.integers(1, T + 1))
        window = None if rng.random() < 0.5 else int(rng.integers(1, 12))
        assert [tuple(b) for b in ex.query_blocks(T, S, n, window)] == query_blocks(
            T, S, n, window
        ), (T, S, n, window)


class Counted(np.ndarray):
    """An array that adds the multiply-adds of each matrix product it takes part in (``@``,
    ``np.matmul``) to ``Counted.macs``; what its operations return is Counted too."""

    macs = 0

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        plain = [x.view(np.ndarray) if isinstance(x, Counted) else x for x in inputs]
        if "out" in kwargs:
            kwargs["out"] = tuple(
                o.view(np.ndarray) if isinstance(o, Counted) else o for o in kwargs["out"]
            )
        if ufunc is np.matmul and method == "__call__":
            a, b = (np.asarray(x) for x in plain[:2])
            m, n = (a.shape[-2] if a.ndim > 1 else 1), (b.shape[-1] if b.ndim > 1 else 1)
            batch = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
            Counted.macs += math.prod(batch) * m * a.shape[-1] * n
        result = getattr(ufunc, method)(*plain, **kwargs)
        return result.view(Counted) if type(result) is np.ndarray else result


def attention_oracle(oracle, q, k, v, window):
    """Plain causal attention (the queries are the last T of S positions), all scores."""
    if oracle == "tinyllm":
        out = F.scaled_dot_product_attention(Tensor(q), Tensor(k), Tensor(v), window=window)
        return out.numpy()
    import torch

    T, S = q.shape[-2], k.shape[-2]
    query, key = np.arange(S - T, S)[:, None], np.arange(S)[None, :]
    visible = (key <= query) & (key > query - (window or S + 1))
    q, k, v = (torch.from_numpy(a) for a in (q, k, v))
    mask = torch.from_numpy(visible)
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask).numpy()


@pytest.mark.exercise("13.5", points=2)
@pytest.mark.parametrize("oracle", ATTENTION_ORACLES)
def test_blocked_attention_matches_and_skips_the_hidden_tiles(exercise, oracle):
    """blocked_causal_attention: plain causal attention's output (tinyllm's op, PyTorch's), with
    past keys and a sliding window, from products of exactly the blocks' sizes"""
    ex = exercise(EX)
    rng = np.random.default_rng(13)
    B, H, D = 2, 3, 8
    for T, S, n, window in [(8, 8, 4, None), (12, 15, 4, None), (12, 12, 3, 5), (9, 20, 2, 6),
                            (7, 7, 1, None), (16, 16, 16, None)]:  # fmt: skip
        q = rng.standard_normal((B, H, T, D))
        k, v = rng.standard_normal((B, H, S, D)), rng.standard_normal((B, H, S, D))
        Counted.macs = 0
        got = ex.blocked_causal_attention(
            q.view(Counted), k.view(Counted), v.view(Counted), n, window
        )
        blocks = query_blocks(T, S, n, window)
        want_macs = 2 * B * H * D * sum((t1 - t0) * (s1 - s0) for t0, t1, s0, s1 in blocks)
        assert Counted.macs == want_macs, (
            f"T={T}, S={S}, {n} blocks, window {window}: the products took {Counted.macs} "
            f"multiply-adds, the blocks need {want_macs} (each block's scores against its own "
            "keys s0:s1 alone, the products taken with @)"
        )
        np.testing.assert_allclose(
            np.asarray(got), attention_oracle(oracle, q, k, v, window), rtol=1e-9, atol=1e-12
        )
    # Four blocks of 256 queries take 10/16 of the one-block products.
    full, four = (sum((t1 - t0) * (s1 - s0) for t0, t1, s0, s1 in ex.query_blocks(256, 256, n))
                  for n in (1, 4))  # fmt: skip
    assert four / full == pytest.approx(10 / 16, abs=0.01)


# --- 13.6 activation checkpointing -------------------------------------------------------------
def residual_block(x, w1, b1, w2):
    """A pre-activation MLP block with a residual, written with tinyllm's Tensor operations."""
    return x + ((x @ w1 + b1).tanh() @ w2)


def leaves(rng, width=16, hidden=32, rows=6):
    """The block's input and weights: every one requires a gradient but the bias."""
    arrays = [rng.standard_normal(s).astype(np.float32) * 0.3
              for s in ((rows, width), (width, hidden), (hidden,), (hidden, width))]  # fmt: skip
    return [Tensor(a, requires_grad=i != 2) for i, a in enumerate(arrays)]


def plain_gradients(oracle, arrays, upstream):
    """d(sum(upstream * block(x, w1, b1, w2)))/d(x, w1, w2), by tinyllm or by PyTorch."""
    if oracle == "tinyllm":
        tensors = [Tensor(a, requires_grad=i != 2) for i, a in enumerate(arrays)]
        (residual_block(*tensors) * Tensor(upstream)).sum().backward()
        return [tensors[i].grad for i in (0, 1, 3)]
    import torch

    x, w1, b1, w2 = (torch.tensor(a, requires_grad=i != 2) for i, a in enumerate(arrays))
    (torch.sum(torch.from_numpy(upstream) * (x + torch.tanh(x @ w1 + b1) @ w2))).backward()
    return [t.grad.numpy() for t in (x, w1, w2)]


CHECKPOINT_ORACLES = ["tinyllm"] + (["torch"] if importlib.util.find_spec("torch") else [])


@pytest.mark.exercise("13.6", points=2)
@pytest.mark.parametrize("oracle", CHECKPOINT_ORACLES)
def test_checkpoint_gives_the_plain_gradients(exercise, oracle):
    """checkpoint: the output and every input's gradient are the plain pass's (tinyllm's
    autograd, PyTorch's), the bias that wants none getting none, twice in a row"""
    ex = exercise(EX)
    rng = np.random.default_rng(6)
    for _ in range(2):
        x, w1, b1, w2 = leaves(rng)
        upstream = rng.standard_normal(x.shape).astype(np.float32)
        out = ex.checkpoint(residual_block, x, w1, b1, w2)
        np.testing.assert_allclose(out.numpy(), residual_block(x, w1, b1, w2).numpy(), rtol=1e-6)
        (out * Tensor(upstream)).sum().backward()
        want = plain_gradients(oracle, [t.numpy() for t in (x, w1, b1, w2)], upstream)
        for name, got, expected in zip(("x", "w1", "w2"), (x.grad, w1.grad, w2.grad), want):
            assert got is not None, f"{name} got no gradient"
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6, err_msg=name)
        assert b1.grad is None


@pytest.mark.exercise("13.6", points=1)
def test_checkpoint_recomputes_in_backward_and_keeps_less(exercise):
    """checkpoint: fn runs once unrecorded, and once more, recorded, when the backward pass
    reaches it; a chain of eight checkpointed blocks peaks at under half the plain chain's
    memory (tracemalloc counts NumPy's arrays)"""
    import tracemalloc

    from tinyllm.autograd import is_grad_enabled

    ex = exercise(EX)
    calls = []

    def block(*inputs):
        calls.append(is_grad_enabled())
        return residual_block(*inputs)

    rng = np.random.default_rng(7)
    x, w1, b1, w2 = leaves(rng)
    out = ex.checkpoint(block, x, w1, b1, w2)
    assert calls == [False], f"the forward pass: fn should run once, unrecorded; it ran {calls}"
    out.sum().backward()
    assert calls == [False, True], f"after backward: fn should have run again, recorded: {calls}"

    def peak(checkpointed):
        h, weights = leaves(np.random.default_rng(8), width=64, hidden=512, rows=512)[0], []
        tracemalloc.start()
        for _ in range(8):
            w = leaves(rng, width=64, hidden=512, rows=1)[1:]
            weights += w
            h = ex.checkpoint(residual_block, h, *w) if checkpointed else residual_block(h, *w)
        h.sum().backward()
        most = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return most

    plain, kept = peak(False), peak(True)
    assert kept < 0.5 * plain, f"checkpointed chain peaked at {kept:,} bytes, plain {plain:,}"
