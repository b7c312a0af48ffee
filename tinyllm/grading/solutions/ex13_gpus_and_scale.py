"""Reference answers for exercises/ex13_gpus_and_scale.py: tinyllm's accounting and formats.

A decoding step's FLOPs and bytes are the sums of tinyllm/analysis.py (``inference_flops_per_token``,
``weight_bytes``, ``kv_cache_bytes``); tinyllm's layouts are tinyllm/train/sharding.py's
``split_axes``; bfloat16 is the ``bf16`` format of tinyllm/quant/formats.py. What the library
has no function for - one matrix product's counts, the roofline, the ZeRO paper's table - is
written out here, each a line or two. The blocks of long causal attention are
tinyllm/functional/attention.py's ``query_blocks`` (and each block's mask its ``_causal_bias``);
the blocked attention is written out in NumPy, since the grader counts the products it takes.
Activation checkpointing is tinyllm/nn/recompute.py's ``recompute``, around a module that calls
the function.
"""

import numpy as np

from tinyllm.analysis import (
    inference_flops_per_token,
    kv_cache_bytes,
    parameter_count,
    weight_bytes,
)
from tinyllm.functional.attention import _causal_bias, query_blocks
from tinyllm.nn import Module
from tinyllm.nn.recompute import recompute
from tinyllm.quant import formats
from tinyllm.train.sharding import SHARD_MODES, split_axes

__all__ = [
    "attainable_flops",
    "blocked_causal_attention",
    "checkpoint",
    "decode_cost",
    "device_bytes",
    "from_bfloat16_bits",
    "matmul_cost",
    "query_blocks",
    "roofline",
    "to_bfloat16_bits",
    "zero_bytes",
]

ZERO_STAGES = {  # stage -> which parts are cut over the devices
    0: (),
    1: ("optimizer",),
    2: ("optimizer", "gradients"),
    3: ("optimizer", "gradients", "parameters"),
}


def matmul_cost(m, k, n, bytes_per_value=4):
    return 2 * m * k * n, (m * k + k * n + m * n) * bytes_per_value


def decode_cost(config, seq_len, batch_size=1, bits=16, kv_bits=16):
    multiplied = parameter_count(config).active_non_embedding + config.d_model * config.vocab_size
    flops = batch_size * inference_flops_per_token(config, seq_len)
    nbytes = weight_bytes(multiplied, bits) + kv_cache_bytes(config, seq_len, batch_size, kv_bits)
    return flops, nbytes


def attainable_flops(intensity, peak_flops, bandwidth):
    return np.minimum(peak_flops, np.asarray(intensity) * bandwidth)


def roofline(flops, nbytes, peak_flops, bandwidth):
    compute, memory = flops / peak_flops, nbytes / bandwidth
    return max(compute, memory), "memory" if memory > compute else "compute"


def zero_bytes(n_params, n_devices, stage, optimizer_bytes=12):
    if stage not in ZERO_STAGES:
        raise ValueError(f"stage={stage!r}: expected a ZeRO stage, 0, 1, 2 or 3")
    per_parameter = {"parameters": 2, "gradients": 2, "optimizer": optimizer_bytes}
    held = {
        part: n_params * size / (n_devices if part in ZERO_STAGES[stage] else 1)
        for part, size in per_parameter.items()
    }
    return held | {"total": sum(held.values())}


def device_bytes(mode, shapes, n_devices):
    if mode not in SHARD_MODES:
        raise ValueError(f"mode={mode!r}: expected one of {', '.join(SHARD_MODES)}")
    held = {"parameters": 0, "gradients": 0, "moments": 0}
    for shape in shapes.values():
        size = int(np.prod(shape))
        param_axis, moment_axis = split_axes(mode, tuple(shape), n_devices)
        params = size // (1 if param_axis is None else n_devices)
        held["parameters"] += 4 * params
        held["gradients"] += 4 * params  # laid out as the parameters are
        held["moments"] += 2 * 4 * size // (1 if moment_axis is None else n_devices)
    return held | {"total": sum(held.values())}


def to_bfloat16_bits(x):
    x = np.asarray(x, np.float32)
    return formats.quantize(x.reshape(1, -1), "bf16")["values"].reshape(x.shape)


def from_bfloat16_bits(bits):
    bits = np.asarray(bits, np.uint16)
    return formats.dequantize({"values": bits.reshape(1, -1)}, "bf16").reshape(bits.shape)


def blocked_causal_attention(q, k, v, n_blocks, window=None):
    T, S, D = q.shape[-2], k.shape[-2], q.shape[-1]
    blocks = []
    for t0, t1, s0, s1 in query_blocks(T, S, n_blocks, window):
        scores = q[..., t0:t1, :] @ np.swapaxes(k[..., s0:s1, :], -1, -2) / np.sqrt(D)
        scores = scores + _causal_bias(T, S, window, 1, (t0, t1, s0, s1))  # 0 or -inf
        probs = np.exp(scores - scores.max(axis=-1, keepdims=True))
        probs /= probs.sum(axis=-1, keepdims=True)
        blocks.append(probs @ v[..., s0:s1, :])
    return np.concatenate(blocks, axis=-2)


class _Calling(Module):
    """A module without weights of its own that calls ``fn``: ``recompute`` takes modules."""

    def __init__(self, fn):
        self.fn = fn

    def forward(self, *inputs):
        return self.fn(*inputs)


def checkpoint(fn, *inputs):
    return recompute(_Calling(fn), *inputs)
