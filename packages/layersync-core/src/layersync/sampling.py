"""Sampling for evaluation: batched, parallel under torchrun, resumable.

``n`` samples are cut into fixed batches; batch ``b`` uses its own generator seeded from
``(seed, b)``, so the samples do not depend on the number of processes. Each finished batch is
written by the plugin into ``parts/<b>/`` (through a temporary directory and a rename), so a
restarted job skips what is done: rank 0 lists the batches not done yet once, and they are dealt
out evenly (:func:`deal_batches`), so no rank idles while another has a backlog. At the end rank
0 waits for every part on the file system (no collective, so no NCCL timeout however long the
others take) and asks the plugin to merge them (e.g. one ADM ``samples.npz``).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from layersync import distributed as dist
from layersync.plugin import Modality

if TYPE_CHECKING:
    from layersync.metrics import GaussianStats


def rank_slice(n: int, rank: int | None = None, world_size: int | None = None) -> range:
    """The part of ``range(n)`` (samples, batches, reference items) this process handles.

    Contiguous blocks whose sizes differ by at most one, in rank order, so concatenating the
    ranks' parts gives ``range(n)``. ``rank``/``world_size`` default to torch.distributed's (one
    process: everything). Combine per-rank results with e.g. ``FeatureStats.all_reduce``.
    """
    if rank is None or world_size is None:
        import torch.distributed as tdist

        on = tdist.is_available() and tdist.is_initialized()
        rank = (tdist.get_rank() if on else 0) if rank is None else rank
        world_size = (tdist.get_world_size() if on else 1) if world_size is None else world_size
    if n < 0 or world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(
            f"rank_slice: need n >= 0 and 0 <= rank < world_size, got {n}, {rank}, {world_size}"
        )
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))


@torch.no_grad()
def rank_feature_stats(
    make: Callable[[int, int, torch.Generator], Any],
    n: int,
    batch_size: int,
    features: Callable[[Any], torch.Tensor],
    dim: int,
    *,
    seed: int,
    device: torch.device | str = "cpu",
) -> tuple[GaussianStats, Any]:
    """Feature statistics of ``n`` generated samples, the work split across ranks.

    The samples are cut into fixed chunks of ``batch_size``; chunk ``c`` (items ``start:stop``)
    is made by ``make(start, stop, generator)`` with a generator seeded from ``(seed, c)``
    (:func:`batch_generator`), on the rank that :func:`rank_slice` gives it, and embedded by
    ``features`` (-> (B, dim)). ``FeatureStats.all_reduce`` combines the ranks, so every rank
    gets the statistics of the same ``n`` samples whatever the number of processes (equal to one
    process up to float64 rounding). Returns the statistics and the output of ``make`` for
    chunk 0 on the rank that made it (None elsewhere), e.g. to save a preview.
    """
    from layersync.metrics import FeatureStats

    device = torch.device(device)
    chunks = (n + batch_size - 1) // batch_size
    stats = FeatureStats(dim)
    first = None
    for c in rank_slice(chunks):
        start, stop = c * batch_size, min(n, (c + 1) * batch_size)
        out = make(start, stop, batch_generator(device, seed, c))
        if c == 0:
            first = out
        stats.update(features(out).detach().double().cpu())
    return stats.all_reduce().finalize(), first


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
    finals = [parts / f"{b:06d}" for b in batches]
    todo = dist.on_rank0(lambda: [b for b in batches if not finals[b].is_dir()])
    for b in deal_batches(todo, info.rank, info.world_size):
        start, stop = b * batch_size, min(n, (b + 1) * batch_size)
        gen = batch_generator(info.device, seed, b)
        samples = plugin.sample(
            model, cfg, stop - start, slice_condition(condition, start, stop), gen
        )
        tmp = parts / f".tmp-{b:06d}"
        shutil.rmtree(tmp, ignore_errors=True)
        plugin.write_samples(samples, tmp, cfg)
        tmp.rename(finals[b])
    if not info.is_main:
        return []
    wait_for(finals)
    return plugin.merge_samples(finals, out, cfg)


def deal_batches(todo: list[int], rank: int, world_size: int) -> list[int]:
    """This rank's share of the batches still to do: every ``world_size``-th, so the shares
    differ by at most one batch however the done ones were spread."""
    return list(todo[rank::world_size])


def wait_for(paths: list[Path], poll: float = 0.5) -> None:
    """Block until every path exists (other ranks' parts; torchrun ends the job if one fails)."""
    for path in paths:
        while not path.is_dir():
            time.sleep(poll)
