"""Cached reference statistics for Frechet-style metrics (FID, FAD, FVD, motion FID).

Real-data statistics cost minutes to hours (thousands of clips through a feature network) and never
change for a given (feature network, weights, data, split, count). :func:`cached_stats` stores them
once under ``$LAYERSYNC_CACHE/stats/`` (default ``~/.cache/layersync/stats/``) in a file named by a
hash of a JSON key, with the key written beside it in readable form::

    stats = cached_stats(
        {"metric": "fid", "extractor": "inception-pool3", "weights": "fid-helper default_1.pt",
         "data": "fashion-mnist", "split": "test", "n": 10000},
        lambda: real_features_stats(...),          # returns a GaussianStats
    )

Both files are written atomically: a run killed mid-write leaves no partial file, and the next
call computes again. Under torch.distributed every rank takes the same decision (hit or compute),
so ``compute`` may itself split work across ranks and all-reduce; rank 0 writes.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from layersync.fileio import atomic_write, cache_dir
from layersync.metrics.stats import GaussianStats

__all__ = ["cached_array", "cached_stats", "stats_cache_path"]


def _canonical(key: Mapping[str, Any]) -> str:
    try:
        return json.dumps(key, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    except TypeError as e:
        raise ValueError(f"cached_stats key must be JSON-serialisable: {e}") from e


def stats_cache_path(key: Mapping[str, Any], root: str | Path | None = None) -> Path:
    """Where the statistics for ``key`` live: ``<root>/<sha256(key)[:20]>.npz`` (``root``
    defaults to ``cache_dir("stats")``); the key itself is stored beside it as ``.json``."""
    digest = hashlib.sha256(_canonical(key).encode()).hexdigest()[:20]
    base = Path(root) if root is not None else cache_dir("stats")
    return base / f"{digest}.npz"


def _read(path: Path, key: Mapping[str, Any]) -> GaussianStats | None:
    """The cached stats if both files exist, the stored key is ``key`` and the npz reads."""
    meta = path.with_suffix(".json")
    if not (path.is_file() and meta.is_file()):
        return None
    try:
        if json.loads(meta.read_text(encoding="utf-8")) != json.loads(_canonical(key)):
            return None  # a hash collision or an edited file: recompute
        return GaussianStats.load(path)
    except (OSError, ValueError, KeyError):
        return None


def _all_ranks_hit(hit: bool) -> bool:
    if not (dist.is_available() and dist.is_initialized()):
        return hit
    device = (
        torch.device("cuda", torch.cuda.current_device())
        if dist.get_backend() == "nccl"
        else torch.device("cpu")
    )
    flag = torch.tensor([1 if hit else 0], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def cached_stats(
    key: Mapping[str, Any],
    compute: Callable[[], GaussianStats],
    *,
    root: str | Path | None = None,
) -> GaussianStats:
    """``compute()``'s statistics, from the cache when ``key`` was computed before.

    ``key`` is a JSON-serialisable dict naming everything the statistics depend on: the
    extractor and its weights' identity, the data config, the split and the sample count. A
    changed key is a different file. ``root`` overrides the cache folder (tests).
    """
    path = stats_cache_path(key, root)
    stats = _read(path, key)
    if _all_ranks_hit(stats is not None):
        return stats  # type: ignore[return-value]
    stats = compute()
    if not isinstance(stats, GaussianStats):
        raise TypeError(f"cached_stats: compute() must return GaussianStats, got {type(stats)}")
    rank0 = not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0
    if rank0:
        try:  # the key first: a stats file is only read once its key file is complete
            text = json.dumps(key, sort_keys=True, indent=1) + "\n"
            atomic_write(path.with_suffix(".json"), text)
            atomic_write(path, stats.save)
        except OSError as e:  # a read-only cache: the result is still correct, just not kept
            warnings.warn(f"could not cache statistics at {path}: {e}", stacklevel=2)
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
    return stats


def cached_array(
    key: Mapping[str, Any],
    compute: Callable[[], np.ndarray],
    *,
    root: str | Path | None = None,
) -> np.ndarray:
    """``compute()``'s array (e.g. reference features for KID), cached like ``cached_stats``
    as ``<hash>.npy`` with the key beside it. No collective: a rank that misses computes (the
    same deterministic result); rank 0 writes."""
    path = stats_cache_path(key, root).with_suffix(".npy")
    meta = path.with_suffix(".json")
    if path.is_file() and meta.is_file():
        try:
            if json.loads(meta.read_text(encoding="utf-8")) == json.loads(_canonical(key)):
                return np.load(path)
        except (OSError, ValueError):
            pass
    array = np.asarray(compute())
    rank0 = not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0
    if rank0:

        def save(p: Path) -> None:
            with open(p, "wb") as f:  # a file object keeps numpy from appending ".npy"
                np.save(f, array)

        try:
            atomic_write(meta, json.dumps(key, sort_keys=True, indent=1) + "\n")
            atomic_write(path, save)
        except OSError as e:
            warnings.warn(f"could not cache the array at {path}: {e}", stacklevel=2)
    return array
