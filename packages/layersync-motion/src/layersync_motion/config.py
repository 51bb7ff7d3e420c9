"""The motion plugin's config sections and its presets (``presets/*.toml`` in this package).

Sections: ``data``, ``model``, ``diffusion``, ``sampler``, ``text``, ``metric``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from layersync.config import load_presets


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(Section):
    source: Literal["embedded", "humanml3d", "kit"] = "embedded"
    path: str | None = Field(None, description="HumanML3D / KIT-ML folder (humanml3d, kit)")
    train_split: str = "train"
    eval_split: str = "test"
    max_len: int = Field(196, gt=0, description="frames after padding (MDM: 196)")
    min_len: int | None = Field(None, gt=0, description="None = 40 (HumanML3D) / 24 (KIT)")


class ModelConfig(Section):
    latent_dim: int = Field(512, gt=0)
    ff_size: int = Field(1024, gt=0)
    num_layers: int = Field(8, gt=0)
    num_heads: int = Field(4, gt=0)
    dropout: float = Field(0.1, ge=0, lt=1)
    cond_mask_prob: float = Field(0.1, ge=0, lt=1, description="text dropped for CFG in training")
    mask_frames: bool = Field(False, description="padding mask in attention (the 2022 MDM: off)")
    weights: str | None = Field(None, description="start from an official MDM model*.pt")


class DiffusionConfig(Section):
    steps: int = Field(1000, gt=1)
    schedule: Literal["linear", "cosine"] = "cosine"
    prediction: Literal["x0", "eps", "v"] = "x0"


class SamplerConfig(Section):
    mode: Literal["ddpm", "ddim"] = "ddpm"
    ddim_steps: int = Field(50, gt=0)
    eta: float = Field(0.0, ge=0)
    cfg_scale: float = Field(2.5, ge=1.0)
    batch_size: int = Field(64, gt=0)
    captions: list[str] = Field(
        default_factory=list,
        description="captions of the sample grids and `layersync sample`, cycled (empty: "
        "captions and lengths drawn from the eval split)",
    )
    seconds: float | None = Field(
        None, gt=0, description="length of the sampler.captions motions (None: data.max_len)"
    )


class TextConfig(Section):
    encoder: Literal["minilm", "clip"] = Field(
        "minilm",
        description="minilm: offline, 384-d; clip: ViT-B/32 as MDM (512-d, text.clip_path)",
    )
    clip_path: str | None = Field(
        None, description="OpenAI's ViT-B-32.pt or a ViT-B/32 state dict (text.encoder=clip)"
    )


class MetricConfig(Section):
    evaluator: Literal["trained", "t2m"] = Field(
        "trained",
        description="trained: `layersync motion train-evaluator`; t2m: official finest.tar + GloVe",
    )
    t2m_dir: str | None = Field(
        None, description="folder with finest.tar, mean.npy, std.npy (evaluator=t2m)"
    )
    glove_dir: str | None = Field(
        None, description="folder with our_vab_data.npy/_words.pkl/_idx.pkl (t2m)"
    )
    num_samples: int = Field(1024, gt=31, description="generated motions per replication")
    replications: int = Field(20, gt=0, description="MDM wo_mm: 20")
    diversity_times: int = Field(300, gt=0)
    evaluator_steps: int = Field(3000, gt=0)
    evaluator_hidden: int = Field(512, gt=0, description="motion GRU / text head width (T2M: 1024)")
    evaluator_out: int = Field(512, gt=0)
    multimodality: bool = Field(
        False, description="MDM's mm_short: also MultiModality (MDM: with replications=5)"
    )
    mm_num_samples: int = Field(100, gt=0, description="prompts (the first of each replication's)")
    mm_num_repeats: int = Field(30, gt=1, description="generations per prompt (its own included)")
    mm_num_times: int = Field(10, gt=0, description="random pairs per prompt")

    @model_validator(mode="after")
    def _mm_sizes(self) -> MetricConfig:
        if self.multimodality and self.mm_num_samples > self.num_samples:
            raise ValueError(
                f"metric.mm_num_samples ({self.mm_num_samples}) must not exceed "
                f"metric.num_samples ({self.num_samples}): its prompts are the first ones drawn"
            )
        if self.multimodality and self.mm_num_repeats <= self.mm_num_times:
            raise ValueError(
                f"metric.mm_num_repeats ({self.mm_num_repeats}) must exceed metric.mm_num_times "
                f"({self.mm_num_times}): the pairs are drawn without replacement"
            )
        return self


class MotionConfig(Section):
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    diffusion: DiffusionConfig = DiffusionConfig()
    sampler: SamplerConfig = SamplerConfig()
    text: TextConfig = TextConfig()
    metric: MetricConfig = MetricConfig()

    @model_validator(mode="after")
    def _caption_length(self) -> MotionConfig:
        frames_for(self.sampler.seconds, self.data.source, self.data.max_len, "sampler.seconds")
        return self


def frame_rate(source: str) -> float:
    """The skeleton's frame rate of a data source: KIT-ML 12.5 fps, HumanML3D (and the
    embedded data, on its skeleton) 20 fps. ``skeleton.py`` builds its specs from this."""
    return 12.5 if source == "kit" else 20.0


def frames_for(seconds: float | None, source: str, max_len: int, key: str) -> int:
    """Frames of a ``seconds``-long motion (None: ``max_len``); a length the model cannot make
    is a ValueError naming ``key``."""
    if seconds is None:
        return max_len
    fps = frame_rate(source)
    frames = round(seconds * fps)
    if not 1 <= frames <= max_len:
        raise ValueError(
            f"{key} = {seconds}: {frames} frames at {fps} fps; data.max_len allows 1 to {max_len}"
        )
    return frames


PRESETS = load_presets("layersync_motion", "presets")
"""demo (CPU, the embedded DeepMimic clips) and mdm-humanml3d (the paper's setting)."""
