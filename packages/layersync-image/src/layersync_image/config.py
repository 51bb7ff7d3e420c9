"""The image plugin's config sections and its presets (``presets/*.toml`` in this package).

Sections: ``data``, ``model``, ``transport``, ``sampler``, ``metric``, ``vae``. Each preset file is a
partial run config in the same format as ``--config`` files and ``layersync config show``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from layersync.config import load_presets


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


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


class TransportConfig(Section):
    path: Literal["linear", "gvp", "vp"] = "linear"
    prediction: Literal["velocity", "noise", "score"] = "velocity"
    loss_weight: Literal["velocity", "likelihood"] | None = None
    train_eps: float | None = None
    sample_eps: float | None = None


class SamplerConfig(Section):
    mode: Literal["ode", "sde"] = "ode"
    method: Literal["euler", "heun"] = "heun"
    steps: int = Field(50, gt=1)
    cfg_scale: float = Field(1.0, ge=1.0)
    cfg_interval: tuple[float, float] | None = Field(
        None, description="guide only for t in [low, high] (t=1 is data)"
    )
    guided_channels: int | None = Field(
        None, gt=0, description="guide only the first k channels (official SiT/DiT: 3 of 4)"
    )
    last_step: Literal["Mean", "Tweedie", "Euler"] | None = "Mean"
    last_step_size: float = 0.04
    diffusion_form: str = "sigma"
    diffusion_norm: float = 1.0
    batch_size: int = Field(64, gt=0)


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
