"""A template for sequence plugins shaped like MDM (motion), the hardest case of the contract.

- Backbone: a sequence-first ``nn.TransformerEncoder`` whose layer outputs are ``(T+1, B, D)``
  with a condition token at index 0; the taps' ``sequence_first(drop_first=1)`` view turns them
  into ``(B, T, D)`` frame tokens.
- Data: variable-length sequences padded to a fixed length; the valid-frame mask keeps padding
  out of attention, the loss and the LayerSync term.
- Objective: x0-predicting discrete Gaussian diffusion from ``layersync.diffusion`` (it reports
  the core time t = 1 - s/T, so ``layersync.time_range`` means the same as for flow plugins).
- Per-item randomness (a phase jitter) comes from ``SeededDataset.generator(i)``: resumes exact.

Data: class-conditional 4-channel sinusoids ("toy motions") of 6..12 frames.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from layersync.diffusion import DiffusionObjective, GaussianDiffusion, ddim_sample, step_model
from layersync.plugin import LayerSyncDefaults, MetricSpec, Modality
from layersync.taps import TokenView, sequence_first
from layersync.train.data import SeededDataset

MAX_LEN, FEATS, NUM_CLASSES = 12, 4, 3

# --------------------------------------------------------------------------------------------
# Config sections (extra="forbid": a typo in a TOML file or override is an error)
# --------------------------------------------------------------------------------------------


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(_Section):
    size: int = Field(256, gt=0, description="number of training sequences")
    jitter: float = Field(0.3, ge=0, description="random phase shift per visit (radians)")


class ModelConfig(_Section):
    dim: int = 32
    depth: int = 6
    heads: int = 4


class DiffusionConfig(_Section):
    steps: int = Field(50, gt=1, description="diffusion steps T")
    schedule: str = Field("cosine", description="beta schedule: cosine | linear")
    sample_steps: int = Field(10, gt=0, description="DDIM steps when sampling")


class ToySequenceConfig(_Section):
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    diffusion: DiffusionConfig = DiffusionConfig()


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def motion(label: int, length: int, phase: float = 0.0) -> torch.Tensor:
    """The clean sequence of a class: (MAX_LEN, FEATS), zero after ``length``."""
    frames = torch.arange(MAX_LEN, dtype=torch.float32)[:, None]
    offsets = torch.arange(FEATS, dtype=torch.float32)[None] * 0.7
    x = torch.sin(frames * (0.4 + 0.5 * label) + offsets + phase)
    x[length:] = 0
    return x


class ToyMotions(SeededDataset):
    """Items ``{"x": (MAX_LEN, FEATS), "y": label, "mask": (MAX_LEN,) valid frames}``."""

    def __init__(self, size: int, jitter: float, seed: int) -> None:
        super().__init__(seed)
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.randint(NUM_CLASSES, (size,), generator=g)
        self.lengths = torch.randint(6, MAX_LEN + 1, (size,), generator=g)
        self.jitter = jitter

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        g = self.generator(i)  # seeded by (seed, epoch, i): the same draw after a resume
        phase = self.jitter * (2 * torch.rand((), generator=g).item() - 1)
        length = int(self.lengths[i])
        return {
            "x": motion(int(self.labels[i]), length, phase),
            "y": self.labels[i],
            "mask": torch.arange(MAX_LEN) < length,
        }


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------


class SeqDenoiser(nn.Module):
    """MDM-like: [condition token; frames] -> TransformerEncoder (sequence-first) -> x0."""

    def __init__(self, dim: int, depth: int, heads: int, steps: int) -> None:
        super().__init__()
        self.inp = nn.Linear(FEATS, dim)
        self.pos = nn.Parameter(0.02 * torch.randn(MAX_LEN + 1, 1, dim))
        self.time = nn.Embedding(steps, dim)
        self.label = nn.Embedding(NUM_CLASSES, dim)
        layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.0)
        self.seqTransEncoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.out = nn.Linear(dim, FEATS)

    def forward(self, x, steps, y, mask):
        cond = (self.time(steps) + self.label(y))[None]  # (1, B, D)
        h = torch.cat([cond, self.inp(x).transpose(0, 1)], 0) + self.pos  # (T+1, B, D)
        pad = torch.cat([torch.zeros_like(mask[:, :1]), ~mask], 1)  # True = ignore
        h = self.seqTransEncoder(h, src_key_padding_mask=pad)
        return self.out(h[1:]).transpose(0, 1)  # (B, T, F)


def _forward(model, x_t, steps, batch, drop_cond, generator):
    """How the objective calls the model: the batch carries the label and the frame mask."""
    return model(x_t, steps, batch["y"], batch["mask"])


# --------------------------------------------------------------------------------------------
# The plugin object
# --------------------------------------------------------------------------------------------


class ToySequence(Modality):
    name = "toy-sequence"
    description = "template plugin: MDM-shaped masked x0 diffusion on toy motions"
    config_model = ToySequenceConfig
    # what `evaluate` returns: name -> direction and the one primary metric (bench, eval summaries)
    metrics = {"motion_mse": MetricSpec(higher_is_better=False, primary=True)}
    presets = {
        "demo": {
            "train": {"steps": 300, "batch_size": 32, "lr": 1e-3},
            "ema": {"warmup": True},
            "checkpoint": {"every": 100},
            "log": {"every": 25, "sample_count": 6},
        }
    }

    def diffusion(self, cfg: Any) -> GaussianDiffusion:
        d = cfg.diffusion
        return GaussianDiffusion.named(d.schedule, d.steps, prediction="x0")

    def build_dataset(self, cfg: Any, split: str) -> ToyMotions:
        seed = cfg.run.seed if split == "train" else cfg.run.seed + 1
        return ToyMotions(cfg.data.size, cfg.data.jitter, seed)

    def build_model(self, cfg: Any) -> nn.Module:
        m = cfg.model
        return SeqDenoiser(m.dim, m.depth, m.heads, cfg.diffusion.steps)

    def block_names(self, cfg: Any, model: nn.Module) -> list[str]:
        return [f"seqTransEncoder.layers.{i}" for i in range(cfg.model.depth)]

    def token_view(self, cfg: Any) -> TokenView:
        return sequence_first(drop_first=1)  # (T+1, B, D) -> (B, T, D) without the cond token

    def default_layersync(self, cfg: Any) -> LayerSyncDefaults:
        depth = cfg.model.depth
        return LayerSyncDefaults(
            pairs=f"{max(1, depth // 3)}<-{max(2, 2 * depth // 3)}", weight=0.5
        )

    def build_objective(self, cfg: Any) -> DiffusionObjective:
        return DiffusionObjective(self.diffusion(cfg), forward=_forward)

    def conditions(self, cfg: Any, n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        lengths = 6 + torch.arange(n) % (MAX_LEN - 5)
        return {
            "y": torch.arange(n) % NUM_CLASSES,
            "mask": torch.arange(MAX_LEN) < lengths[:, None],
        }

    @torch.no_grad()
    def sample(self, model, cfg, n, condition, generator):
        device = next(model.parameters()).device
        y, mask = condition["y"].to(device), condition["mask"].to(device)
        fn = step_model(self.diffusion(cfg), model.eval())
        x = ddim_sample(
            self.diffusion(cfg),
            fn,
            (n, MAX_LEN, FEATS),
            steps=cfg.diffusion.sample_steps,
            generator=generator,
            device=device,
            clip=1.5,
            model_kwargs={"y": y, "mask": mask},
        )
        return x * mask.unsqueeze(-1)

    def write_samples(self, samples, out_dir: Path, cfg: Any, prefix: str = "") -> list[Path]:
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"{prefix or 'samples'}.npy"
        np.save(path, samples.cpu().numpy())
        return [path]

    def evaluate(self, model, cfg, out_dir, generator) -> dict[str, float]:
        """Mean squared error of 30 samples to their class's motion (valid frames only)."""
        cond = self.conditions(cfg, 30, generator)
        x = self.sample(model, cfg, 30, cond, generator).cpu()
        lengths = cond["mask"].sum(1)
        ref = torch.stack([motion(int(y), int(n)) for y, n in zip(cond["y"], lengths, strict=True)])
        return {"motion_mse": float(((x - ref) ** 2).sum() / (cond["mask"].sum() * FEATS))}


plugin = ToySequence()
