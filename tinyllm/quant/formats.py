"""Weight formats: how a float32 matrix becomes fewer bytes, and back.

A weight matrix is quantized row by row, a row being the weights that meet one output
feature: (out_features, in_features), the layout of ``torch.nn.Linear`` and of a GGUF
file (tinyllm's ``Linear`` holds the transpose). Each format stores some *parts*, arrays
that together give the row back:

| format | parts                                     | bits per weight |
|--------|-------------------------------------------|-----------------|
| f32    | the floats                                 | 32              |
| f16    | float16 values (round to nearest even)    | 16              |
| bf16   | bfloat16 bits (the top half of a float32) | 16              |
| int8   | int8 values, one float32 scale per row    | 8 (+ 32 a row)  |
| q8_0   | int8 values, a float16 scale per 32       | 8.5             |
| q4_1   | 4-bit values, float16 scale and min per 32 | 5               |
| q4_0   | 4-bit values, a float16 scale per 32      | 4.5             |

The block formats are llama.cpp's (``ggml-quants.c``), bit for bit. A block is 32
consecutive weights of a row; llama.cpp stores it as one C struct, which ``to_ggml``
writes and ``from_ggml`` reads:

    block_q8_0 (34 bytes)     | d: fp16 | q[0] q[1] ... q[31]: int8 |
                              0         2                            34

    block_q4_0 (18 bytes)     | d: fp16 | byte 0 | byte 1 | ... | byte 15 |
                              0         2                                18
                              byte j = q[j] (low nibble) | q[j + 16] << 4 (high nibble)

        value:   q0  q1 ... q15   q16 q17 ... q31
        byte:    0   1  ... 15    0   1   ... 15        (low nibbles, then high nibbles)

    block_q4_1 (20 bytes)     | d: fp16 | m: fp16 | 16 bytes as in q4_0 |

Q8_0 and Q4_0 are symmetric: x ~ d * q, with d from the block's largest magnitude. Q4_0
takes d = max / -8, ``max`` the *signed* value of largest magnitude, so that value lands
exactly on q = -8 (stored as 0) and the other side reaches +7; Q4_1 is asymmetric:
x ~ d * q + m over [min, max]. The arithmetic follows llama.cpp's reference quantizers to
the float32 rounding step (``1 / d`` first, then a multiply), which is what makes the
bytes equal; the tests compare them with the ``gguf`` package's.

>>> import numpy as np
>>> row = np.linspace(-1, 1, 32, dtype=np.float32)[None]       # (1, 32)
>>> parts = quantize(row, "q4_0")
>>> parts["scales"].dtype, parts["scales"].shape, parts["packed"].shape
(dtype('float16'), (1, 1), (1, 16))
>>> float(parts["scales"][0, 0])          # d = max / -8, max = -1 (the first of -1 and +1)
0.125
>>> dequantize(parts, "q4_0")[0, [0, 1, 30, 31]]      # +1 is 8 steps up: clipped to 7
array([-1.   , -0.875,  0.875,  0.875], dtype=float32)
>>> to_ggml(parts, "q4_0").shape                                # (rows, blocks * 18 bytes)
(1, 18)
"""

import numpy as np

from ..models.weights import _bf16_to_f32, _f32_to_bf16

BLOCK = 32  # weights per block in llama.cpp's Q8_0, Q4_0 and Q4_1
FORMATS = ("f32", "f16", "bf16", "int8", "q8_0", "q4_1", "q4_0")
BLOCK_FORMATS = ("q8_0", "q4_1", "q4_0")


def check_format(name):
    """``name`` if it is a known format, else a ValueError that lists them."""
    if name not in FORMATS:
        raise ValueError(f"unknown weight format {name!r}: expected one of {', '.join(FORMATS)}")
    return name


def fits(name, row_length):
    """Whether a row of ``row_length`` weights can be stored in format ``name``."""
    return check_format(name) not in BLOCK_FORMATS or row_length % BLOCK == 0


# --- rounding, as C's roundf and truncation -------------------------------------------------
def round_half_away(v):
    """C's ``roundf``: to the nearest integer, halves away from zero (NumPy's ``rint``
    rounds halves to even). Written as llama.cpp's Python port writes it, without adding 0.5
    (which can round up a float just below a half).

    >>> round_half_away(np.array([0.5, 1.5, -0.5, -2.5, 0.49999997], np.float32))
    array([ 1.,  2., -1., -3.,  0.], dtype=float32)
    """
    a = np.abs(v)
    whole = np.floor(a)
    return np.sign(v) * (whole + np.floor(2 * (a - whole)))


def _inverse(d):
    """``1 / d``, 0 where ``d`` is 0 (an all-zero block): the blocks' multiplier."""
    with np.errstate(divide="ignore"):
        return np.where(d == 0, np.float32(0), np.float32(1) / d)


def _blocks(w):
    """(rows, cols) -> (rows, cols // 32, 32) float32, checking that blocks fit."""
    w = np.asarray(w, np.float32)
    if w.ndim != 2 or w.shape[1] % BLOCK:
        raise ValueError(
            f"block formats need a 2-D matrix whose rows are a multiple of {BLOCK} long, "
            f"got shape {w.shape}"
        )
    return w.reshape(w.shape[0], -1, BLOCK)


# --- packing 4-bit values two to a byte --------------------------------------------------------
def pack_nibbles(q):
    """(..., 32) values 0..15 -> (..., 16) bytes: byte j holds value j in its low nibble and
    value j + 16 in its high nibble (llama.cpp's order).

    >>> pack_nibbles(np.arange(32, dtype=np.uint8) % 16)[:3]      # 0|0<<4, 1|1<<4, 2|2<<4
    array([ 0, 17, 34], dtype=uint8)
    """
    half = q.shape[-1] // 2
    return (q[..., :half] | (q[..., half:] << 4)).astype(np.uint8)


def unpack_nibbles(packed, xp=np):
    """(..., 16) bytes -> (..., 32) values 0..15: the low nibbles, then the high ones."""
    return xp.concatenate([packed & 0x0F, packed >> 4], axis=-1)


# --- each format: float32 (rows, cols) -> parts, and parts -> float32 ---------------------------
def _absmax_int8(blocks, scale_dtype):
    """Symmetric 8-bit: d = absmax / 127, q = roundf(x / d), as llama.cpp's Q8_0."""
    d = np.abs(blocks).max(axis=-1, keepdims=True) / np.float32(127)
    q = round_half_away(blocks * _inverse(d)).astype(np.int8)
    return d.astype(scale_dtype), q


def _quantize_int8(w):
    scales, values = _absmax_int8(np.asarray(w, np.float32), np.float32)  # a block = a row
    return {"scales": scales, "values": values}  # (rows, 1), (rows, cols)


def _quantize_q8_0(w):
    scales, values = _absmax_int8(_blocks(w), np.float16)  # (rows, nb, 1), (rows, nb, 32)
    return {"scales": scales[..., 0], "values": values.reshape(len(values), -1)}


def q4_0_scale(blocks):
    """Q4_0's float32 scale of each block (..., 32): d = max / -8, ``max`` the signed value
    of largest magnitude (the first, on a tie); shape (..., 1)."""
    largest = np.abs(blocks).argmax(axis=-1)[..., None]
    return np.take_along_axis(blocks, largest, axis=-1) / np.float32(-8)


def q4_0_round(x, d):
    """Q4_0's stored values of float32 weights ``x`` at scale ``d`` (broadcastable):
    round(x / d) + 8, halves up, clipped to 0..15, as uint8."""
    q = np.trunc(x * _inverse(d) + np.float32(8.5))
    return np.clip(q, 0, 15).astype(np.uint8)


def _quantize_q4_0(w):
    blocks = _blocks(w)  # (rows, nb, 32)
    d = q4_0_scale(blocks)  # (rows, nb, 1)
    q = q4_0_round(blocks, d)  # (rows, nb, 32)
    return {"scales": d[..., 0].astype(np.float16), "packed": pack_nibbles(q).reshape(len(q), -1)}


def _quantize_q4_1(w):
    blocks = _blocks(w)  # (rows, nb, 32)
    low = blocks.min(axis=-1, keepdims=True)
    d = (blocks.max(axis=-1, keepdims=True) - low) / np.float32(15)
    q = np.clip(np.trunc((blocks - low) * _inverse(d) + np.float32(0.5)), 0, 15).astype(np.uint8)
    return {
        "scales": d[..., 0].astype(np.float16),
        "mins": low[..., 0].astype(np.float16),
        "packed": pack_nibbles(q).reshape(len(q), -1),
    }


_QUANTIZERS = {
    "f32": lambda w: {"values": np.asarray(w, np.float32)},
    "f16": lambda w: {"values": np.asarray(w, np.float32).astype(np.float16)},
    "bf16": lambda w: {"values": _f32_to_bf16(np.asarray(w, np.float32))},
    "int8": _quantize_int8,
    "q8_0": _quantize_q8_0,
    "q4_1": _quantize_q4_1,
    "q4_0": _quantize_q4_0,
}


def quantize(w, name):
    """The parts of format ``name`` for the float matrix ``w`` (rows, cols): a dict of
    NumPy arrays (see the module docstring), in C order whatever the order of ``w`` (a
    transposed view would otherwise give parts a reloaded copy of the layer does not have)."""
    return _QUANTIZERS[check_format(name)](np.ascontiguousarray(w))


def dequantize(parts, name, xp=np):
    """The float32 (rows, cols) matrix that ``parts`` of format ``name`` stand for.

    ``xp`` is the array namespace the parts live in (NumPy, CuPy or ``jax.numpy``): a
    quantized layer calls this on every forward pass, on its own backend.
    """
    check_format(name)
    if name in ("f32", "f16"):
        return parts["values"].astype(xp.float32)
    if name == "bf16":
        return _bf16_to_f32(parts["values"]) if xp is np else _bf16_bits(parts["values"], xp)
    scales = parts["scales"].astype(xp.float32)
    if name == "int8":
        return parts["values"].astype(xp.float32) * scales  # (rows, cols) * (rows, 1)
    if name == "q8_0":
        q = parts["values"].astype(xp.float32)
    else:  # 4-bit: q - 8 for Q4_0, q for Q4_1
        rows = parts["packed"].shape[0]
        q = unpack_nibbles(parts["packed"].reshape(rows, -1, BLOCK // 2), xp).astype(xp.float32)
        q = q - 8 if name == "q4_0" else q
    rows = q.shape[0]
    blocks = q.reshape(rows, -1, BLOCK) * scales[..., None]  # (rows, nb, 32)
    if name == "q4_1":
        blocks = blocks + parts["mins"].astype(xp.float32)[..., None]
    return blocks.reshape(rows, -1)


def _bf16_bits(bits, xp):
    return (bits.astype(xp.uint32) << 16).view(xp.float32)


def nbytes(parts):
    """Bytes the parts take."""
    return sum(int(np.prod(a.shape)) * a.dtype.itemsize for a in parts.values())


# --- llama.cpp's block structs -----------------------------------------------------------------
def to_ggml(parts, name):
    """The bytes llama.cpp (and a GGUF file) holds for a block format: (rows, nb * block
    bytes) uint8, each block its struct as drawn in the module docstring."""
    if name not in BLOCK_FORMATS:
        raise ValueError(f"to_ggml: {name!r} is not a block format ({', '.join(BLOCK_FORMATS)})")
    rows, nb = parts["scales"].shape
    fields = [parts["scales"]] + ([parts["mins"]] if name == "q4_1" else [])
    fields = [f.astype("<f2").reshape(rows, nb, 1).view(np.uint8) for f in fields]
    data = parts["values"].view(np.uint8) if name == "q8_0" else parts["packed"]
    return np.concatenate([*fields, data.reshape(rows, nb, -1)], axis=-1).reshape(rows, -1)


def from_ggml(data, name):
    """The parts of llama.cpp's block bytes (rows, nb * block bytes): ``to_ggml`` undone."""
    if name not in BLOCK_FORMATS:
        raise ValueError(f"from_ggml: {name!r} is not a block format ({', '.join(BLOCK_FORMATS)})")
    header = 4 if name == "q4_1" else 2
    size = header + (BLOCK if name == "q8_0" else BLOCK // 2)
    rows = data.shape[0]
    blocks = np.ascontiguousarray(data).reshape(rows, -1, size)  # (rows, nb, bytes)
    parts = {"scales": blocks[..., :2].copy().view("<f2")[..., 0].astype(np.float16)}
    if name == "q4_1":
        parts["mins"] = blocks[..., 2:4].copy().view("<f2")[..., 0].astype(np.float16)
    body = blocks[..., header:].reshape(rows, -1)
    if name == "q8_0":
        parts["values"] = body.view(np.int8)
    else:
        parts["packed"] = body.copy()
    return parts
