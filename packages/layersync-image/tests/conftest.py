"""Shared fixtures of the image plugin's tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


def make_tiny_vae(path: Path, **overrides: object) -> Path:
    """A randomly initialised, tiny diffusers AutoencoderKL saved to ``path`` (4 latent
    channels, downsampling 2x); skips the test when diffusers is not installed."""
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    kwargs = dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=16,
    )
    diffusers.AutoencoderKL(**{**kwargs, **overrides}).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_vae():
    """Factory ``(path, **overrides) -> path`` of :func:`make_tiny_vae` (import-free use)."""
    return make_tiny_vae
