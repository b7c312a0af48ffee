"""Atomic writes: a failure mid-write leaves the old file whole and no temporary behind."""

import os
import stat

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
