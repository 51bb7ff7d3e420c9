"""Text-to-motion metrics as MDM computes them (``eval/eval_humanml.py`` + T2M's ``metrics.py``).

On evaluator embeddings (text (N, D), motion (N, D)):
- R-Precision top-1/2/3 and MM-Dist: per batch of 32 (in order; a last partial batch is dropped,
  as MDM's generated-motion loader does), the text-to-motion Euclidean distance matrix; the
  true motion's rank among the 32 counts as a hit for top-k; MM-Dist sums the matrix trace.
  Both sums are divided by the number of samples (MDM's eval loop, not calculate_R_precision).
- FID: ``frechet_distance(gt_mu, gt_cov, mu, cov)`` (float64 mean, np.cov), pytorch-fid's algorithm.
- Diversity: mean distance of ``times`` (300) random pairs; MultiModality: per prompt, mean
  distance of ``times`` (10) random pairs among its generations. MDM draws the pairs with the
  unseeded global ``np.random.choice``; here they come from ``np.random.RandomState(seed)``
  (the same draws as ``np.random.seed(seed)`` followed by MDM's calls).
- Replications: mean and 1.96 · std / sqrt(reps) (numpy's population std).
"""

from __future__ import annotations

import numpy as np

from layersync.metrics import frechet_distance


def euclidean_distance_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N1, N2) distances via the expanded square (as T2M's metrics.py)."""
    d = -2 * a @ b.T + (a**2).sum(1, keepdims=True) + (b**2).sum(1)
    return np.sqrt(d)


def top_k_hits(dist: np.ndarray, k: int = 3) -> np.ndarray:
    """(k,) counts of rows whose own column is among the k nearest (argsort order)."""
    order = np.argsort(dist, axis=1)
    hit = order == np.arange(len(dist))[:, None]
    return np.cumsum(hit[:, :k], axis=1).astype(bool).sum(0)


def matching(
    text: np.ndarray, motion: np.ndarray, batch_size: int = 32, k: int = 3
) -> tuple[float, np.ndarray]:
    """MM-Dist and R-Precision top-1..k over consecutive batches (a partial last batch dropped)."""
    if text.shape != motion.shape:
        raise ValueError(
            f"text and motion embeddings differ in shape: {text.shape} vs {motion.shape}"
        )
    n = (len(text) // batch_size) * batch_size
    if n == 0:
        raise ValueError(
            f"R-Precision needs at least one full batch of {batch_size}, got {len(text)} samples"
        )
    trace, hits = 0.0, np.zeros(k)
    for i in range(0, n, batch_size):
        dist = euclidean_distance_matrix(text[i : i + batch_size], motion[i : i + batch_size])
        trace += dist.trace()
        hits += top_k_hits(dist, k)
    return trace / n, hits / n


def fid(gt: np.ndarray, generated: np.ndarray) -> float:
    """Frechet distance between the Gaussians of ground-truth and generated embeddings."""
    gt, generated = np.asarray(gt, np.float64), np.asarray(generated, np.float64)
    return frechet_distance(
        gt.mean(0), np.cov(gt, rowvar=False), generated.mean(0), np.cov(generated, rowvar=False)
    )


def diversity(act: np.ndarray, times: int = 300, seed: int = 0) -> float:
    if len(act) <= times:
        raise ValueError(
            f"diversity over {times} pairs needs more than {times} samples, got {len(act)}"
        )
    rng = np.random.RandomState(seed)
    first = rng.choice(len(act), times, replace=False)
    second = rng.choice(len(act), times, replace=False)
    return float(np.linalg.norm(act[first] - act[second], axis=1).mean())


def multimodality(act: np.ndarray, times: int = 10, seed: int = 0) -> float:
    """``act`` (prompts, generations per prompt, D)."""
    if act.ndim != 3 or act.shape[1] <= times:
        raise ValueError(
            f"multimodality needs (prompts, > {times} generations, D), got {act.shape}"
        )
    rng = np.random.RandomState(seed)
    first = rng.choice(act.shape[1], times, replace=False)
    second = rng.choice(act.shape[1], times, replace=False)
    return float(np.linalg.norm(act[:, first] - act[:, second], axis=2).mean())


def mean_interval(values) -> tuple[float, float]:
    """Mean and 95% half-interval 1.96 · std / sqrt(reps) over replications."""
    v = np.asarray(values, dtype=np.float64)
    return float(v.mean()), float(1.96 * v.std() / np.sqrt(len(v)))
