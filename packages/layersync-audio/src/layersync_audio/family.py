"""Does class conditioning work? Nearest-centroid accuracy in the FAD embedding space.

Each clip is one vector: the mean of its frame embeddings (the frames FAD uses). The centroid
of a class is the mean vector of the real reference clips of that class. A generated clip
counts as right when the centroid nearest to it (Euclidean) is its conditioning class's.
``family_accuracy`` is that fraction over the class-balanced samples of an evaluation (chance:
1 / classes). Its yardstick, ``family_accuracy_real``, classifies every real reference clip
against centroids of the OTHER reference clips (leave-one-out).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from layersync_audio.fad import resample


@torch.no_grad()
def clip_embeddings(embed: Any, waves: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    """Per clip, its frame embeddings ``(frames, dim)`` (float64, CPU)."""
    return [embed([w.float().cpu()]).double().cpu() for w in waves]


def centroids(vectors: torch.Tensor, labels: torch.Tensor, classes: int) -> torch.Tensor:
    """``(classes, dim)`` class means of ``vectors`` (N, dim); a class with no vector is NaN."""
    out = torch.full((classes, vectors.shape[1]), float("nan"), dtype=vectors.dtype)
    for k in range(classes):
        if (labels == k).any():
            out[k] = vectors[labels == k].mean(0)
    return out


def nearest(vectors: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Index of the nearest centre (Euclidean) of each vector; NaN centres never win."""
    d = torch.cdist(vectors, centres.nan_to_num(0.0))
    d[:, centres.isnan().any(1)] = float("inf")
    return d.argmin(1)


def accuracy(vectors: torch.Tensor, labels: torch.Tensor, centres: torch.Tensor) -> float:
    return float((nearest(vectors, centres) == labels).double().mean())


def leave_one_out_accuracy(vectors: torch.Tensor, labels: torch.Tensor, classes: int) -> float:
    """Each vector against the centroids of all the others (its own class without it)."""
    sums = torch.zeros(classes, vectors.shape[1], dtype=vectors.dtype)
    counts = torch.zeros(classes, dtype=vectors.dtype)
    sums.index_add_(0, labels, vectors)
    counts.index_add_(0, labels, torch.ones_like(labels, dtype=vectors.dtype))
    right = 0
    for v, y in zip(vectors, labels.tolist(), strict=True):
        s, c = sums.clone(), counts.clone()
        s[y] -= v
        c[y] -= 1
        centres = torch.where(c[:, None] > 0, s / c.clamp(min=1)[:, None], float("nan"))
        right += int(nearest(v[None], centres)[0] == y)
    return right / len(vectors)


def reference_vectors(
    embed: Any, clips: Any, count: int | None, sample_rate: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(vectors (N, dim), labels (N,)) of the first ``count`` (None: all) real clips of a
    class-labelled clip dataset (items ``(wave, label)`` at ``sample_rate``)."""
    n = len(clips) if count is None else min(len(clips), count)
    items = [clips[i] for i in range(n)]
    waves = resample(torch.stack([w for w, _ in items]), sample_rate, embed.sample_rate)
    vectors = torch.stack([f.mean(0) for f in clip_embeddings(embed, waves)])
    return vectors, torch.tensor([int(y) for _, y in items])


def family_scores(
    vectors: torch.Tensor,
    labels: torch.Tensor,
    reference: tuple[torch.Tensor, torch.Tensor],
    classes: int,
) -> dict[str, float]:
    """``family_accuracy`` of generated clip vectors, ``family_accuracy_real`` of the reference."""
    ref, ref_labels = reference
    return {
        "family_accuracy": accuracy(vectors, labels, centroids(ref, ref_labels, classes)),
        "family_accuracy_real": leave_one_out_accuracy(ref, ref_labels, classes),
    }
