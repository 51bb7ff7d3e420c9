"""Kernel Inception Distance: unbiased MMD^2 with the cubic polynomial kernel, over subsets.

KID (Binkowski et al., 2018) as torch-fidelity and torchmetrics compute it:
``k(x, y) = (x.y / d + 1)^3``; on ``subsets`` random subsets of ``m`` rows of each set (without
replacement), the unbiased estimate

    MMD^2 = [sum_{i!=j} k(x_i, x_j) + sum_{i!=j} k(y_i, y_j)] / (m (m - 1))
            - 2 sum_{i,j} k(x_i, y_j) / m^2

and the mean and (population) standard deviation over subsets. Unlike FID it has no bias that
depends on n, so small-n values can be compared; still compare at equal n and reference.

Cost: the kernel of the union of both sets is computed once when it fits (n_x + n_y <=
``FULL_GRAM_MAX``) and the subsets index into it; otherwise each subset multiplies its rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

FULL_GRAM_MAX = 5_000
"""Above this many rows in total, subsets multiply their own rows (the float64 kernel of the
union would need (n_x + n_y)^2 x 8 bytes: 200 MB at 5,000)."""


@dataclass(frozen=True)
class KIDResult:
    mean: float
    std: float
    subset_size: int
    subsets: int


def poly_kernel(a: torch.Tensor, b: torch.Tensor, dim: int) -> torch.Tensor:
    return (a @ b.T / dim + 1.0) ** 3


def _mmd2(k_xx: torch.Tensor, k_yy: torch.Tensor, k_xy: torch.Tensor) -> float:
    m = k_xx.shape[0]
    within = (k_xx.sum() - k_xx.diagonal().sum()) + (k_yy.sum() - k_yy.diagonal().sum())
    return float(within / (m * (m - 1)) - 2 * k_xy.sum() / (m * m))


def subset_indices(
    n_x: int, n_y: int, subset_size: int, subsets: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(subsets, m)`` row indices into each set, m = min(subset_size, n_x, n_y)."""
    m = min(subset_size, n_x, n_y)
    rng = np.random.default_rng(seed)
    ix = np.stack([rng.choice(n_x, m, replace=False) for _ in range(subsets)])
    iy = np.stack([rng.choice(n_y, m, replace=False) for _ in range(subsets)])
    return ix, iy


def kid_from_indices(
    x: np.ndarray | torch.Tensor,
    y: np.ndarray | torch.Tensor,
    ix: np.ndarray,
    iy: np.ndarray,
) -> np.ndarray:
    """Per-subset unbiased MMD^2 (float64) of features ``x`` (N, D) and ``y`` (M, D)."""
    x = torch.as_tensor(np.asarray(x), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(y), dtype=torch.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(
            f"KID needs (N, D) and (M, D) features, got {tuple(x.shape)}, {tuple(y.shape)}"
        )
    if ix.shape[1] < 2:
        raise ValueError("KID needs at least 2 samples in each set")
    d, n_x = x.shape[1], x.shape[0]
    values = []
    if n_x + y.shape[0] <= FULL_GRAM_MAX:
        both = torch.cat([x, y])
        gram = poly_kernel(both, both, d)
        for a, b in zip(ix, iy, strict=True):
            ta, tb = torch.as_tensor(a), torch.as_tensor(b) + n_x
            values.append(_mmd2(gram[ta][:, ta], gram[tb][:, tb], gram[ta][:, tb]))
    else:
        for a, b in zip(ix, iy, strict=True):
            xa, yb = x[torch.as_tensor(a)], y[torch.as_tensor(b)]
            values.append(
                _mmd2(poly_kernel(xa, xa, d), poly_kernel(yb, yb, d), poly_kernel(xa, yb, d))
            )
    return np.asarray(values)


def kernel_inception_distance(
    x: np.ndarray | torch.Tensor,
    y: np.ndarray | torch.Tensor,
    subset_size: int = 1000,
    subsets: int = 100,
    seed: int = 0,
) -> KIDResult:
    """KID of two feature sets: mean and std of the unbiased MMD^2 over random subsets."""
    ix, iy = subset_indices(len(x), len(y), subset_size, subsets, seed)
    values = kid_from_indices(x, y, ix, iy)
    return KIDResult(float(values.mean()), float(values.std()), ix.shape[1], subsets)
