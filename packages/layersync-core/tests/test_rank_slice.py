"""layersync.sampling.rank_slice: the ranks' parts tile range(n) with balanced sizes, and a
metric computed from rank-split work and FeatureStats.all_reduce equals the one-process value."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from layersync.sampling import rank_slice


@pytest.mark.parametrize("n", [0, 1, 5, 7, 8, 50_000])
@pytest.mark.parametrize("world", [1, 2, 3, 8])
def test_parts_tile_range_and_balance(n, world):
    parts = [rank_slice(n, r, world) for r in range(world)]
    assert [i for p in parts for i in p] == list(range(n))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_defaults_and_errors():
    assert rank_slice(10) == range(10)  # no process group: everything
    assert rank_slice(7, 1, 3) == range(3, 5)
    with pytest.raises(ValueError, match="rank_slice"):
        rank_slice(4, 2, 2)


_WORKER = """
import sys
import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from layersync.metrics import FeatureStats
from layersync.sampling import rank_feature_stats, rank_slice

def make(start, stop, generator):   # a "sampler": its draws come from the chunk's generator
    return torch.randn(stop - start, 3, generator=generator) * 2 + torch.arange(start, stop)[:, None]

def features(samples):
    return samples ** 2

def work(rank, tmp):
    dist.init_process_group("gloo", init_method=f"file://{tmp}/rdv", rank=rank, world_size=2)
    x = np.random.default_rng(0).standard_normal((103, 6)) + 5.0   # the "features" of 103 items
    stats = FeatureStats(6).update(x[list(rank_slice(103))]).all_reduce().finalize()
    np.savez(f"{tmp}/rank{rank}.npz", mu=stats.mu, sigma=stats.sigma, n=stats.n)
    gen_stats, first = rank_feature_stats(make, 23, 4, features, 3, seed=7)
    np.savez(f"{tmp}/gen{rank}.npz", mu=gen_stats.mu, sigma=gen_stats.sigma, n=gen_stats.n,
             first=np.zeros(0) if first is None else first.numpy())
    dist.destroy_process_group()

if __name__ == "__main__":
    mp.spawn(work, args=(sys.argv[1],), nprocs=2, join=True)
"""


def test_rank_split_statistics_equal_one_process(tmp_path):
    from layersync.metrics import FeatureStats

    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    done = subprocess.run([sys.executable, str(script), str(tmp_path)], timeout=300,
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    x = np.random.default_rng(0).standard_normal((103, 6)) + 5.0
    one = FeatureStats(6).update(x).finalize()
    for rank in (0, 1):
        with np.load(tmp_path / f"rank{rank}.npz") as f:
            assert int(f["n"]) == 103
            np.testing.assert_allclose(f["mu"], one.mu, rtol=0, atol=1e-12)
            np.testing.assert_allclose(f["sigma"], one.sigma, rtol=0, atol=1e-12)
    # generated samples: 23 in chunks of 4 (6 chunks, 3 per rank), one generator per chunk
    single = {}
    exec(_WORKER.split("def work")[0], single)  # the same make/features, in this process
    ref, first = single["rank_feature_stats"](single["make"], 23, 4, single["features"], 3, seed=7)
    assert ref.n == 23 and first.shape == (4, 3)
    for rank in (0, 1):
        with np.load(tmp_path / f"gen{rank}.npz") as f:
            assert int(f["n"]) == 23
            np.testing.assert_allclose(f["mu"], ref.mu, rtol=1e-12, atol=0)
            np.testing.assert_allclose(f["sigma"], ref.sigma, rtol=1e-12, atol=0)
            assert f["first"].shape == ((4, 3) if rank == 0 else (0,))  # chunk 0 is rank 0's
    with np.load(tmp_path / "gen0.npz") as f:
        np.testing.assert_array_equal(f["first"], first.numpy())
