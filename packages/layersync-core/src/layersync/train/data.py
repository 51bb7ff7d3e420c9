"""A resumable, rank-aware data stream.

Each epoch is a permutation drawn from ``seed + epoch`` (identical on every rank) cut into global
micro-batches of ``batch_size * world_size``; rank r takes the r-th contiguous slice of each. So
a global batch holds the same samples whatever the number of ranks. The position ``(epoch, batch_in_epoch)`` is all a checkpoint needs to continue
the exact same stream.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

# -----------------------------------------------------------------------------
# Per-item seeded randomness (crops, flips, clip starts, caption choices)


def item_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """A generator seeded from ``(seed, epoch, index)`` (numpy's SeedSequence mixing)."""
    state = np.random.SeedSequence([int(seed), int(epoch), int(index)]).generate_state(
        1, np.uint64
    )[0]
    return torch.Generator().manual_seed(int(state))


class SeededDataset(Dataset):
    """Base for datasets with random per-item draws that resume exactly.

    With an integer ``seed``, item ``i`` in epoch ``e`` draws from ``self.generator(i)``, seeded
    from ``(seed, e, i)``: the same result whatever the worker count, rank or visiting order.
    The engine calls ``set_epoch(e)`` at every epoch (like ``DistributedSampler``). With
    ``seed=None`` draws come from torch's global RNG (``generator`` returns None).
    """

    def __init__(self, seed: int | None = None) -> None:
        if seed is not None and seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed}")
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose per-item draws ``generator`` gives."""
        self.epoch = int(epoch)

    def generator(self, index: int) -> torch.Generator | None:
        """The generator item ``index`` draws from; None (global RNG) when ``seed`` is None."""
        return None if self.seed is None else item_generator(self.seed, self.epoch, index)


def give_run_seed(dataset: Dataset, seed: int) -> Dataset:
    """A :class:`SeededDataset` built without a seed gets the run's: its per-item draws are then
    keyed by (seed, epoch, index), identical for any worker count and after a mid-epoch resume
    (global-RNG draws in DataLoader workers are neither)."""
    if _seeded_kind(dataset) and dataset.seed is None:  # type: ignore[attr-defined]
        dataset.seed = int(seed)  # type: ignore[attr-defined]
    return dataset


def _seeded_kind(dataset: Dataset) -> bool:
    """A SeededDataset, or a dataset with the same contract (``seed``, ``set_epoch``,
    ``generator(i)``) that does not derive from it (the image plugin's datasets)."""
    if isinstance(dataset, SeededDataset):
        return True
    return (
        hasattr(dataset, "seed")
        and callable(getattr(dataset, "set_epoch", None))
        and callable(getattr(dataset, "generator", None))
    )


# -----------------------------------------------------------------------------
# The resumable stream


class EpochSampler(Sampler[list[int]]):
    """Batches of indices of one epoch for one rank, starting at ``start_batch``."""

    def __init__(
        self,
        size: int,
        batch_size: int,
        rank: int,
        world_size: int,
        seed: int,
        epoch: int,
        start_batch: int = 0,
    ) -> None:
        self.size, self.batch_size = size, batch_size
        self.rank, self.world_size = rank, world_size
        self.seed, self.epoch, self.start_batch = seed, epoch, start_batch

    def batches_per_epoch(self) -> int:
        return self.size // (self.batch_size * self.world_size)

    def __iter__(self) -> Iterator[list[int]]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.size, generator=g).tolist()
        global_batch = self.batch_size * self.world_size
        for b in range(self.start_batch, self.batches_per_epoch()):  # the ragged tail is dropped
            first = b * global_batch + self.rank * self.batch_size
            yield order[first : first + self.batch_size]

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch() - self.start_batch)


class DataStream:
    """Endless iterator of micro-batches that knows its position."""

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        collate: Callable[[list[Any]], Any],
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        num_workers: int = 0,
        epoch: int = 0,
        batch_in_epoch: int = 0,
    ) -> None:
        self.dataset, self.batch_size, self.collate = dataset, batch_size, collate
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.num_workers = num_workers
        self.epoch, self.batch_in_epoch = epoch, batch_in_epoch
        size = len(dataset)  # type: ignore[arg-type]
        if size < batch_size * world_size:
            raise ValueError(
                f"dataset has {size} items, fewer than one global micro-batch "
                f"({batch_size} x {world_size} ranks); lower train.batch_size"
            )
        self._iter: Iterator[Any] | None = None

    def _open(self) -> Iterator[Any]:
        if hasattr(self.dataset, "set_epoch"):  # per-item randomness keyed by (seed, epoch, i)
            self.dataset.set_epoch(self.epoch)
        sampler = EpochSampler(
            len(self.dataset),  # type: ignore[arg-type]
            self.batch_size,
            self.rank,
            self.world_size,
            self.seed,
            self.epoch,
            self.batch_in_epoch,
        )
        loader = DataLoader(
            self.dataset,
            batch_sampler=sampler,
            collate_fn=self.collate,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=False,
            # the workers' base seed: per rank, so global-RNG draws differ across ranks
            generator=torch.Generator().manual_seed(
                int(np.random.SeedSequence([self.seed, self.epoch, self.rank]).generate_state(1)[0])
            ),
        )
        return iter(loader)

    def __iter__(self) -> DataStream:
        return self

    def __next__(self) -> Any:
        if self._iter is None:
            self._iter = self._open()
        try:
            batch = next(self._iter)
        except StopIteration:
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0
            self._iter = self._open()
            batch = next(self._iter)
        self.batch_in_epoch += 1
        return batch


def to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor in a nested batch (dict/list/tuple/dataclass-free) to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        moved = [to_device(v, device) for v in batch]
        return type(batch)(moved) if not hasattr(batch, "_fields") else type(batch)(*moved)
    return batch
