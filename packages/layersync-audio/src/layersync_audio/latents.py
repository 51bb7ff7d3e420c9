"""Training on cached VAE latents (``data.source=latents``) and decoding latent samples.

Items of :class:`AudioLatents`: ``(z (latent channels, data.frames), condition)``. Per-item
draws, all from the item's seeded generator (``dataset.generator(i)``: exact resume, any worker
count): first the crop start, ``torch.randint(window - frames + 1, (1,))`` (drawn even when the
window is the crop), then, with ``data.latent=sample``, ``eps`` of the crop's shape;
``z = (mean + std * eps) * scale_factor`` (``mean * scale_factor`` with ``data.latent=mean``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from layersync.distributed import resolve_device
from layersync.latents import LatentDataset

__all__ = [
    "AudioLatents",
    "decode",
    "latent_dataset",
    "latent_spec",
    "log_mels",
    "reference_batches",
    "reference_key",
]


class AudioLatents(LatentDataset):
    """Random ``frames``-long crops of the windows of a cache written by ``layersync audio
    encode``; ``frames=None`` takes whole windows."""

    def __init__(
        self,
        path: str | os.PathLike,
        frames: int | None = None,
        *,
        sample: bool = True,
        seed: int | None = None,
    ) -> None:
        from layersync.latents import LatentCache

        cache = LatentCache(path)  # read the meta first: one clear error for a foreign cache
        meta_file = cache.path / "meta.json"
        cond = cache.meta.get("condition")
        if cache.meta.get("modality") != "audio" or cond not in cache.fields:
            raise ValueError(
                f"{meta_file}: not an audio latent cache (write one with layersync audio encode)"
            )
        super().__init__(path, [cond], flip=False, sample=sample, seed=seed)
        self.channels, self.window = self.latent_shape
        self.frames = self.window if frames is None else int(frames)
        if self.frames > self.window:
            raise ValueError(
                f"data.frames = {self.frames} exceeds the {self.window}-frame windows of "
                f"{self.path} (re-encode with a longer --seconds)"
            )
        self.condition = "tags" if cond == "tags" else "class"
        self.targets = self.columns[cond]
        self.vocabulary = self.meta.get("vocabulary")
        self.classes = self.meta.get("classes")
        self.num_classes = len(self.classes) if self.classes else 0
        self.num_tags = len(self.vocabulary) if self.vocabulary else 0
        self.sample_rate = int(self.meta["sample_rate"])
        self.hop_length = int(self.meta["hop_length"])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        index = range(len(self))[index]
        g = self.generator(index)
        start = int(torch.randint(self.window - self.frames + 1, (1,), generator=g))
        mean, std = self.cache.moments(index)
        mean = mean[:, start : start + self.frames]
        std = std[:, start : start + self.frames]
        z = mean + std * torch.randn(mean.shape, generator=g) if self.sample else mean
        return z * self.scale_factor, self.targets[index].clone()

    def target(self, index: int) -> torch.Tensor:
        return self.targets[index].clone()

    def __repr__(self) -> str:
        return (
            f"AudioLatents({str(self.path)!r}, n={len(self)}, latent={self.channels}x"
            f"{self.window}, crop={self.frames}, {self.condition})"
        )


# --------------------------------------------------------------------------------------------
# From the run config
# --------------------------------------------------------------------------------------------


def latent_dataset(dc: Any) -> AudioLatents:
    """The (train and eval) dataset of ``data.source=latents``."""
    if not dc.path:
        raise ValueError("data.path is required for data.source = 'latents' (a latent cache)")
    return AudioLatents(dc.path, dc.frames, sample=dc.latent == "sample")


@lru_cache(maxsize=4)
def _spec(path: str, frames: int | None) -> tuple[int, int, str, int, int, int]:
    ds = AudioLatents(path, frames)
    count = ds.num_tags if ds.condition == "tags" else ds.num_classes
    return ds.frames, ds.num_classes, ds.condition, count, ds.channels, ds.sample_rate


def latent_spec(dc: Any) -> tuple[int, int, str, int, int, int]:
    """(frames, classes, condition kind, classes or tags, latent channels, audio rate)."""
    if not dc.path:
        raise ValueError("data.path is required for data.source = 'latents' (a latent cache)")
    return _spec(str(dc.path), dc.frames)


@lru_cache(maxsize=4)
def _scale(path: str) -> float:
    from layersync.latents import LatentCache

    return LatentCache(path).scale_factor


@lru_cache(maxsize=2)
def _vae(path: str, device: str) -> Any:
    from layersync_audio.vae import load_vae

    return load_vae(path, key="vae.path").to(device)


@torch.no_grad()
def decode(latents: torch.Tensor, cfg: Any) -> torch.Tensor:
    """Model-space latents ``(n, C, frames)`` -> waveforms in [-1, 1]: ``(n, N)`` for a mono
    VAE, ``(n, channels, N)`` otherwise."""
    if not cfg.vae.path:
        raise ValueError("decoding latent samples needs vae.path (a local AutoencoderOobleck)")
    scale = _scale(str(cfg.data.path))
    vae = _vae(cfg.vae.path, str(latents.device))
    waves = torch.cat([vae.decode(z / scale).sample for z in latents.float().split(4)])
    waves = waves.clamp(-1, 1).cpu()
    return waves[:, 0] if waves.shape[1] == 1 else waves


def log_mels(waves: torch.Tensor, rate: int, mc: Any) -> torch.Tensor:
    """Unstandardised log-mels of decoded mono ``waves`` for the spectrogram grid (``mel``
    settings; the FFT shortened for clips shorter than ``n_fft``)."""
    from layersync_audio.mel import LogMel

    n_fft = min(mc.n_fft, waves.shape[-1])
    hop = min(mc.hop_length, max(1, n_fft // 4))
    return LogMel(rate, n_fft, hop, mc.n_mels, floor=mc.floor).log_mel(waves)


def reference_key(cfg: Any) -> dict[str, Any]:
    """What the FAD reference of latent data depends on besides the config: the VAE and the
    cache (a cache re-encoded at the same path gets new statistics)."""
    meta = Path(cfg.data.path) / "meta.json"
    return {"vae": str(cfg.vae.path), "cache_mtime_ns": meta.stat().st_mtime_ns}


def reference_batches(cfg: Any, count: int | None, batch_size: int) -> Iterator[torch.Tensor]:
    """The FAD reference of latent data: mono VAE reconstructions ``(B, N)`` of the posterior
    means of seeded crops (seed 0) of ``count`` items spread evenly over the cache (None: all;
    both splits are the one cache)."""
    ds = AudioLatents(cfg.data.path, cfg.data.frames, sample=False, seed=0)
    n = len(ds) if count is None else min(len(ds), count)
    index = torch.linspace(0, len(ds) - 1, n).round().long().tolist()  # spread over the tracks
    device = resolve_device("auto")
    for s in range(0, n, batch_size):
        z = torch.stack([ds[i][0] for i in index[s : s + batch_size]])
        waves = decode(z.to(device), cfg)
        yield waves.mean(1) if waves.ndim == 3 else waves
