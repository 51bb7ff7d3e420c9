"""Streaming feature statistics (mean and covariance) for Frechet-style metrics.

`FeatureStats` accumulates features batch by batch in float64 and can be merged across
batches, workers and torch.distributed processes. `finalize()` turns it into a `GaussianStats`
(mu, sigma, n), the object that is saved to / loaded from pytorch-fid's `.npz` format.

Numerics: instead of raw sums (sum x, sum x x^T), which lose precision when features carry a
large offset, we keep (n, mean, M2) with M2 = sum (x - mean)(x - mean)^T and merge two sets with
Chan et al.'s pairwise formula. mean() and covariance() then equal np.mean(x, 0) and
np.cov(x, rowvar=False) (unbiased, N - 1), exactly what pytorch-fid computes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

# ---------------------------------------------------------------------------------------------
# Finalized statistics: what gets saved, loaded and compared
# ---------------------------------------------------------------------------------------------


@dataclass
class GaussianStats:
    """Mean `mu` (D,) and covariance `sigma` (D, D) of a feature set, with its size `n`.

    `n` is None for files that do not record it (pytorch-fid's own `.npz` files).
    """

    mu: np.ndarray
    sigma: np.ndarray
    n: int | None = None

    def __post_init__(self) -> None:
        self.mu = np.atleast_1d(np.asarray(self.mu, dtype=np.float64))
        self.sigma = np.atleast_2d(np.asarray(self.sigma, dtype=np.float64))
        d = self.mu.shape[0]
        if self.mu.ndim != 1 or self.sigma.shape != (d, d):
            raise ValueError(
                f"mu must be (D,) and sigma (D, D); got {self.mu.shape}, {self.sigma.shape}"
            )

    @property
    def dim(self) -> int:
        return self.mu.shape[0]

    def save(self, path: str | Path) -> None:
        """Write an `.npz` with `mu`, `sigma` (pytorch-fid's format) and `n` when known."""
        arrays = {"mu": self.mu, "sigma": self.sigma}
        if self.n is not None:
            arrays["n"] = np.asarray(self.n, dtype=np.int64)
        with open(path, "wb") as f:  # a file object keeps numpy from appending ".npz"
            np.savez(f, **arrays)

    @classmethod
    def load(cls, path: str | Path) -> GaussianStats:
        """Read an `.npz` holding `mu` and `sigma` (and optionally `n`)."""
        with np.load(path) as f:
            n = int(f["n"]) if "n" in f.files else None
            return cls(mu=f["mu"][:], sigma=f["sigma"][:], n=n)

    def frechet_distance(self, other: GaussianStats, eps: float = 1e-6) -> float:
        """Frechet distance between this Gaussian and `other` (see `frechet_distance`)."""
        from layersync.metrics.frechet import frechet_distance

        return frechet_distance(self.mu, self.sigma, other.mu, other.sigma, eps=eps)


# ---------------------------------------------------------------------------------------------
# Streaming accumulator
# ---------------------------------------------------------------------------------------------


def _as_float64(features: torch.Tensor | np.ndarray, device: torch.device) -> torch.Tensor:
    if isinstance(features, np.ndarray):
        features = torch.from_numpy(features)
    return features.detach().to(device=device, dtype=torch.float64)


class FeatureStats:
    """Streaming float64 mean/covariance of (N, dim) features.

    State: n, mean (dim,), m2 (dim, dim) = sum of centred outer products. Combine with
    `update` (a batch), `merge` (another accumulator) and `all_reduce` (all processes).
    """

    def __init__(self, dim: int, device: str | torch.device = "cpu") -> None:
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self.dim = dim
        self.device = torch.device(device)
        self.n = 0
        self._mean = torch.zeros(dim, dtype=torch.float64, device=self.device)
        self._m2 = torch.zeros(dim, dim, dtype=torch.float64, device=self.device)

    def __repr__(self) -> str:
        return f"FeatureStats(dim={self.dim}, n={self.n})"

    # --- accumulation ---

    def _combine(self, n_b: int, mean_b: torch.Tensor, m2_b: torch.Tensor) -> None:
        """Chan et al. pairwise update of (n, mean, m2) with another set's (n, mean, m2)."""
        if n_b == 0:
            return
        n_a, n = self.n, self.n + n_b
        delta = mean_b - self._mean
        self._mean = self._mean + delta * (n_b / n)
        self._m2 = self._m2 + m2_b + torch.outer(delta, delta) * (n_a * n_b / n)
        self.n = n

    def update(self, features: torch.Tensor | np.ndarray) -> FeatureStats:
        """Add a batch of features of shape (N, dim)."""
        x = _as_float64(features, self.device)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"expected features of shape (N, {self.dim}), got {tuple(x.shape)}")
        if x.shape[0] == 0:
            return self
        mean_b = x.mean(dim=0)
        xc = x - mean_b
        self._combine(x.shape[0], mean_b, xc.T @ xc)
        return self

    def merge(self, other: FeatureStats) -> FeatureStats:
        """Fold another accumulator (same dim) into this one."""
        if other.dim != self.dim:
            raise ValueError(f"cannot merge stats of dim {other.dim} into dim {self.dim}")
        self._combine(other.n, other._mean.to(self.device), other._m2.to(self.device))
        return self

    def all_reduce(self, group: dist.ProcessGroup | None = None) -> FeatureStats:
        """Combine the statistics of all processes in `group`; every rank ends with the total.

        Two sum-reductions: (n, n * mean) gives the global mean m; then each rank's m2 re-centred
        on m, m2 + n (mean - m)(mean - m)^T, is summed. No-op when torch.distributed is not
        initialised. Works with gloo (CPU) and nccl (current CUDA device).
        """
        if not (dist.is_available() and dist.is_initialized()):
            return self
        backend = dist.get_backend(group)
        cuda = backend == "nccl"
        comm = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")

        head = torch.cat([torch.tensor([float(self.n)], dtype=torch.float64), self._mean.cpu()])
        head[1:] *= self.n
        head = head.to(comm)
        dist.all_reduce(head, group=group)
        n_total = round(head[0].item())
        if n_total == 0:
            return self
        mean = (head[1:] / n_total).to(self.device)
        delta = self._mean - mean
        m2 = (self._m2 + torch.outer(delta, delta) * self.n).to(comm)
        dist.all_reduce(m2, group=group)

        self.n, self._mean, self._m2 = n_total, mean, m2.to(self.device)
        return self

    # --- results ---

    def mean(self) -> np.ndarray:
        """Feature mean (dim,), float64, equal to np.mean(features, axis=0)."""
        if self.n < 1:
            raise ValueError("mean of an empty FeatureStats")
        return self._mean.cpu().numpy().copy()

    def covariance(self) -> np.ndarray:
        """Unbiased covariance (dim, dim), float64, equal to np.cov(features, rowvar=False)."""
        if self.n < 2:
            raise ValueError(f"covariance needs at least 2 samples, got {self.n}")
        return (self._m2 / (self.n - 1)).cpu().numpy()

    def finalize(self) -> GaussianStats:
        """Freeze into a GaussianStats(mu, sigma, n)."""
        return GaussianStats(mu=self.mean(), sigma=self.covariance(), n=self.n)

    def save(self, path: str | Path) -> None:
        """Save the finalized statistics as a pytorch-fid `.npz` (mu, sigma, n)."""
        self.finalize().save(path)

    @classmethod
    def from_gaussian(
        cls, stats: GaussianStats, device: str | torch.device = "cpu"
    ) -> FeatureStats:
        """Rebuild a mergeable accumulator from finalized stats; needs the sample count `n`."""
        if stats.n is None or stats.n < 2:
            raise ValueError("GaussianStats without a sample count n >= 2 cannot be merged further")
        out = cls(stats.dim, device=device)
        out.n = stats.n
        out._mean = torch.as_tensor(stats.mu, dtype=torch.float64, device=out.device).clone()
        out._m2 = torch.as_tensor(stats.sigma, dtype=torch.float64, device=out.device) * (
            stats.n - 1
        )
        return out
