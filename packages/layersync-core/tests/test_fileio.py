"""Atomic writes: the old file or the new one, never a torn one, with ordinary permissions."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from layersync.fileio import atomic_path, atomic_write, cache_dir


def test_atomic_write_bytes_text_and_callable(tmp_path: Path) -> None:
    assert atomic_write(tmp_path / "a.bin", b"\x00\x01").read_bytes() == b"\x00\x01"
    assert atomic_write(tmp_path / "sub" / "b.txt", "héllo").read_text("utf-8") == "héllo"
    atomic_write(tmp_path / "c.txt", lambda p: p.write_text("via fn"))
    assert (tmp_path / "c.txt").read_text() == "via fn"
    assert sorted(p.name for p in tmp_path.rglob("*.tmp")) == []


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = atomic_write(tmp_path / "x.txt", "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.txt"]


def test_written_files_get_the_umask_permissions_not_0600(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        path = atomic_write(tmp_path / "grid.gif", b"GIF89a")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_cache_dir_follows_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAYERSYNC_CACHE", str(tmp_path / "cache"))
    assert cache_dir("stats") == tmp_path / "cache" / "stats"
    assert (tmp_path / "cache" / "stats").is_dir()
