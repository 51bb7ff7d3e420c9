"""Frame-wise VAE: a diffusers ``AutoencoderKL`` from a local folder, applied to every frame.

A video latent is the stack of its frames' image latents: frames ``(T, C, H, W)`` are encoded as
a batch of images and stacked into ``(c, T, h, w)`` (``h = H / 2 ** (len(block_out_channels) -
1)``: 8 for SD-VAE); decoding runs the other way, frame by frame. diffusers is the optional
``vae`` extra: ``pip install 'layersync-video[vae]'``.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from layersync.assets import diffusers_folder, load_diffusers

INSTALL = "pip install 'layersync-video[vae]'"

# -----------------------------------------------------------------------------
# Finding and loading the VAE


def vae_folder(path: str | os.PathLike | None, key: str = "vae.path") -> Path:
    """The AutoencoderKL folder at ``path`` (or its ``vae/`` sub-folder, as in a pipeline
    folder), checked without loading it: an AssetError naming ``key`` and the path otherwise."""
    return diffusers_folder(path, "AutoencoderKL", key=key, install=INSTALL)[0]


def vae_config(path: str | os.PathLike | None, key: str = "vae.path") -> dict[str, Any]:
    """The checked folder's config.json (latent_channels, block_out_channels, scaling_factor)."""
    return diffusers_folder(path, "AutoencoderKL", key=key, install=INSTALL)[1]


def downsampling(config: dict[str, Any]) -> int:
    """Pixels per latent pixel along each side: 2 per down block after the first."""
    return 2 ** (len(config.get("block_out_channels", (64,))) - 1)


def load_vae(path: str | os.PathLike, key: str = "vae.path") -> Any:
    """The ``AutoencoderKL`` in ``path`` (local files only), in eval mode."""
    return load_diffusers(path, "AutoencoderKL", key=key, install=INSTALL)


@lru_cache(maxsize=2)
def cached_vae(path: str, device: str) -> Any:
    """One loaded VAE per (folder, device), for the repeated decodes of sampling."""
    return load_vae(path).to(device)


# -----------------------------------------------------------------------------
# Frame-wise encoding and decoding


@torch.no_grad()
def encode_frames(
    vae: Any, clip: torch.Tensor, batch_size: int = 64
) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior (mean, std) ``(c, T, h, w)`` of a clip ``(C, T, H, W)`` in [-1, 1], encoded as
    a batch of ``T`` images (``batch_size`` frames per forward; grey repeated for an RGB VAE)."""
    frames = clip.transpose(0, 1)  # T C H W
    channels = vae.config.in_channels
    if frames.shape[1] == 1 and channels == 3:
        frames = frames.expand(-1, 3, -1, -1)
    if frames.shape[1] != channels:
        raise ValueError(
            f"the VAE takes {channels}-channel frames, the video has {frames.shape[1]}"
        )
    means, stds = [], []
    for chunk in frames.split(batch_size):
        dist = vae.encode(chunk.float()).latent_dist
        means.append(dist.mean)
        stds.append(dist.std)
    return torch.cat(means).transpose(0, 1), torch.cat(stds).transpose(0, 1)


@torch.no_grad()
def decode_frames(vae: Any, latents: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    """Unscaled latents ``(B, c, T, h, w)`` -> clips ``(B, C, T, H, W)`` in [-1, 1], one frame
    per image decode (``batch_size`` frames per forward)."""
    b, c, t, h, w = latents.shape
    frames = latents.transpose(1, 2).reshape(b * t, c, h, w)
    out = torch.cat([vae.decode(chunk.float()).sample for chunk in frames.split(batch_size)])
    out = out.reshape(b, t, *out.shape[1:]).transpose(1, 2)
    return out.clamp(-1, 1)
