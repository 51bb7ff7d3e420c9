"""Sampling for evaluation: batched, parallel under torchrun, resumable.

``n`` samples are cut into fixed batches; batch ``b`` uses its own generator seeded from
``(seed, b)``, so the samples do not depend on the number of processes. Rank ``r`` makes the
batches ``b % world_size == r``; each finished batch is written by the plugin into
``parts/<b>/`` (through a temporary directory and a rename), so a restarted job skips what is
done. At the end rank 0 asks the plugin to merge the parts (e.g. one ADM ``samples.npz``).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from layersync.plugin import Modality
from layersync.train import distributed as dist


def slice_condition(condition: Any, start: int, stop: int) -> Any:
    """Rows ``start:stop`` of a condition: a tensor, a list, a dict of those, or None."""
    if condition is None:
        return None
    if isinstance(condition, dict):
        return {k: slice_condition(v, start, stop) for k, v in condition.items()}
    return condition[start:stop]


def batch_generator(device: torch.device, seed: int, batch: int) -> torch.Generator:
    return torch.Generator(device).manual_seed(seed * 1_000_003 + batch)


@torch.no_grad()
def sample_to_dir(
    plugin: Modality,
    model: nn.Module,
    cfg: Any,
    n: int,
    out: Path,
    *,
    seed: int = 0,
    batch_size: int = 64,
    info: dist.DistInfo | None = None,
) -> list[Path]:
    """Generate ``n`` samples into ``out`` (parts, then merged on rank 0); returns the files."""
    info = info or dist.DistInfo(device=next(model.parameters()).device)
    parts = out / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    condition = plugin.conditions(cfg, n, batch_generator(info.device, seed, -1))
    batches = range((n + batch_size - 1) // batch_size)
    for b in batches:
        final = parts / f"{b:06d}"
        if b % info.world_size != info.rank or final.is_dir():
            continue  # another rank's batch, or done by an earlier (interrupted) job
        start, stop = b * batch_size, min(n, (b + 1) * batch_size)
        gen = batch_generator(info.device, seed, b)
        samples = plugin.sample(
            model, cfg, stop - start, slice_condition(condition, start, stop), gen
        )
        tmp = parts / f".tmp-{b:06d}"
        shutil.rmtree(tmp, ignore_errors=True)
        plugin.write_samples(samples, tmp, cfg)
        tmp.rename(final)
    dist.barrier()
    if not info.is_main:
        return []
    return plugin.merge_samples([parts / f"{b:06d}" for b in batches], out, cfg)
