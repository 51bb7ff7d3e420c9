"""Shared fixtures of the image plugin's tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from layersync.testing import save_tiny_autoencoder_kl


def make_tiny_vae(path: Path, **overrides: object) -> Path:
    """The core's tiny random AutoencoderKL saved to ``path``; skips without diffusers."""
    pytest.importorskip("diffusers")
    return save_tiny_autoencoder_kl(path, **overrides)


@pytest.fixture(scope="session")
def tiny_vae():
    """Factory ``(path, **overrides) -> path`` of :func:`make_tiny_vae` (import-free use)."""
    return make_tiny_vae
