"""Small file-system helpers every module shares: atomic writes and the cache directory.

A write is atomic when a reader (or a run killed mid-write) sees either the old file or the new
one, never a torn one: write to a temporary file in the same directory, flush and fsync it, then
``os.replace`` it onto the final name and fsync the directory so the rename survives a crash.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """``$LAYERSYNC_CACHE`` (default ``~/.cache/layersync``) joined with ``parts``, created."""
    root = os.environ.get("LAYERSYNC_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "layersync"
    path = base.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_dir(path: Path) -> None:
    """Flush a directory's entries (renames) to disk; a no-op where the OS cannot."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically.

    The caller writes the whole file to the yielded path (by any library). On an exception the
    temporary file is removed and ``path`` is left as it was::

        with atomic_path("stats.npz") as tmp:
            np.savez(tmp, mu=mu)
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp = Path(name)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; the file gets what open() would give
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        fsync_dir(final.parent)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: str | os.PathLike, data: bytes | str | Callable[[Path], None]) -> Path:
    """Write ``data`` (bytes, text, or a function that writes a given path) atomically."""
    with atomic_path(path) as tmp:
        if callable(data):
            data(tmp)
        elif isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data, encoding="utf-8")
    return Path(path)
