"""A minimal, complete LayerSync modality plugin (copy it to start your own).

Data: four fixed 8x8 class patterns plus a little noise. Model: a tiny transformer over 2x2
patches with the time and class added to every token. Objective: rectified flow (t=1 data,
velocity target data - noise). Sampler: Euler ODE. Metric: distance of samples to the nearest
class pattern.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.utils.data import Dataset

from layersync.plugin import LayerSyncDefaults, MetricSpec, Modality, ObjectiveOutput

# --------------------------------------------------------------------------------------------
# Config sections (extra="forbid": a typo in a TOML file or override is an error)
# --------------------------------------------------------------------------------------------


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(_Section):
    size: int = Field(512, gt=0, description="number of training images")
    noise: float = Field(0.05, ge=0, description="pixel noise around each class pattern")
    fixed_noise: bool = Field(
        False, description="draw each item's diffusion noise and t from its index (exact A/B)"
    )


class ModelConfig(_Section):
    dim: int = 32
    depth: int = 6
    heads: int = 4


class SamplerConfig(_Section):
    steps: int = Field(20, gt=0)


class ToyImageConfig(_Section):
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    sampler: SamplerConfig = SamplerConfig()


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------

NUM_CLASSES, SIZE = 4, 8


def class_patterns() -> torch.Tensor:
    """Four 1x8x8 patterns in [-1, 1]: horizontal bars, vertical bars, checker, ring."""
    yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    ring = ((yy - 3.5) ** 2 + (xx - 3.5) ** 2).sqrt().sub(2.5).abs() < 1.0
    pats = [(yy // 2) % 2 == 0, (xx // 2) % 2 == 0, (yy + xx) % 2 == 0, ring]
    return torch.stack([p.float() * 2 - 1 for p in pats]).unsqueeze(1)


class PatternDataset(Dataset):
    def __init__(self, size: int, noise: float, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.randint(NUM_CLASSES, (size,), generator=g)
        jitter = noise * torch.randn(size, 1, SIZE, SIZE, generator=g)
        self.images = (class_patterns()[self.labels] + jitter).clamp(-1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.images[i], "y": self.labels[i], "index": torch.tensor(i)}


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------


class Block(nn.Module):
    """Pre-norm transformer block; its output (after the residual) is what LayerSync taps."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class TinyDiT(nn.Module):
    def __init__(self, dim: int, depth: int, heads: int, patch: int = 2) -> None:
        super().__init__()
        self.patch, self.tokens = patch, (SIZE // patch) ** 2
        self.embed = nn.Linear(patch * patch, dim)
        self.pos = nn.Parameter(0.02 * torch.randn(1, self.tokens, dim))
        self.time = nn.Sequential(nn.Linear(16, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.label = nn.Embedding(NUM_CLASSES, dim)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        self.out = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, patch * patch))

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        b, p = x.shape[0], self.patch
        tokens = x.unfold(2, p, p).unfold(3, p, p).reshape(b, self.tokens, p * p)
        freqs = torch.exp(torch.arange(8, device=x.device) * -math.log(100.0) / 8)
        t_feat = torch.cat(
            [torch.sin(t[:, None] * freqs * 10), torch.cos(t[:, None] * freqs * 10)], 1
        )
        h = self.embed(tokens) + self.pos + (self.time(t_feat) + self.label(y))[:, None]
        for block in self.blocks:
            h = block(h)
        out = self.out(h)  # (B, tokens, p*p) -> image
        side = SIZE // p
        out = out.reshape(b, side, side, p, p).permute(0, 1, 3, 2, 4)
        return out.reshape(b, 1, SIZE, SIZE)


# --------------------------------------------------------------------------------------------
# Objective and sampler
# --------------------------------------------------------------------------------------------


class RectifiedFlow:
    """x_t = t·x + (1-t)·noise, target velocity x - noise; one model call per batch."""

    def __init__(self, fixed_noise: bool) -> None:
        self.fixed_noise = fixed_noise

    def __call__(
        self, model: nn.Module, batch: dict[str, torch.Tensor], generator: torch.Generator | None
    ) -> ObjectiveOutput:
        x, y = batch["x"], batch["y"]
        if self.fixed_noise:  # a function of the item: equal across world sizes and runs
            noise, t = _item_noise(batch["index"], x.shape[1:], x.device)
        else:
            noise = torch.randn(x.shape, generator=generator, device=x.device)
            t = torch.rand(x.shape[0], generator=generator, device=x.device)
        tt = t.view(-1, 1, 1, 1)
        pred = model(tt * x + (1 - tt) * noise, t, y)
        loss = (pred.float() - (x - noise)).pow(2).mean(dim=(1, 2, 3))
        return ObjectiveOutput(loss=loss, t=t)

    def loss_at(
        self, model: nn.Module, batch: dict[str, torch.Tensor], t: torch.Tensor, noise: torch.Tensor
    ) -> ObjectiveOutput:
        """The same loss at given times ``t`` (B,) and ``noise`` (the ``val_loss`` metric)."""
        x, y = batch["x"], batch["y"]
        tt = t.to(x.device).view(-1, 1, 1, 1)
        pred = model(tt * x + (1 - tt) * noise, t, y)
        return ObjectiveOutput(loss=(pred.float() - (x - noise)).pow(2).mean(dim=(1, 2, 3)), t=t)

    def noise_like(
        self, batch: dict[str, torch.Tensor], generator: torch.Generator
    ) -> torch.Tensor:
        x = batch["x"]
        return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def _item_noise(index: torch.Tensor, shape: torch.Size, device: torch.device):
    noise, times = [], []
    for i in index.tolist():
        g = torch.Generator().manual_seed(1_000_003 * (i + 1))
        noise.append(torch.randn(shape, generator=g))
        times.append(torch.rand((), generator=g))
    return torch.stack(noise).to(device), torch.stack(times).to(device)


@torch.no_grad()
def euler_sample(model: nn.Module, y: torch.Tensor, steps: int, generator: torch.Generator):
    device = y.device
    x = torch.randn(len(y), 1, SIZE, SIZE, generator=generator, device=device)
    for i in range(steps):
        t = torch.full((len(y),), i / steps, device=device)
        x = x + model(x, t, y) / steps
    return x.clamp(-1, 1)


# --------------------------------------------------------------------------------------------
# The plugin object
# --------------------------------------------------------------------------------------------


class ToyImage(Modality):
    name = "toy-image"
    description = "template plugin: flow matching on synthetic 8x8 patterns"
    config_model = ToyImageConfig
    # what `evaluate` returns: name -> direction and the one primary metric (bench, eval summaries)
    metrics = {"pattern_mse": MetricSpec(higher_is_better=False, primary=True)}
    presets = {
        "demo": {
            "train": {"steps": 300, "batch_size": 32, "lr": 1e-3},
            "ema": {"warmup": True},
            "checkpoint": {"every": 100},
            "log": {"every": 25, "sample_count": 8},
        },
    }

    def build_dataset(self, cfg: Any, split: str) -> Dataset:
        seed = cfg.run.seed if split == "train" else cfg.run.seed + 1
        return PatternDataset(cfg.data.size, cfg.data.noise, seed)

    def build_model(self, cfg: Any) -> nn.Module:
        return TinyDiT(cfg.model.dim, cfg.model.depth, cfg.model.heads)

    def block_names(self, cfg: Any, model: nn.Module) -> list[str]:
        return [f"blocks.{i}" for i in range(cfg.model.depth)]

    def default_layersync(self, cfg: Any) -> LayerSyncDefaults:
        depth = cfg.model.depth
        return LayerSyncDefaults(
            pairs=f"{max(2, depth // 3)}<-{max(3, 2 * depth // 3)}", weight=0.2
        )

    def build_objective(self, cfg: Any) -> RectifiedFlow:
        return RectifiedFlow(cfg.data.fixed_noise)

    def conditions(self, cfg: Any, n: int, generator: torch.Generator) -> torch.Tensor:
        return torch.arange(n) % NUM_CLASSES

    def sample(self, model, cfg, n, condition, generator):
        device = next(model.parameters()).device
        return euler_sample(model.eval(), condition.to(device), cfg.sampler.steps, generator)

    def write_samples(self, samples, out_dir: Path, cfg: Any, prefix: str = "") -> list[Path]:
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"{prefix or 'samples'}.npy"
        np.save(path, samples.cpu().numpy())
        return [path]

    def evaluate(self, model, cfg, out_dir: Path, generator: torch.Generator) -> dict[str, float]:
        """Mean squared distance of 64 class-conditional samples to their class pattern."""
        labels = torch.arange(64) % NUM_CLASSES
        x = self.sample(model, cfg, 64, labels, generator).cpu()
        err = (x - class_patterns()[labels]).pow(2).mean(dim=(1, 2, 3))
        return {"pattern_mse": float(err.mean())}


plugin = ToyImage()
