"""The audio plugin's config sections and its presets (``presets/*.toml`` in this package).

Sections: ``data``, ``mel``, ``model``, ``transport``, ``sampler``, ``metric``, ``vae``. Each
preset file is a partial run config in the same format as ``--config`` files and
``layersync config show``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from layersync.config import Section, load_presets
from layersync.flow.config import SamplerConfig, TransportConfig


class DataConfig(Section):
    source: Literal["embedded", "folder", "jamendo", "latents"] = "embedded"
    path: str | None = Field(
        None,
        description="folder: clips (class sub-folders, or train/ + eval/); jamendo: root; "
        "latents: the cache of `layersync audio encode`",
    )
    tsv: str | None = Field(None, description="jamendo: the train split's autotagging*.tsv")
    eval_tsv: str | None = Field(
        None, description="jamendo: the eval split's TSV (default: tsv with train -> validation)"
    )
    tag_categories: list[str] = Field(
        ["genre", "instrument"], description="jamendo: genre, instrument and/or mood/theme"
    )
    seconds: float = Field(2.0, gt=0, description="clip length (random crops of longer files)")
    sample_rate: int = Field(16000, gt=0)
    per_family: int = Field(64, gt=0, description="embedded: train clips per family")
    eval_per_family: int = Field(16, gt=0, description="embedded: eval clips per family")
    data_seed: int = Field(0, ge=0, description="embedded: the seed the clips are rendered from")
    on_error: Literal["error", "skip"] = "error"
    frames: int | None = Field(
        None, gt=0, description="latents: random crops of this many frames (None = whole windows)"
    )
    latent: Literal["sample", "mean"] = Field(
        "sample", description="latents: z = mean + std * noise (sample) or the posterior mean"
    )


class MelConfig(Section):
    n_fft: int = Field(1024, gt=0)
    hop_length: int = Field(250, gt=0)
    n_mels: int = Field(64, gt=0)
    floor: float = Field(1e-5, gt=0, description="log(max(mel, floor))")
    griffin_lim_iters: int = Field(32, gt=0)
    stats_items: int = Field(512, gt=0, description="train clips the per-bin mean/std use")


class ModelConfig(Section):
    arch: str = Field("custom", description="SiT-S/2 ... SiT-XL/1 (size/patch), or 'custom'")
    depth: int | None = Field(None, gt=0)
    hidden_size: int | None = Field(None, gt=0)
    num_heads: int | None = Field(None, gt=0)
    patch_size: int | None = Field(None, gt=0)
    mlp_ratio: float = 4.0
    class_dropout_prob: float = Field(0.1, ge=0, lt=1)
    learn_sigma: bool = False


class MetricConfig(Section):
    fad: Literal["auto", "on", "off"] = Field(
        "auto", description="auto = compute FAD when the embedding weights are installed"
    )
    embedding: str = Field("musicnn-msd", description="the FAD embedding network")
    weights: str | None = Field(None, description="local weights; None = the installed package")
    num_samples: int = Field(128, gt=1)
    reference_split: Literal["train", "eval"] = "eval"
    reference_count: int | None = Field(None, gt=1, description="None = the whole split")
    batch_size: int = Field(64, gt=0)


class VAEConfig(Section):
    path: str | None = Field(
        None, description="local diffusers AutoencoderOobleck folder (decodes latent samples)"
    )


class AudioConfig(Section):
    data: DataConfig = DataConfig()
    mel: MelConfig = MelConfig()
    model: ModelConfig = ModelConfig()
    transport: TransportConfig = TransportConfig()
    sampler: SamplerConfig = SamplerConfig()
    metric: MetricConfig = MetricConfig()
    vae: VAEConfig = VAEConfig()


PRESETS = load_presets("layersync_audio", "presets")
"""demo (CPU, the embedded 8-family phrases) and the paper's MTG-Jamendo setting."""
