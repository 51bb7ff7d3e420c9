"""Frechet distance between two Gaussians, computed exactly as pytorch-fid does.

    d^2 = ||mu1 - mu2||^2 + Tr(S1) + Tr(S2) - 2 Tr(sqrtm(S1 S2))

The matrix square root is scipy.linalg.sqrtm; if it is not finite, eps is added to both
diagonals and it is retried; a complex result is accepted (real part kept) only if the imaginary
part of its diagonal stays within 1e-3.
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy
from scipy import linalg

# scipy >= 1.16 deprecates sqrtm's `disp` argument (and its error-estimate return value).
_SCIPY_VERSION = tuple(int(p) for p in scipy.__version__.split(".")[:2] if p.isdigit())
_SQRTM_TAKES_DISP = _SCIPY_VERSION < (1, 16)


def _sqrtm(a: np.ndarray) -> np.ndarray:
    """scipy.linalg.sqrtm without its printed / warned accuracy notes (pytorch-fid: disp=False).

    Products of sample covariances are often singular (fewer samples than dimensions): scipy then
    warns on every call, while the non-finite / imaginary checks below are what decide.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        if _SQRTM_TAKES_DISP:
            return linalg.sqrtm(a, disp=False)[0]
        return linalg.sqrtm(a)


def frechet_distance(
    mu1: np.ndarray,
    sigma1: np.ndarray,
    mu2: np.ndarray,
    sigma2: np.ndarray,
    eps: float = 1e-6,
) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2) (pytorch-fid's algorithm)."""
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1 = np.atleast_2d(sigma1).astype(np.float64)
    sigma2 = np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape:
        raise ValueError(f"mean vectors have different shapes: {mu1.shape} vs {mu2.shape}")
    if sigma1.shape != sigma2.shape:
        raise ValueError(f"covariances have different shapes: {sigma1.shape} vs {sigma2.shape}")

    diff = mu1 - mu2

    # The product might be almost singular.
    covmean = _sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        warnings.warn(
            f"Frechet distance: singular product; adding {eps} to the covariance diagonals",
            RuntimeWarning,
            stacklevel=2,
        )
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = _sqrtm((sigma1 + offset) @ (sigma2 + offset))

    # Numerical error might give a slight imaginary component.
    if np.iscomplexobj(covmean):
        max_imag = float(np.max(np.abs(np.diagonal(covmean).imag)))
        if max_imag > 1e-3:
            raise ValueError(f"sqrtm(sigma1 @ sigma2) has an imaginary component {max_imag:.3g}")
        covmean = covmean.real

    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))
