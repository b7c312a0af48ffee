"""Reading and writing safetensors, the weight format of the Hugging Face ecosystem.

A safetensors file is simple enough to read by hand, and nothing in it is ever executed
(unlike a pickle):

    8 bytes          little-endian length N of the header
    N bytes          JSON: {name: {"dtype": "F32", "shape": [..], "data_offsets": [a, b]},
                            "__metadata__": {...}}, padded with spaces
    the rest         every tensor's raw bytes, tensor ``name`` at [a, b) of this part

bfloat16 (``BF16``), the usual dtype of released checkpoints, has no NumPy type: its
16 bits are the top half of a float32, so shifting them left by 16 recovers the float32,
and writing one keeps the top half after rounding the bottom half away (to nearest even).

This file is the reader and writer tinyllm uses; the ``safetensors`` library checks it in
the tests, and could not replace it: NumPy has no bfloat16, so ``safetensors.numpy`` refuses
BF16 files, and it writes a non-contiguous array's memory as it lies.

Big models are split into shards listed by ``model.safetensors.index.json``;
``load_weights(directory)`` reads either layout.

>>> import numpy as np, tempfile, pathlib
>>> with tempfile.TemporaryDirectory() as tmp:
...     path = pathlib.Path(tmp) / "w.safetensors"
...     write_safetensors(path, {"w": np.arange(3, dtype=np.float32)})
...     read_safetensors(path)["w"]
array([0., 1., 2.], dtype=float32)
"""

import json
import struct
from pathlib import Path

import numpy as np

from ..files import atomic_open

_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U16": np.uint16,
    "U8": np.uint8, "BOOL": np.bool_,
}  # fmt: skip
_NAMES = {np.dtype(v): k for k, v in _DTYPES.items()}


def _bf16_to_f32(raw):
    """bfloat16 bits (uint16) -> float32: they are the float32's upper 16 bits."""
    return (raw.astype(np.uint32) << 16).view(np.float32)


def _f32_to_bf16(array):
    """float32 -> bfloat16 bits (uint16), rounded to nearest even as PyTorch rounds."""
    bits = np.asarray(array, np.float32, order="C").view(np.uint32)
    rounded = (bits + (0x7FFF + ((bits >> 16) & 1))) >> 16  # no overflow: NaN is fixed below
    nan = np.isnan(array)
    return np.where(nan, (bits >> 16) | 0x40, rounded).astype(np.uint16)  # NaN stays a NaN


def read_safetensors(path):
    """``{name: NumPy array}`` from one .safetensors file; BF16 comes back as float32.

    A truncated or malformed file raises ``ValueError`` naming the file and the problem.
    """
    path = Path(path)
    data = path.read_bytes()

    def bad(problem):
        return ValueError(f"{path}: not a valid safetensors file ({problem})")

    if len(data) < 8:
        raise bad(f"only {len(data)} bytes")
    (header_len,) = struct.unpack("<Q", data[:8])
    if 8 + header_len > len(data):
        raise bad(f"header of {header_len} bytes but the file has {len(data)}")
    try:
        header = json.loads(data[8 : 8 + header_len])
    except ValueError as error:
        raise bad(f"header is not JSON: {error}") from None
    body = memoryview(data)[8 + header_len :]
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        if end > len(body):
            raise bad(f"tensor {name!r} ends at byte {end} but the data is {len(body)} bytes")
        dtype = info["dtype"]
        if dtype not in _DTYPES and dtype != "BF16":
            raise bad(f"tensor {name!r} has dtype {dtype}; readable are {sorted(_DTYPES)} and BF16")
        raw = np.frombuffer(body[begin:end], np.uint16 if dtype == "BF16" else _DTYPES[dtype])
        array = _bf16_to_f32(raw) if dtype == "BF16" else raw.copy()
        tensors[name] = array.reshape(info["shape"])
    return tensors


def write_safetensors(path, tensors, metadata=None, floats=None):
    """Write ``{name: NumPy array}`` to ``path`` atomically (a temp file, then a rename).

    ``floats`` ("F32", "F16" or "BF16") stores every floating array in that dtype; left
    out, each array keeps its own.
    """
    if floats not in (None, "F32", "F16", "BF16"):
        raise ValueError(f"write_safetensors: floats={floats!r}; expected 'F32', 'F16' or 'BF16'")
    header, arrays, offset = {}, [], 0
    for name, array in sorted(tensors.items()):
        array = np.asarray(array, order="C")  # (ascontiguousarray would make a scalar 1-D)
        if array.dtype not in _NAMES:
            raise TypeError(f"write_safetensors: {name} has unsupported dtype {array.dtype}")
        dtype = _NAMES[array.dtype]
        if floats and np.issubdtype(array.dtype, np.floating):
            dtype = floats
            array = _f32_to_bf16(array) if floats == "BF16" else array.astype(_DTYPES[floats])
        header[name] = {
            "dtype": dtype,
            "shape": list(array.shape),
            "data_offsets": [offset, offset + array.nbytes],
        }
        offset += array.nbytes
        arrays.append(array)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned
    with atomic_open(path, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)) + encoded)
        for array in arrays:
            f.write(array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes())


def load_weights(directory):
    """Every tensor of ``model.safetensors`` in ``directory``, or of the shards its index lists."""
    directory = Path(directory)
    single, index = directory / "model.safetensors", directory / "model.safetensors.index.json"
    if single.exists():
        return read_safetensors(single)
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        tensors = {}
        for shard in shards:
            tensors.update(read_safetensors(directory / shard))
        return tensors
    raise FileNotFoundError(
        f"{directory}: no model.safetensors or model.safetensors.index.json "
        "(tinyllm reads only safetensors weights, never pickled .bin files)"
    )
