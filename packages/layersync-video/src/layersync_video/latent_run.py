"""Latent data in a run (``data.source = latents``): the cache per split, the model's input, the
decoding of samples, the assets checked at start, and FVD's real clips.

``data.path`` is what ``layersync video encode --out`` wrote (``train/`` + ``eval/``, or one
cache for both splits); ``vae.path`` the AutoencoderKL that encoded it (samples decode through
it, frame by frame). The cache fixes the pixels: ``data.size`` and ``data.stride`` must be the
``--size`` / ``--stride`` it was encoded at. FVD compares with the source videos recorded in
the eval cache's meta.json, never with VAE reconstructions.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from layersync.assets import AssetError
from layersync.config import ConfigError
from layersync.latents import LatentCache
from layersync_video.latents import LatentVideoDataset, cache_path, source_dataset

__all__ = [
    "check_latent_assets",
    "decode_latents",
    "encoded_from",
    "latent_dataset",
    "latent_reference",
    "latent_spec",
]


def _path(cfg: Any) -> str:
    if not cfg.data.path:
        raise ConfigError("data.path is required for data.source = 'latents'")
    return cfg.data.path


# -----------------------------------------------------------------------------
# Data and model input


def latent_dataset(cfg: Any, split: str) -> LatentVideoDataset:
    """The latent cache of ``split``; a ``data.size`` / ``data.stride`` other than the cache's
    is a ConfigError naming both."""
    dc = cfg.data
    path = cache_path(_path(cfg), split)
    hflip = dc.hflip and split == "train"
    ds = LatentVideoDataset(path, dc.frames, flip=hflip, seed=cfg.run.seed)
    for key in ("size", "stride"):
        encoded = ds.source.get(key)
        if encoded is not None and getattr(dc, key) != encoded:
            raise ConfigError(
                f"data.{key} = {getattr(dc, key)}: the latent cache {path} was encoded at "
                f"--{key} {encoded} (set data.{key}={encoded})"
            )
    return ds


def latent_spec(cfg: Any) -> tuple[int, int, int]:
    """(latent channels, latent frame size, classes) of the training cache (meta.json only)."""
    return _spec(_path(cfg))


@lru_cache(maxsize=4)
def _spec(path: str) -> tuple[int, int, int]:
    cache = LatentCache(cache_path(path, "train"))
    if len(cache.latent_shape) != 4:
        raise ValueError(
            f"{cache.path}/meta.json: not a video latent cache (latent_shape "
            f"{list(cache.latent_shape)}, expected [c, frames, h, w])"
        )
    c, _, h, _ = cache.latent_shape
    return c, h, int(cache.meta.get("num_classes") or 1)


# -----------------------------------------------------------------------------
# Decoding samples


def decode_latents(latents: torch.Tensor, cfg: Any) -> torch.Tensor:
    """Scaled latents (B, c, F, h, w) -> clips (B, C, F, H, W) in [-1, 1]: divided by the
    cache's scale factor, decoded frame by frame by ``vae.path``."""
    from layersync_video.vae import cached_vae, decode_frames

    if not cfg.vae.path:
        raise ConfigError("decoding latent samples needs vae.path (a local AutoencoderKL folder)")
    scale = LatentCache(cache_path(_path(cfg), "train")).scale_factor
    vae = cached_vae(str(cfg.vae.path), str(latents.device))
    return decode_frames(vae, latents / scale, cfg.vae.batch_size)


# -----------------------------------------------------------------------------
# Assets and FVD's real clips


def check_latent_assets(cfg: Any, fvd: bool) -> None:
    """``vae.path`` is set and an AutoencoderKL folder with as many latent channels as the cache;
    with ``fvd``, the source videos of the eval cache exist. AssetError naming the path."""
    from layersync_video.vae import vae_config

    if not cfg.vae.path:
        raise AssetError("data.source = 'latents' needs vae.path (the VAE that encoded the cache)")
    channels = vae_config(cfg.vae.path).get("latent_channels")
    cached = latent_spec(cfg)[0]
    if channels is not None and channels != cached:
        raise AssetError(
            f"vae.path = {cfg.vae.path}: {channels} latent channels, but the cache "
            f"{cfg.data.path} holds {cached}-channel latents (use the VAE that encoded it)"
        )
    if fvd:
        latent_reference(cfg)


def encoded_from(cfg: Any) -> dict[str, Any]:
    """The eval cache's ``source`` record (kind, root, size, stride, frames, on_error)."""
    return LatentCache(cache_path(_path(cfg), "eval")).meta.get("source") or {}


def latent_reference(cfg: Any) -> Dataset:
    """FVD's real clips: the videos the eval cache was encoded from, at its size and stride,
    ``data.frames`` frames from a seeded random start (as the pixel eval split gives them)."""
    src = encoded_from(cfg)
    root = Path(src.get("root", ""))
    if not src or not root.exists():
        raise AssetError(
            f"{cache_path(_path(cfg), 'eval')}/meta.json: FVD reads the videos the cache was "
            f"encoded from, and {root} is missing (restore it, or metric.fvd=off)"
        )
    return source_dataset(
        src["kind"],
        root,
        frames=cfg.data.frames,
        stride=src["stride"],
        size=src["size"],
        on_error=src.get("on_error", "error"),
        seed=cfg.run.seed,
        random_start=True,
    )
