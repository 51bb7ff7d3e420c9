"""Tests for layersync.metrics: streaming feature statistics and the Frechet distance."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from scipy import linalg

import layersync.metrics
from layersync.metrics import FeatureStats, GaussianStats, frechet_distance
from layersync.metrics import frechet as frechet_module

# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def _features(n: int = 301, d: int = 9, offset: float = 0.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(d, d))
    return rng.normal(size=(n, d)) @ mix + rng.normal(size=d) * 3 + offset


def _random_spd(d: int, rng: np.random.Generator) -> np.ndarray:
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    w, v = linalg.eigh(s)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def _frechet_eigh(mu1, s1, mu2, s2) -> float:
    """Independent reference: tr sqrt(S1 S2) = sum sqrt(eig(sqrt(S1) S2 sqrt(S1)))."""
    r1 = _psd_sqrt(s1)
    w = linalg.eigh(r1 @ s2 @ r1, eigvals_only=True)
    tr_covmean = np.sqrt(np.clip(w, 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


# ---------------------------------------------------------------------------------------------
# FeatureStats
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("offset", [0.0, 100.0, 1e4])
def test_stats_match_numpy_with_chunked_updates(offset):
    x = _features(offset=offset)
    stats = FeatureStats(x.shape[1])
    bounds = [0, 1, 1, 17, 60, 61, 200, x.shape[0]]  # includes an empty and a 1-row chunk
    for lo, hi in itertools.pairwise(bounds):
        stats.update(x[lo:hi])
    assert stats.n == x.shape[0]
    np.testing.assert_allclose(stats.mean(), np.mean(x, axis=0), rtol=1e-12, atol=1e-12 * offset)
    np.testing.assert_allclose(stats.covariance(), np.cov(x, rowvar=False), rtol=1e-9, atol=1e-9)
    assert stats.mean().dtype == np.float64 and stats.covariance().dtype == np.float64


def test_stats_accept_torch_and_numpy_alike():
    x = _features(n=64, d=5).astype(np.float32)
    a = FeatureStats(5).update(x)
    b = FeatureStats(5).update(torch.from_numpy(x)[:30]).update(torch.from_numpy(x)[30:])
    np.testing.assert_allclose(a.covariance(), b.covariance(), rtol=1e-12)
    np.testing.assert_allclose(
        a.covariance(), np.cov(x.astype(np.float64), rowvar=False), rtol=1e-9
    )


def test_stats_merge_in_any_order():
    x = _features(n=250, d=6, offset=100.0, seed=1)
    parts = np.split(x, [13, 14, 120, 250])  # the last part is empty
    ref_mu, ref_cov = np.mean(x, axis=0), np.cov(x, rowvar=False)
    for order in itertools.permutations(range(len(parts))):
        # a left fold ...
        fold = FeatureStats(6).update(parts[order[0]])
        for i in order[1:]:
            fold.merge(FeatureStats(6).update(parts[i]))
        # ... and a tree of merges
        acc = [FeatureStats(6).update(parts[i]) for i in order]
        tree = acc[0].merge(acc[1]).merge(acc[2].merge(acc[3]).merge(acc[4]))
        for total in (fold, tree):
            assert total.n == 250
            np.testing.assert_allclose(total.mean(), ref_mu, rtol=1e-12)
            np.testing.assert_allclose(total.covariance(), ref_cov, rtol=1e-9, atol=1e-10)


def test_stats_errors():
    stats = FeatureStats(4)
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        stats.update(np.zeros((3, 5)))
    with pytest.raises(ValueError, match="empty"):
        stats.mean()
    stats.update(np.ones((1, 4)))
    with pytest.raises(ValueError, match="at least 2"):
        stats.covariance()
    with pytest.raises(ValueError, match="dim"):
        stats.merge(FeatureStats(3))


def test_save_load_roundtrip_and_pytorch_fid_format(tmp_path):
    x = _features(n=50, d=4)
    stats = FeatureStats(4).update(x)
    path = tmp_path / "ref.npz"
    stats.save(path)
    with np.load(path) as f:
        assert set(f.files) == {"mu", "sigma", "n"}
        np.testing.assert_array_equal(f["mu"], stats.mean())
        np.testing.assert_array_equal(f["sigma"], stats.covariance())
    loaded = GaussianStats.load(path)
    assert loaded.n == 50 and loaded.dim == 4
    np.testing.assert_array_equal(loaded.sigma, stats.covariance())

    # a file written the way pytorch-fid writes it has no n
    plain = tmp_path / "plain.npz"
    np.savez(plain, mu=loaded.mu, sigma=loaded.sigma)
    assert GaussianStats.load(plain).n is None
    with pytest.raises(ValueError, match="sample count"):
        FeatureStats.from_gaussian(GaussianStats.load(plain))

    # with n, a loaded file can keep accumulating
    y = _features(n=30, d=4, seed=5)
    resumed = FeatureStats.from_gaussian(loaded).update(y)
    both = np.concatenate([x, y])
    np.testing.assert_allclose(resumed.covariance(), np.cov(both, rowvar=False), rtol=1e-9)
    np.testing.assert_allclose(resumed.mean(), both.mean(axis=0), rtol=1e-12)


def test_all_reduce_is_noop_without_distributed():
    assert not dist.is_initialized()
    x = _features(n=20, d=3)
    stats = FeatureStats(3).update(x)
    assert stats.all_reduce() is stats and stats.n == 20
    np.testing.assert_allclose(stats.covariance(), np.cov(x, rowvar=False), rtol=1e-9)


# 2-process gloo run in a fresh interpreter (independent of how pytest imports this file): each
# rank holds a different, unequal slice (rank 1 also gets an empty update); after all_reduce both
# ranks must hold the statistics of the whole set.
_ALL_REDUCE_SCRIPT = """
import sys
import numpy as np
import torch.distributed as dist
import torch.multiprocessing as mp
from layersync.metrics import FeatureStats


def worker(rank, tmp):
    dist.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=2)
    try:
        x = np.load(f"{tmp}/features.npy")
        stats = FeatureStats(x.shape[1]).update(x[:37] if rank == 0 else x[37:])
        if rank == 1:
            stats.update(x[:0])
        stats.all_reduce()
        np.savez(f"{tmp}/rank{rank}.npz", mu=stats.mean(), sigma=stats.covariance(), n=stats.n)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    mp.spawn(worker, args=(sys.argv[1],), nprocs=2, join=True)
"""


def test_all_reduce_two_gloo_processes_equals_single_process(tmp_path):
    x = _features(n=120, d=8, offset=100.0, seed=3)
    np.save(tmp_path / "features.npy", x)
    script = tmp_path / "all_reduce.py"
    script.write_text(_ALL_REDUCE_SCRIPT)
    src = str(Path(layersync.metrics.__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], env=env, capture_output=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    single = FeatureStats(8).update(x)
    for rank in range(2):
        with np.load(tmp_path / f"rank{rank}.npz") as f:
            assert int(f["n"]) == 120
            np.testing.assert_allclose(f["mu"], single.mean(), rtol=1e-12)
            np.testing.assert_allclose(f["sigma"], single.covariance(), rtol=1e-9, atol=1e-10)


# ---------------------------------------------------------------------------------------------
# Frechet distance
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("d", [1, 3, 32])
def test_frechet_matches_eigen_decomposition(d):
    rng = np.random.default_rng(d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = _random_spd(d, rng), _random_spd(d, rng)
    got = frechet_distance(mu1, s1, mu2, s2)
    assert isinstance(got, float)
    assert got == pytest.approx(_frechet_eigh(mu1, s1, mu2, s2), rel=1e-9, abs=1e-10)


def test_frechet_of_identical_stats_is_zero():
    rng = np.random.default_rng(0)
    mu, s = rng.normal(size=16), _random_spd(16, rng)
    assert abs(frechet_distance(mu, s, mu, s)) < 1e-9 * np.trace(s)


def test_frechet_diagonal_closed_form():
    rng = np.random.default_rng(1)
    m1, m2 = rng.normal(size=10), rng.normal(size=10)
    v1, v2 = rng.uniform(0.1, 3, size=10), rng.uniform(0.1, 3, size=10)
    expected = ((m1 - m2) ** 2).sum() + ((np.sqrt(v1) - np.sqrt(v2)) ** 2).sum()
    got = frechet_distance(m1, np.diag(v1), m2, np.diag(v2))
    assert got == pytest.approx(expected, rel=1e-10)


def test_frechet_of_rank_deficient_sample_covariances_without_warnings():
    # fewer samples than dimensions, as for FID on small sets: the product is singular
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(12, 20)), rng.normal(size=(12, 20)) + 0.5
    ga = FeatureStats(20).update(a).finalize()
    gb = FeatureStats(20).update(b).finalize()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = ga.frechet_distance(gb)
    assert got == pytest.approx(_frechet_eigh(ga.mu, ga.sigma, gb.mu, gb.sigma), rel=1e-6)


def test_frechet_retries_with_eps_when_not_finite(monkeypatch):
    calls = []
    real_sqrtm = frechet_module._sqrtm

    def flaky_sqrtm(a):
        calls.append(a)
        return np.full_like(a, np.nan) if len(calls) == 1 else real_sqrtm(a)

    monkeypatch.setattr(frechet_module, "_sqrtm", flaky_sqrtm)
    rng = np.random.default_rng(3)
    s1, s2, mu = _random_spd(4, rng), _random_spd(4, rng), np.zeros(4)
    with pytest.warns(RuntimeWarning, match="adding 0.001"):
        got = frechet_distance(mu, s1, mu, s2, eps=1e-3)
    np.testing.assert_allclose(calls[1], (s1 + 1e-3 * np.eye(4)) @ (s2 + 1e-3 * np.eye(4)))
    # the traces keep the un-offset covariances, as in pytorch-fid
    r1, s2e = _psd_sqrt(s1 + 1e-3 * np.eye(4)), s2 + 1e-3 * np.eye(4)
    tr_covmean = np.trace(_psd_sqrt(r1 @ s2e @ r1))
    assert got == pytest.approx(np.trace(s1) + np.trace(s2) - 2 * tr_covmean, rel=1e-9)


def test_frechet_rejects_large_imaginary_part_and_bad_shapes():
    # a "covariance" with a negative eigenvalue makes sqrtm purely imaginary on one axis
    with pytest.raises(ValueError, match="imaginary component 1"):
        frechet_distance(np.zeros(2), np.diag([-1.0, 1.0]), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="shape"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))


# --------------------------------------------------------------------------------------------
# cached_stats: reference statistics computed once per key
# --------------------------------------------------------------------------------------------

KEY = {"extractor": "toy-net", "weights": "sha256:ab12", "data": {"name": "toy", "n": 301}}


def _toy_stats() -> GaussianStats:
    return FeatureStats(9).update(_features()).finalize()


def test_cached_stats_second_call_does_not_compute(tmp_path, monkeypatch):
    from layersync.metrics import cached_stats, stats_cache_path

    monkeypatch.setenv("LAYERSYNC_CACHE", str(tmp_path))
    calls = []

    def compute():
        calls.append(1)
        return _toy_stats()

    first = cached_stats(KEY, compute)
    path = stats_cache_path(KEY)
    assert path.parent == tmp_path / "stats" and path.is_file()
    assert json.loads(path.with_suffix(".json").read_text()) == KEY  # the key, readable, beside
    second = cached_stats(dict(reversed(list(KEY.items()))), compute)  # key order is irrelevant
    assert len(calls) == 1
    np.testing.assert_array_equal(second.mu, first.mu)
    np.testing.assert_array_equal(second.sigma, first.sigma)
    assert second.n == 301

    changed = {**KEY, "data": {"name": "toy", "n": 300}}
    cached_stats(changed, compute)
    assert len(calls) == 2 and stats_cache_path(changed) != path

    # a key file that does not match (collision / edited) means: compute again
    path.with_suffix(".json").write_text(json.dumps({"other": 1}))
    cached_stats(KEY, compute)
    assert len(calls) == 3 and json.loads(path.with_suffix(".json").read_text()) == KEY
    with pytest.raises(TypeError, match="must return GaussianStats"):
        cached_stats({"bad": 1}, lambda: np.zeros(3))
    with pytest.raises(ValueError, match="JSON-serialisable"):
        cached_stats({"bad": object()}, compute)


_KILL_DURING_WRITE = """
import os, signal, sys
import numpy as np
from layersync.metrics import FeatureStats, GaussianStats, cached_stats

def save_then_die(self, path):
    with open(path, "wb") as f:      # half a file reaches the disk, then the process is killed
        f.write(b"PK\\x03\\x04" + b"\\0" * 1000)
        f.flush()
        os.fsync(f.fileno())
    os.kill(os.getpid(), signal.SIGKILL)

GaussianStats.save = save_then_die
cached_stats({"k": 1}, lambda: FeatureStats(2).update(np.eye(2)[[0, 1, 1]]).finalize())
"""


def test_cached_stats_kill_during_write_leaves_no_partial_file(tmp_path):
    from layersync.metrics import cached_stats, stats_cache_path

    env = {**os.environ, "LAYERSYNC_CACHE": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", _KILL_DURING_WRITE], env=env, timeout=120)
    assert proc.returncode == -9  # killed inside the write
    path = stats_cache_path({"k": 1}, root=tmp_path / "stats")
    assert not path.exists()  # only the (complete) key file and a temporary may remain
    calls = []
    stats = cached_stats({"k": 1}, lambda: calls.append(1) or _toy_stats(), root=tmp_path / "stats")
    assert calls == [1] and stats.n == 301 and path.is_file()
