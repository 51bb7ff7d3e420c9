"""The engine's data stream with DataLoader workers: per-rank randomness, exact mid-epoch resume.

Datasets draw noise per item (as the latent cache's fresh eps and the image flips do). Built
without a seed, a :class:`SeededDataset` gets the run's (``give_run_seed``, as the engine does),
so its draws are keyed by (seed, epoch, index): the same after a resume for any worker count.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from layersync.train.data import DataStream, SeededDataset, give_run_seed

SIZE, MICRO, WORKERS = 24, 3, 2


class NoisyItems(SeededDataset):
    """Item i: (i, noise drawn from the item's generator, or torch's global RNG without seed)."""

    def __len__(self) -> int:
        return SIZE

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor]:
        return i, torch.randn(4, generator=self.generator(i))


class GlobalNoise(Dataset):
    """Ignores the index: only the worker's RNG stream makes its noise."""

    def __len__(self) -> int:
        return SIZE

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.randn(4)


def collate(items: list) -> list:
    return items


def stream(dataset: Dataset, rank: int = 0, **position: int) -> DataStream:
    return DataStream(
        dataset, MICRO, collate, rank=rank, world_size=2, seed=5, num_workers=WORKERS, **position
    )


def take(s: DataStream, k: int) -> list:
    return [next(s) for _ in range(k)]


def test_a_seedless_dataset_gets_the_run_seed() -> None:
    assert give_run_seed(NoisyItems(), 5).seed == 5
    assert give_run_seed(NoisyItems(seed=9), 5).seed == 9  # an explicit seed is kept
    plain = GlobalNoise()
    assert give_run_seed(plain, 5) is plain and not hasattr(plain, "seed")

    class SameContract(GlobalNoise):  # seed/set_epoch/generator without the base class
        seed = None

        def set_epoch(self, epoch: int) -> None: ...

        def generator(self, index: int) -> None: ...

    assert give_run_seed(SameContract(), 5).seed == 5


def test_mid_epoch_resume_with_workers_draws_the_same() -> None:
    """7 micro-batches straight (crossing the epoch end at 4) == 3, then a resumed stream."""
    straight = take(stream(give_run_seed(NoisyItems(), 5)), 7)
    first = stream(give_run_seed(NoisyItems(), 5))
    take(first, 3)
    resumed = stream(
        give_run_seed(NoisyItems(), 5), epoch=first.epoch, batch_in_epoch=first.batch_in_epoch
    )
    for got, want in zip(take(resumed, 4), straight[3:], strict=True):
        assert [i for i, _ in got] == [i for i, _ in want]
        assert torch.equal(torch.stack([x for _, x in got]), torch.stack([x for _, x in want]))
    # and the draws change with the epoch: item i's noise in epoch 1 is not its epoch-0 noise
    ds = give_run_seed(NoisyItems(), 5)
    epoch0 = ds[0][1]
    ds.set_epoch(1)
    assert not torch.equal(epoch0, ds[0][1])


def test_ranks_workers_draw_different_global_noise() -> None:
    """Same worker ids on both ranks, but their RNG streams differ (the loader seed has the rank)."""
    a = torch.cat(take(stream(GlobalNoise(), rank=0), 1)[0])
    b = torch.cat(take(stream(GlobalNoise(), rank=1), 1)[0])
    assert a.shape == (MICRO * 4,)
    assert not torch.allclose(a, b)
