"""Atomic writes: stale temporaries of a killed job are cleared; a failed write is one line naming the output."""

import errno
from pathlib import Path

import numpy as np
import pytest
import zarr

from wsidistill.errors import OutputWriteError
from wsidistill.io import atomic_path, temporaries, write_text


def test_a_rerun_clears_the_temporaries_a_killed_job_left(tmp_path):
    out = tmp_path / "s.zarr"
    stale_dir, stale_file = tmp_path / ".s.zarr.tmp-0badc0de", tmp_path / ".s.zarr.tmp-deadbeef"
    (stale_dir / "40x").mkdir(parents=True)
    (stale_dir / "40x" / "c.0").write_bytes(b"x" * 100)
    stale_file.write_bytes(b"partial")
    other = tmp_path / ".t.zarr.tmp-0badc0de"  # another output's temporary: not ours to remove
    other.mkdir()
    assert temporaries(out) == [stale_dir, stale_file]
    with atomic_path(out) as tmp:
        zarr.create_array(str(tmp), data=np.arange(3))
    assert temporaries(out) == [] and other.exists()
    assert zarr.open_array(str(out))[:].tolist() == [0, 1, 2]


def test_a_full_disk_is_one_line_naming_the_output_and_leaves_nothing(tmp_path, monkeypatch):
    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(OutputWriteError) as caught:
        write_text(tmp_path / "table.md", "| a |")
    message = str(caught.value)
    assert message.startswith(f"cannot write {tmp_path / 'table.md'}: No space left on device (")
    assert "free some space" in message and "\n" not in message and isinstance(caught.value, OSError)
    assert list(tmp_path.iterdir()) == []


def test_an_input_error_inside_the_block_is_not_called_a_write_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        with atomic_path(tmp_path / "out.json"):
            open(tmp_path / "missing-input.txt")
    assert list(tmp_path.iterdir()) == []
