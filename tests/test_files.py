"""Files: atomic writes leave the old file whole on failure; safetensors as the library has it.

tinyllm reads and writes safetensors by hand (``tinyllm/models/weights.py``, the format in
60 lines, bfloat16 included); the ``safetensors`` library and PyTorch are the oracles.
"""

import os
import stat

import numpy as np
import pytest

from tinyllm.files import atomic_open
from tinyllm.models.weights import read_safetensors, write_safetensors


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "tokenizer.json"
    path.write_text("old")
    with pytest.raises(RuntimeError, match="killed"):
        with atomic_open(path, "w") as f:
            f.write("half of the new con")
            raise RuntimeError("killed mid-write")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["tokenizer.json"]


def test_successful_write_replaces_the_file_and_creates_folders(tmp_path):
    path = tmp_path / "a" / "b" / "tokens.npy"
    with atomic_open(path) as f:
        f.write(b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    assert [p.name for p in path.parent.iterdir()] == ["tokens.npy"]


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_written_files_get_the_mode_a_plain_open_gives(tmp_path, umask):
    previous = os.umask(umask)
    try:
        with atomic_open(tmp_path / "config.json", "w") as f:
            f.write("{}")
        (tmp_path / "plain.txt").write_text("{}")
    finally:
        os.umask(previous)
    mode = stat.S_IMODE((tmp_path / "config.json").stat().st_mode)
    assert mode == 0o666 & ~umask == stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode)


# --- safetensors: read and written by hand, checked against the library --------------------
ARRAYS = {  # every dtype both sides know, and the odd shapes: a scalar, an empty tensor
    "f64": np.linspace(-1, 1, 6).reshape(2, 3),
    "f32": np.arange(6, dtype=np.float32).reshape(3, 2),
    "f16": np.ones((1, 2, 3), np.float16),
    "i64": np.array([1, -2], np.int64),
    "i32": np.array([[2**31 - 1]], np.int32),
    "i16": np.array([-(2**15)], np.int16),
    "i8": np.arange(-4, 4, dtype=np.int8),
    "u8": np.array([0, 255], np.uint8),
    "bool": np.array([True, False, True]),
    "scalar": np.array(3.5, np.float32),
    "empty": np.zeros((0, 4), np.float32),
    "transposed": np.arange(12, dtype=np.float32).reshape(3, 4).T,  # not C-contiguous
}


def test_the_safetensors_library_reads_our_files_and_we_read_its(tmp_path):
    safetensors = pytest.importorskip("safetensors")
    from safetensors.numpy import load_file, save_file

    ours, theirs = tmp_path / "ours.safetensors", tmp_path / "theirs.safetensors"
    write_safetensors(ours, ARRAYS, metadata={"format": "pt", "step": 7})
    read_by_them = load_file(ours)
    with safetensors.safe_open(ours, "np") as f:
        assert f.metadata() == {"format": "pt", "step": "7"}
    contiguous = {name: np.asarray(array, order="C") for name, array in ARRAYS.items()}
    save_file(contiguous, theirs, metadata={"format": "np"})  # it would write .T's memory as is
    read_by_us = read_safetensors(theirs)
    assert sorted(read_by_them) == sorted(read_by_us) == sorted(ARRAYS)
    for name, array in ARRAYS.items():
        for back in (read_by_them[name], read_by_us[name]):
            assert back.dtype == array.dtype and back.shape == array.shape, name
            np.testing.assert_array_equal(back, array, err_msg=name)


def test_bfloat16_weights_are_read_as_float32(tmp_path):
    torch = pytest.importorskip("torch")
    import safetensors.torch

    values = torch.randn(4, 5)
    safetensors.torch.save_file({"w": values.to(torch.bfloat16)}, tmp_path / "bf16.safetensors")
    w = read_safetensors(tmp_path / "bf16.safetensors")["w"]
    assert w.dtype == np.float32
    np.testing.assert_array_equal(w, values.to(torch.bfloat16).float().numpy())


def test_bfloat16_writing_rounds_bit_for_bit_as_torch(tmp_path):
    torch = pytest.importorskip("torch")
    import safetensors.torch

    rng = np.random.default_rng(0)
    special = [0.0, -0.0, np.inf, -np.inf, np.nan, 1e-40, -1e-45, 3.4e38, -3.4e38, 1.00390625]
    ties = (rng.integers(0, 0x7F80, 64, dtype=np.uint32) << 16 | 0x8000).view(np.float32)
    normal = rng.standard_normal(1000).astype(np.float32) * 10
    values = np.concatenate([normal, np.array(special, np.float32), ties])
    path = tmp_path / "w.safetensors"
    write_safetensors(path, {"w": values}, floats="BF16")
    theirs = safetensors.torch.load_file(path)["w"]
    assert theirs.dtype == torch.bfloat16
    expected = torch.from_numpy(values).to(torch.bfloat16)
    nan = torch.isnan(expected)
    assert torch.equal(torch.isnan(theirs), nan)
    assert torch.equal(theirs[~nan].view(torch.int16), expected[~nan].view(torch.int16))
    with pytest.raises(ValueError, match="floats='bf16'; expected 'F32', 'F16' or 'BF16'"):
        write_safetensors(path, {"w": values}, floats="bf16")


def test_truncated_safetensors_file_is_a_clear_error(tmp_path):
    path = tmp_path / "model.safetensors"
    write_safetensors(path, {"w": np.ones((64, 64), np.float32)})
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ValueError, match="not a valid safetensors file.*ends at byte 16384"):
        read_safetensors(path)
    path.write_bytes(b"\x05")
    with pytest.raises(ValueError, match="only 1 bytes"):
        read_safetensors(path)
