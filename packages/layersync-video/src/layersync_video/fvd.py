"""FVD: Fréchet distance between I3D logits of real and generated 16-frame clips.

Protocol ``fvd{n}_16f`` (``fvd2048_16f`` is the StyleGAN-V/paper setting): 16 consecutive frames
of the model's clip (real clips: one per video, the first ``n`` videos of the eval split, start
drawn from a seeded generator; generated clips: from frame 0), quantised to uint8 as a saved video
would be, grey repeated to RGB, each frame resized to 224x224 with **half-pixel-centre bilinear**
interpolation (torch ``F.interpolate(..., align_corners=False)``, no antialias; the TF1 resize of
the original FVD code has no half-pixel centres and moves the logits by up to ~0.8), values
``2 * x / 255 - 1``; features = I3D's 400 Kinetics logits; core Fréchet distance (float64
statistics, scipy sqrtm). FVD depends strongly on ``n``: compare values only at equal ``n``
(the metric's name carries it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from layersync.metrics import FeatureStats, GaussianStats

FVD_FRAMES, FVD_SIZE = 16, 224


def metric_name(n: int) -> str:
    """``fvd{n}_16f``: the protocol with its sample count (FVD values move with n)."""
    return f"fvd{n}_16f"


def to_uint8(clips: torch.Tensor) -> torch.Tensor:
    """Clips (B, C, T, H, W) in [-1, 1] -> uint8, exactly what a saved frame holds."""
    return (127.5 * clips + 128.0).clamp(0, 255).to(torch.uint8)


def preprocess(clips: torch.Tensor) -> torch.Tensor:
    """uint8 (B, C, T, H, W) -> I3D input (B, 3, 16, 224, 224) float32 in [-1, 1]."""
    if clips.dtype != torch.uint8:
        raise ValueError(f"FVD preprocessing expects uint8 clips, got {clips.dtype}")
    if clips.ndim != 5 or clips.shape[1] not in (1, 3):
        raise ValueError(f"FVD expects (B, C, T, H, W) clips with C = 1 or 3, got {clips.shape}")
    b, _, t, h, w = clips.shape
    if t < FVD_FRAMES:
        raise ValueError(f"FVD needs clips of at least {FVD_FRAMES} frames, got {t}")
    x = clips[:, :, :FVD_FRAMES].float().expand(b, 3, FVD_FRAMES, h, w)
    if (h, w) != (FVD_SIZE, FVD_SIZE):
        frames = x.permute(0, 2, 1, 3, 4).reshape(b * FVD_FRAMES, 3, h, w)
        frames = F.interpolate(
            frames, size=(FVD_SIZE, FVD_SIZE), mode="bilinear", align_corners=False
        )
        x = frames.reshape(b, FVD_FRAMES, 3, FVD_SIZE, FVD_SIZE).permute(0, 2, 1, 3, 4)
    return x * (2.0 / 255.0) - 1.0


class I3DFeatures:
    """uint8 clips -> (B, 400) I3D logits, in micro-batches on ``device``."""

    def __init__(self, i3d: nn.Module, batch_size: int = 4) -> None:
        self.i3d, self.batch_size = i3d, batch_size
        self.device = next(i3d.parameters(), torch.empty(0)).device

    @torch.no_grad()
    def __call__(self, clips: torch.Tensor) -> torch.Tensor:
        out = [
            self.i3d(preprocess(chunk).to(self.device)).float().cpu()
            for chunk in clips.split(self.batch_size)
        ]
        return torch.cat(out)


def clip_stats(
    batches: Iterable[torch.Tensor], features: Callable[[torch.Tensor], torch.Tensor]
) -> GaussianStats:
    """Gaussian statistics of the features of uint8 clip batches (B, C, T, H, W)."""
    stats: FeatureStats | None = None
    for clips in batches:
        f = features(clips)
        stats = stats or FeatureStats(f.shape[1])
        stats.update(f)
    if stats is None or stats.n < 2:
        raise ValueError("FVD needs at least 2 clips on each side")
    return stats.finalize()


def dataset_batches(dataset, n: int, batch_size: int) -> Iterable[torch.Tensor]:
    """uint8 batches of the first ``n`` items of a clip dataset ((C, T, H, W) in [-1, 1])."""
    n = min(n, len(dataset))
    for start in range(0, n, batch_size):
        clips = torch.stack([dataset[i][0] for i in range(start, min(n, start + batch_size))])
        yield to_uint8(clips)
