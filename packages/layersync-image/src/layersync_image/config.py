"""The image plugin's config sections and its presets (``presets/*.toml`` in this package).

Sections: ``data``, ``model``, ``transport``, ``sampler``, ``metric``, ``vae``. Each preset file is a
partial run config in the same format as ``--config`` files and ``layersync config show``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from layersync.config import Section, load_presets
from layersync.flow.config import SamplerConfig, TransportConfig


class DataConfig(Section):
    source: Literal["digits", "fashion-mnist", "mnist", "folder", "array", "latents"] = "digits"
    path: str | None = Field(
        None, description="folder (folder/mnist/fashion-mnist), .npz/.npy file, or latent cache"
    )
    image_size: int | None = Field(None, gt=0, description="None = the source's native size")
    hflip: bool = Field(False, description="random horizontal flips (ADM: on for ImageNet)")
    on_error: Literal["raise", "skip"] = "raise"


class ModelConfig(Section):
    arch: str = Field("SiT-S/2", description="a SiT preset (SiT-XL/2 ...) or 'custom'")
    depth: int | None = Field(None, gt=0)
    hidden_size: int | None = Field(None, gt=0)
    num_heads: int | None = Field(None, gt=0)
    patch_size: int | None = Field(None, gt=0)
    mlp_ratio: float = 4.0
    class_dropout_prob: float = Field(0.1, ge=0, lt=1)
    learn_sigma: bool = True
    init_checkpoint: str | None = Field(
        None, description="start from an official SiT/DiT/LayerSync .pt or .safetensors"
    )


class MetricConfig(Section):
    fid: Literal["auto", "on", "off"] = Field(
        "auto", description="auto = compute FID when Inception weights are installed"
    )
    num_samples: int = Field(10_000, gt=1)
    reference: str | None = Field(
        None, description="reference .npz: mu/sigma stats or ADM images (arr_0); None = the data"
    )
    reference_split: Literal["train", "eval"] = "train"
    reference_count: int | None = Field(None, gt=1, description="None = the whole split")
    inception_weights: str | None = Field(None, description="pytorch-fid .pth; None = offline")
    batch_size: int = Field(50, gt=0)


class VAEConfig(Section):
    path: str | None = Field(None, description="local diffusers AutoencoderKL folder (latents)")


class ImageConfig(Section):
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    transport: TransportConfig = TransportConfig()
    sampler: SamplerConfig = SamplerConfig()
    metric: MetricConfig = MetricConfig()
    vae: VAEConfig = VAEConfig()


PRESETS = load_presets("layersync_image", "presets")
"""demo (CPU, embedded 8x8 digits), fashion-mnist (CPU, 28x28) and the paper's ImageNet-256 runs."""
