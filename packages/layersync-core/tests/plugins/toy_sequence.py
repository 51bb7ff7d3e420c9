"""Test plugin with the MDM shape: the hardest case the contract must fit.

- a sequence-first ``nn.TransformerEncoder`` whose layer outputs are ``(T+1, B, D)`` with a
  condition token at index 0;
- variable-length sequences padded to a fixed length (padding mask);
- an x0-predicting discrete Gaussian diffusion (not flow matching), reporting the core time
  convention: step s of T is t = 1 - s/T (t = 1 clean, toward 0 the noise).

Data: class-conditional 4-channel sinusoids of random length 6..12 frames.
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
from layersync.taps import TokenView, sequence_first

MAX_LEN, FEATS, NUM_CLASSES, DIFFUSION_STEPS = 12, 4, 3, 50


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(_Section):
    size: int = Field(256, gt=0)


class ModelConfig(_Section):
    dim: int = 32
    depth: int = 6
    heads: int = 4


class ToySequenceConfig(_Section):
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()


def template(label: torch.Tensor, length: int) -> torch.Tensor:
    """The clean sequence for a class: (MAX_LEN, FEATS), zero after ``length``."""
    frames = torch.arange(MAX_LEN, dtype=torch.float32)[:, None]
    phase = torch.arange(FEATS, dtype=torch.float32)[None] * 0.7
    x = torch.sin(frames * (0.4 + 0.5 * float(label)) + phase)
    x[length:] = 0
    return x


class SineDataset(Dataset):
    def __init__(self, size: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.randint(NUM_CLASSES, (size,), generator=g)
        self.lengths = torch.randint(6, MAX_LEN + 1, (size,), generator=g)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        length = int(self.lengths[i])
        mask = torch.arange(MAX_LEN) < length
        return {"x": template(self.labels[i], length), "y": self.labels[i], "mask": mask}


class SeqDenoiser(nn.Module):
    """MDM-like: [cond token; frames] -> TransformerEncoder (sequence-first) -> x0."""

    def __init__(self, dim: int, depth: int, heads: int) -> None:
        super().__init__()
        self.inp = nn.Linear(FEATS, dim)
        self.pos = nn.Parameter(0.02 * torch.randn(MAX_LEN + 1, 1, dim))
        self.time = nn.Embedding(DIFFUSION_STEPS, dim)
        self.label = nn.Embedding(NUM_CLASSES, dim)
        layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.0)
        self.seqTransEncoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.out = nn.Linear(dim, FEATS)

    def forward(self, x, timesteps, y, mask):
        cond = (self.time(timesteps) + self.label(y))[None]  # (1, B, D)
        h = torch.cat([cond, self.inp(x).transpose(0, 1)], 0) + self.pos  # (T+1, B, D)
        pad = torch.cat([torch.zeros_like(mask[:, :1]), ~mask], 1)  # True = ignore
        h = self.seqTransEncoder(h, src_key_padding_mask=pad)
        return self.out(h[1:]).transpose(0, 1)  # (B, T, F)


def cosine_alphas_cumprod(steps: int) -> torch.Tensor:
    s = 0.008
    f = torch.cos((torch.arange(steps + 1) / steps + s) / (1 + s) * math.pi / 2) ** 2
    return (f[1:] / f[0]).clamp(1e-5, 0.9999)


class X0Diffusion:
    """q(x_t | x_0) = N(sqrt(ab_t) x_0, (1 - ab_t) I); the model predicts x_0; masked MSE."""

    def __init__(self) -> None:
        self.ab = cosine_alphas_cumprod(DIFFUSION_STEPS)

    def __call__(self, model, batch, generator=None) -> ObjectiveOutput:
        x0, y, mask = batch["x"], batch["y"], batch["mask"]
        b = x0.shape[0]
        steps = torch.randint(DIFFUSION_STEPS, (b,), generator=generator, device=x0.device)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device)
        ab = self.ab.to(x0.device)[steps].view(b, 1, 1)
        pred = model(ab.sqrt() * x0 + (1 - ab).sqrt() * noise, steps, y, mask)
        m = mask.unsqueeze(-1).float()
        loss = ((pred.float() - x0) ** 2 * m).sum((1, 2)) / (m.sum((1, 2)) * FEATS)
        t = 1.0 - steps.float() / DIFFUSION_STEPS  # the core convention: t = 1 is clean data
        return ObjectiveOutput(loss=loss, t=t, token_mask=mask)

    @torch.no_grad()
    def sample(self, model, y, mask, generator):
        ab = self.ab.to(y.device)
        x = torch.randn(len(y), MAX_LEN, FEATS, generator=generator, device=y.device)
        for s in reversed(range(DIFFUSION_STEPS)):
            steps = torch.full((len(y),), s, device=y.device)
            x0 = model(x, steps, y, mask).clamp(-1.5, 1.5)
            if s == 0:
                x = x0
                break
            eps = (x - ab[s].sqrt() * x0) / (1 - ab[s]).sqrt()
            x = ab[s - 1].sqrt() * x0 + (1 - ab[s - 1]).sqrt() * eps  # DDIM, eta = 0
        return x * mask.unsqueeze(-1)


class ToySequence(Modality):
    name = "toy-sequence"
    description = "test plugin: MDM-shaped sequence-first x0 diffusion"
    config_model = ToySequenceConfig
    metrics = {"template_mse": MetricSpec(higher_is_better=False, primary=True)}
    presets = {
        "demo": {
            "train": {"steps": 200, "batch_size": 32, "lr": 1e-3},
            "checkpoint": {"every": 100},
            "log": {"every": 20, "sample_count": 6},
        }
    }

    def build_dataset(self, cfg: Any, split: str) -> Dataset:
        return SineDataset(cfg.data.size, cfg.run.seed + (split != "train"))

    def build_model(self, cfg: Any) -> nn.Module:
        return SeqDenoiser(cfg.model.dim, cfg.model.depth, cfg.model.heads)

    def block_names(self, cfg: Any, model: nn.Module) -> list[str]:
        return [f"seqTransEncoder.layers.{i}" for i in range(cfg.model.depth)]

    def token_view(self, cfg: Any) -> TokenView:
        return sequence_first(drop_first=1)  # (T+1, B, D) -> (B, T, D) without the cond token

    def default_layersync(self, cfg: Any) -> LayerSyncDefaults:
        return LayerSyncDefaults(pairs="2<-4", weight=0.5)

    def build_objective(self, cfg: Any) -> X0Diffusion:
        return X0Diffusion()

    def conditions(self, cfg, n, generator):
        lengths = 6 + torch.arange(n) % (MAX_LEN - 5)
        return {
            "y": torch.arange(n) % NUM_CLASSES,
            "mask": torch.arange(MAX_LEN) < lengths[:, None],
        }

    def sample(self, model, cfg, n, condition, generator):
        device = next(model.parameters()).device
        y, mask = condition["y"].to(device), condition["mask"].to(device)
        return X0Diffusion().sample(model.eval(), y, mask, generator)

    def write_samples(self, samples, out_dir: Path, cfg: Any, prefix: str = "") -> list[Path]:
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"{prefix or 'samples'}.npy"
        np.save(path, samples.cpu().numpy())
        return [path]

    def evaluate(self, model, cfg, out_dir, generator) -> dict[str, float]:
        cond = self.conditions(cfg, 30, generator)
        x = self.sample(model, cfg, 30, cond, generator).cpu()
        lengths = cond["mask"].sum(1)
        ref = torch.stack([template(y, int(n)) for y, n in zip(cond["y"], lengths, strict=True)])
        return {"template_mse": float(((x - ref) ** 2).sum() / (cond["mask"].sum() * FEATS))}


plugin = ToySequence()
