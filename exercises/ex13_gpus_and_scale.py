"""Exercises for lesson 13: GPUs, backends and scale. Replace each ``raise NotImplementedError``.

Where the time of a step goes is a question of two counts, the FLOPs it does and the bytes it
moves: for a matrix product and for one decoding step of a model (13.1). A roofline turns the
two into the best time a processor can reach and says which limit it hits (13.2). Training over
many devices is a question of who holds which bytes: ZeRO's stages and tinyllm's layouts (13.3).
Mixed precision rounds float32 to bfloat16, which you do with bit operations on the raw bits
(13.4). Causal attention need not compute the scores a mask would hide anyway: in blocks of
queries, each against only the keys it can see (13.5). And the activations a backward pass needs
need not all be kept: a block can run again when the backward pass reaches it (13.6).

Everything here is plain Python and NumPy. FLOPs count a multiply and an add as two; bytes are
plain bytes (not bits); rates are per second (FLOP/s, bytes/s).

Grade with ``tinyllm grade exercises -k ex13`` (lesson: lessons/13-gpus-and-scale.md).
"""

import numpy as np  # noqa: F401 - you will need it

from tinyllm import Tensor  # noqa: F401 - for 13.6, with tinyllm.Function, no_grad, enable_grad
from tinyllm.analysis import parameter_count  # noqa: F401 - given: the parameters of a config


# --- Exercise 13.1 --------------------------------------------------------------------------
def matmul_cost(m, k, n, bytes_per_value=4):
    """``(flops, nbytes)`` of the product ``(m, k) @ (k, n)``.

    flops:  each of the m n outputs is a sum of k products: a multiply and an add per term.
    nbytes: the least traffic any kernel needs - both inputs read once and the output written
            once, ``bytes_per_value`` bytes a value (4 for float32, 2 for bfloat16).

    (1, 4096) @ (4096, 4096) in float32: 33,554,432 FLOPs on 67,141,632 bytes - a
    matrix-vector product makes half a FLOP per byte.
    """
    raise NotImplementedError("Exercise 13.1: the FLOPs and bytes of a matrix product")


def decode_cost(config, seq_len, batch_size=1, bits=16, kv_bits=16):
    """``(flops, nbytes)`` of one decoding step of the dense model ``config`` (a ModelConfig):
    ``batch_size`` sequences each add one token, which attends over ``seq_len`` cached keys.

    flops:  per token, 2 FLOPs for every parameter the token is multiplied by - the active
            non-embedding parameters (``parameter_count(config)``) and the output layer,
            d_model x vocab_size, counted even when it is tied to the embedding (a lookup costs
            no FLOPs) - plus attention: the scores q k^T and the weighted sum of the values, each
            2 FLOPs per key per query feature, d_attn = n_head * head_dim features, in every
            layer. Times ``batch_size`` tokens.
    nbytes: every one of those weights read once for the whole batch, ``bits`` bits each, and
            the KV cache read once per sequence: a key and a value of kv_heads * head_dim
            values per layer per cached token, ``kv_bits`` bits each.

    ``config.head_dim`` and ``config.kv_heads`` resolve the defaults. Return numbers (ints or
    floats). At seq_len 0, batch 1 and 16 bits the intensity flops / nbytes is exactly 1.
    """
    raise NotImplementedError("Exercise 13.1: the FLOPs and bytes of a decoding step")


# --- Exercise 13.2 --------------------------------------------------------------------------
def attainable_flops(intensity, peak_flops, bandwidth):
    """The roofline: the best FLOP/s a kernel of arithmetic ``intensity`` (FLOP per byte) can
    reach on a processor with ``peak_flops`` FLOP/s and ``bandwidth`` bytes/s of memory.

    Below the ridge point peak_flops / bandwidth the bytes limit it (a slope), above it the
    arithmetic does (the flat roof). ``intensity`` may be a number or a NumPy array (then an
    array of the same shape comes back).

    An A100 (312e12 FLOP/s in bfloat16, 1.555e12 bytes/s): intensity 1 -> 1.555e12;
    intensity 1000 -> 312e12.
    """
    raise NotImplementedError("Exercise 13.2: the roofline's attainable FLOP/s")


def roofline(flops, nbytes, peak_flops, bandwidth):
    """``(seconds, bound)`` for ``flops`` FLOPs on ``nbytes`` bytes: the least time the
    processor needs, and which limit sets it - "memory" when moving the bytes takes longer
    than the arithmetic, else "compute" (a tie, on the ridge point, counts as "compute").

    One decoding step of a 16 GB model on an H100 (3.35e12 bytes/s, 989e12 FLOP/s):
    (16e9 / 3.35e12 = 4.8 ms, "memory").
    """
    raise NotImplementedError("Exercise 13.2: the time a step needs and its bound")


# --- Exercise 13.3 --------------------------------------------------------------------------
def zero_bytes(n_params, n_devices, stage, optimizer_bytes=12):
    """The bytes one of ``n_devices`` data-parallel devices holds for a model of ``n_params``
    parameters trained with Adam in mixed precision, as the ZeRO paper counts them:
    ``{"parameters": ..., "gradients": ..., "optimizer": ..., "total": ...}``.

    Per parameter: 2 bytes of float16 parameters, 2 bytes of float16 gradients, and
    ``optimizer_bytes`` of optimizer state (K = 12: a float32 master copy, Adam's momentum and
    variance). ZeRO's ``stage`` cuts into ``n_devices`` equal parts, each device keeping one:
        0  nothing: plain data parallelism, everything on every device;
        1  the optimizer state (P_os);
        2  the optimizer state and the gradients (P_os+g);
        3  all three, the parameters too (P_os+g+p: fully sharded data parallel).
    Any other stage is a ValueError naming it. Return floats (a part need not be whole bytes).
    """
    raise NotImplementedError("Exercise 13.3: ZeRO's bytes per device")


def device_bytes(mode, shapes, n_devices):
    """The bytes one of ``n_devices`` devices holds under tinyllm's layout ``mode`` ("dp",
    "zero1" or "fsdp"), float32 training with AdamW, for parameters of ``shapes`` ({name:
    shape tuple}): ``{"parameters": ..., "gradients": ..., "moments": ..., "total": ...}``.

    Every value is a 4-byte float32; AdamW keeps two moments, each the shape of its parameter.
    Where an array is cut, it is cut along one axis into ``n_devices`` equal pieces: its largest
    axis that ``n_devices`` divides (the first of equal ones); an array no axis of which
    ``n_devices`` divides, and every array when ``n_devices`` is 1, stays whole on every device.
        dp     nothing is cut;
        zero1  the moments are cut; the parameters and the summed gradients stay whole;
        fsdp   parameters, gradients and moments are all cut.

    {"w": (65, 128)} over 4 devices under fsdp: 65 x 32 values of each, 8,320 bytes apiece.
    An unknown ``mode`` is a ValueError naming it. Return ints.
    """
    raise NotImplementedError("Exercise 13.3: tinyllm's bytes per device")


# --- Exercise 13.4 --------------------------------------------------------------------------
def to_bfloat16_bits(x):
    """float32 ``x`` (an array of any shape) -> the bits of the nearest bfloat16, uint16.

    bfloat16 is the top 16 bits of a float32 (sign, 8 exponent bits, 7 mantissa bits). Work on
    the float32's raw bits (``x.view(np.uint32)``) and round to nearest, ties to even: add
    0x7FFF plus the lowest kept bit (bit 16), then shift right by 16 - one addition rounds
    every finite value, subnormals included, and a value past bfloat16's largest becomes
    infinity, as IEEE rounding does. A NaN must stay a NaN (rounding could carry its payload
    into infinity): keep its top 16 bits and set the quiet bit 0x0040.

    1.0 (0x3F800000) -> 0x3F80; 1 + 2^-8, halfway between 1.0 and the next bfloat16 1 + 2^-7,
    goes to the even one, 1.0: 0x3F80.
    """
    raise NotImplementedError("Exercise 13.4: float32 to bfloat16 bits, round to nearest even")


def from_bfloat16_bits(bits):
    """The bits of bfloat16 numbers (uint16, any shape) -> their float32 values, exactly."""
    raise NotImplementedError("Exercise 13.4: bfloat16 bits back to float32")


# --- Exercise 13.5 --------------------------------------------------------------------------
def query_blocks(T, S, n_blocks, window=None):
    """Causal attention's T queries in ``n_blocks`` blocks, each with the keys it can see.

    The T queries are the last T of S positions: query i sits at position S - T + i and sees
    key j when j <= S - T + i (and, with a ``window``, only when also j > S - T + i - window).
    Cut the queries at t = T * b // n_blocks for b = 0, 1, ..., n_blocks, and give each block
    of rows t0:t1 the smallest range of keys s0:s1 that holds every key one of its queries
    sees. Returns [(t0, t1, s0, s1), ...], in order.

    T = S = 8 in 4 blocks: [(0, 2, 0, 2), (2, 4, 0, 4), (4, 6, 0, 6), (6, 8, 0, 8)].
    """
    raise NotImplementedError("Exercise 13.5: blocks of queries and the keys each can see")


def blocked_causal_attention(q, k, v, n_blocks, window=None):
    """Causal attention computed block by block (``query_blocks``): each block's scores only
    against its own keys s0:s1, so the tiles of scores that lie wholly in the future (or, with a
    window, wholly in the past) are never computed.

    ``q`` (B, H, T, D), ``k`` and ``v`` (B, H, S, D), NumPy arrays; the scale is 1 / sqrt(D).
    Within a block, a key it holds may still be hidden from one of its queries (in its future,
    or outside its window): add -inf to that score before the softmax, as in exercise 2.2.
    Returns the (B, H, T, D) output, equal to plain causal attention's.

    Take the products with ``@`` (``np.matmul``): the grader counts their multiply-adds and
    expects (t1 - t0) * (s1 - s0) * D for each block's scores and as many for its weighted sum
    of the values, per batch row and head - nothing more.
    """
    raise NotImplementedError("Exercise 13.5: attention that skips the hidden tiles")


# --- Exercise 13.6 --------------------------------------------------------------------------
def checkpoint(fn, *inputs):
    """``fn(*inputs)`` - Tensors in, one Tensor out - without keeping its activations.

    Run ``fn`` once without recording the tape (``tinyllm.no_grad()``), so that nothing it
    computes on the way is kept, and keep only the input arrays. When the backward pass reaches
    the result, run ``fn`` again on fresh Tensors holding those arrays, each requiring a
    gradient where its input does, recorded this time (``tinyllm.enable_grad()``: a backward
    pass may itself run under ``no_grad``), backpropagate the incoming gradient through it, and
    give each input the gradient its fresh Tensor received (None where it wanted none).

    Write it as a ``tinyllm.Function`` (lesson 00): ``forward(ctx, *arrays, fn=...)`` gets the
    inputs' arrays and returns the output's array, ``ctx.needs_grad`` says which inputs want a
    gradient, and ``backward(ctx, grad)`` returns one gradient per input. ``fn`` reads its
    weights only through its arguments: pass them in ``inputs``. For example
    ``checkpoint(lambda x, w: (x @ w).tanh(), x, w).sum().backward()`` leaves in ``x.grad`` and
    ``w.grad`` what ``(x @ w).tanh().sum().backward()`` would.
    """
    raise NotImplementedError("Exercise 13.6: recompute a block in the backward pass")
