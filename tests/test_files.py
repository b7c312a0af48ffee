"""Atomic writes: a failure mid-write leaves the old file whole and no temporary behind."""

import pytest

from tinyllm.files import atomic_open


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
