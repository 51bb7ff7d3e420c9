"""Image FID split across ranks: 2 CPU processes (gloo) give the FID of 1 process to 1e-6.

``ImageModality.evaluate`` cuts its ``metric.num_samples`` samples into fixed chunks, each drawn
with its own generator seeded from (seed, chunk) and made by one rank
(``layersync.sampling.rank_feature_stats``); the reference statistics are split the same way
(``rank_slice``); ``FeatureStats.all_reduce`` combines the ranks. A small fixed random network
with Inception's 2048-d output stands in for Inception (whose CPU cost would make this a
minutes-long test): the split is what is tested, not the network (``test_fid.py`` tests that).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

SCRIPT = """
import json, os, sys
import torch
import torch.distributed as dist

def run(rank, world, tmp, cheap):
    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{tmp}/rdv", rank=rank,
                                world_size=world)
    torch.set_num_threads(1)
    from layersync import config
    from layersync_image import fid
    from layersync_image.plugin import plugin

    def tiny_inception(path=None, device="cpu"):  # (B, 3, 299, 299) -> (B, 2048), fixed weights
        torch.manual_seed(5)
        net = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(),
                                  torch.nn.Linear(48, 2048), torch.nn.Tanh())
        return net.to(device).eval().requires_grad_(False)

    fid.load_inception = tiny_inception
    if cheap:  # record both statistics; skip the 2048-d sqrtm (a minute on a loaded CPU)
        import numpy as np
        from layersync.metrics import GaussianStats

        def record(self, other, eps=1e-6):
            np.savez(f"{tmp}/stats-{world}-{rank}.npz", mu=self.mu, sigma=self.sigma,
                     ref_mu=other.mu, ref_sigma=other.sigma, n=self.n, ref_n=other.n)
            return float(((self.mu - other.mu) ** 2).sum())

        GaussianStats.frechet_distance = record
    cfg = config.resolve(plugin, overrides=[
        "model.depth=2", "model.hidden_size=32", "model.num_heads=2", "sampler.steps=2",
        "sampler.batch_size=3", "metric.fid=on", "metric.num_samples=10", "metric.batch_size=3",
        "metric.reference_count=7"])
    torch.manual_seed(0)
    model = plugin.build_model(cfg).eval()
    out = f"{tmp}/eval-{world}"
    os.makedirs(out, exist_ok=True)
    gen = torch.Generator().manual_seed(123)
    result = plugin.evaluate(model, cfg, __import__("pathlib").Path(out), gen)
    with open(f"{tmp}/result-{world}-{rank}.json", "w") as f:
        json.dump(result, f)
    if world > 1:
        dist.destroy_process_group()

if __name__ == "__main__":
    world, tmp, cheap = int(sys.argv[1]), sys.argv[2], sys.argv[3] == "cheap"
    if world == 1:
        run(0, 1, tmp, cheap)
    else:
        import torch.multiprocessing as mp
        mp.spawn(run, args=(world, tmp, cheap), nprocs=world, join=True)
"""


def _run(tmp, mode: str) -> dict:
    script = tmp / "fid_ranks.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1", LAYERSYNC_CACHE=str(tmp / "cache"))
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    for world in (1, 2):
        done = subprocess.run([sys.executable, str(script), str(world), str(tmp), mode], env=env,
                              capture_output=True, text=True, timeout=900)  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
    one = json.loads((tmp / "result-1-0.json").read_text())
    protocol = json.loads((tmp / "eval-1" / "fid.json").read_text())
    assert one.keys() == {"fid", "kid", "kid_std"}
    assert (protocol["samples"], protocol["reference"], protocol["kid_subset_size"]) == (10, 7, 7)
    for rank in (0, 1):
        two = json.loads((tmp / f"result-2-{rank}.json").read_text())
        assert two.keys() == one.keys()
        assert two["fid"] == pytest.approx(one["fid"], rel=1e-6, abs=1e-6)
        # KID of the features gathered from both ranks, in sample order: the same subsets
        assert two["kid"] == pytest.approx(one["kid"], rel=1e-5, abs=1e-9)
        assert two["kid_std"] == pytest.approx(one["kid_std"], rel=1e-5, abs=1e-9)
    # the preview grid of the first chunk is written once, by the rank that made it
    assert sorted(p.name for p in (tmp / "eval-2").iterdir()) == sorted(
        p.name for p in (tmp / "eval-1").iterdir()
    )
    return one


def test_fid_statistics_two_processes_equal_one(tmp_path):
    """Sample and reference statistics of 2 ranks equal 1 process's (the FID is a function of
    them; the real FID equality is the slow test below)."""
    import numpy as np

    _run(tmp_path, "cheap")
    with np.load(tmp_path / "stats-1-0.npz") as f:
        one = {k: f[k] for k in f.files}
    assert int(one["n"]) == 10 and int(one["ref_n"]) == 7
    assert one["sigma"].shape == (2048, 2048) and float(np.abs(one["sigma"]).sum()) > 0
    for rank in (0, 1):
        with np.load(tmp_path / f"stats-2-{rank}.npz") as f:
            for key, value in one.items():
                np.testing.assert_allclose(f[key], value, rtol=0, atol=1e-9, err_msg=key)


@pytest.mark.slow
def test_fid_two_processes_equals_one(tmp_path):
    one = _run(tmp_path, "full")
    assert one["fid"] > 0
