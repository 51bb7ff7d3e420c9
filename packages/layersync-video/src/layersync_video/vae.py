"""Frame-wise VAE: a diffusers ``AutoencoderKL`` from a local folder, applied to every frame.

A video latent is the stack of its frames' image latents: frames ``(T, C, H, W)`` are encoded as
a batch of images and stacked into ``(c, T, h, w)`` (``h = H / 2 ** (len(block_out_channels) -
1)``: 8 for SD-VAE); decoding runs the other way, frame by frame. diffusers is the optional
``vae`` extra: ``pip install 'layersync-video[vae]'``.
"""

from __future__ import annotations

import importlib.util
import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from layersync.assets import AssetError

INSTALL = "pip install 'layersync-video[vae]'"
WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")

# -----------------------------------------------------------------------------
# Finding and loading the VAE


def vae_folder(path: str | os.PathLike, key: str = "vae.path") -> Path:
    """The AutoencoderKL folder at ``path`` (or its ``vae/`` sub-folder, as in a pipeline
    folder), checked without loading it: an AssetError naming ``key`` and the path otherwise."""
    path = Path(path)
    if not path.is_dir():
        raise AssetError(f"{key} = {path}: no such folder (a local diffusers AutoencoderKL)")
    folder = path / "vae" if (path / "vae" / "config.json").is_file() else path
    config = folder / "config.json"
    if not config.is_file():
        raise AssetError(
            f"{key} = {path}: not a diffusers AutoencoderKL folder (no config.json; write one "
            "with AutoencoderKL.save_pretrained)"
        )
    try:
        kind = json.loads(config.read_text()).get("_class_name")
    except (OSError, ValueError, AttributeError) as e:
        raise AssetError(f"{key} = {path}: unreadable config.json ({e})") from None
    if kind != "AutoencoderKL":
        raise AssetError(f"{key} = {path}: config.json describes {kind!r}, not an AutoencoderKL")
    if not any((folder / w).is_file() for w in WEIGHTS):
        raise AssetError(f"{key} = {path}: no weights ({' or '.join(WEIGHTS)})")
    if importlib.util.find_spec("diffusers") is None:
        raise AssetError(f"{key}: the VAE needs diffusers: {INSTALL}")
    return folder


def vae_config(path: str | os.PathLike, key: str = "vae.path") -> dict[str, Any]:
    """The checked folder's config.json (latent_channels, block_out_channels, scaling_factor)."""
    return json.loads((vae_folder(path, key) / "config.json").read_text())


def downsampling(config: dict[str, Any]) -> int:
    """Pixels per latent pixel along each side: 2 per down block after the first."""
    return 2 ** (len(config.get("block_out_channels", (64,))) - 1)


def load_vae(path: str | os.PathLike, key: str = "vae.path") -> Any:
    """The ``AutoencoderKL`` in ``path`` (local files only), in eval mode."""
    folder = vae_folder(path, key)
    from diffusers import AutoencoderKL

    lazy_init = importlib.util.find_spec("accelerate") is not None  # else diffusers warns
    try:
        vae = AutoencoderKL.from_pretrained(
            folder, local_files_only=True, low_cpu_mem_usage=lazy_init
        )
    except (OSError, ValueError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise AssetError(f"{key} = {path}: cannot load AutoencoderKL ({first})") from None
    return vae.eval()


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
