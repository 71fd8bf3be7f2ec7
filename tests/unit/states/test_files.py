"""State files are written whole or not at all: a temporary file renamed into place, removed
when the write fails; a full disk is a `DiskFull`; temporaries of dead writers are swept."""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest

from glassbox.errors import DiskFull
from glassbox.states import files


def failing_fsync(code: int):
    def fsync(fd: int) -> None:
        raise OSError(code, os.strerror(code))

    return fsync


def test_a_write_replaces_the_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "exports" / "a.gbstate"
    files.write_atomic(path, b"first")
    files.write_atomic(path, b"second")
    assert path.read_bytes() == b"second"
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.gbstate"]


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_a_full_disk_is_disk_full_and_keeps_the_old_file(tmp_path, monkeypatch, code) -> None:
    path = tmp_path / "a.gbstate"
    files.write_atomic(path, b"old")
    monkeypatch.setattr(files.os, "fsync", failing_fsync(code))
    with pytest.raises(DiskFull) as caught:
        files.write_atomic(path, b"new")
    assert caught.value.code == "insufficient_storage" and "no space left" in caught.value.message
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.gbstate"]


def test_another_write_error_is_raised_as_is_and_removes_its_temporary(
    tmp_path, monkeypatch
) -> None:
    monkeypatch.setattr(files.os, "fsync", failing_fsync(errno.EIO))
    with pytest.raises(OSError) as caught:
        files.write_atomic(tmp_path / "a.gbstate", b"data")
    assert caught.value.errno == errno.EIO
    assert list(tmp_path.iterdir()) == []


def test_temporaries_of_dead_writers_are_removed_and_live_ones_kept(tmp_path: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    live = subprocess.Popen(["sleep", "30"])
    try:
        (tmp_path / "exports" / "local").mkdir(parents=True)
        stale = [
            tmp_path / f"s1.gbstate.{dead.pid}.abc123.tmp",
            tmp_path / "exports" / "local" / f"kept.gbstate.{dead.pid}.x_y.tmp",
            tmp_path / "s2.gbstate.tmp",  # the name an older version wrote
        ]
        kept = [
            tmp_path / f"s3.gbstate.{live.pid}.abc123.tmp",  # being written by a live process
            tmp_path / "s4.gbstate",
            tmp_path / "notes.tmp",  # not a state file's
        ]
        for path in stale + kept:
            path.write_bytes(b"x")
        assert sorted(files.remove_stale_temporaries(tmp_path)) == sorted(stale)
        assert [p for p in stale + kept if p.exists()] == kept
    finally:
        live.kill()
        live.wait()
    assert files.remove_stale_temporaries(tmp_path / "missing") == []
