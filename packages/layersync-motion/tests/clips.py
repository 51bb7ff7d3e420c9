"""Synthetic test clips: smooth, turning, walking-like joint sequences for any skeleton."""

from __future__ import annotations

import math

import numpy as np
import torch

from layersync_motion.skeleton import SkeletonSpec, forward_kinematics

# bone lengths (m) per joint of the T2M layout (a plausible adult)
T2M_LENGTHS = [0, .11, .11, .12, .38, .38, .14, .40, .40, .05, .13, .13, .21, .14, .14, .10, .13,
               .13, .26, .26, .25, .25]  # fmt: skip


def axis_angle(axis: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    axis = axis / axis.norm(dim=-1, keepdim=True)
    return torch.cat([torch.cos(angle / 2)[..., None], torch.sin(angle / 2)[..., None] * axis], -1)


def synthetic_clip(spec: SkeletonSpec, frames: int = 60, seed: int = 0, lengths=None) -> np.ndarray:
    """(frames, J, 3) joints: random smooth local rotations, a turning root path, y-up."""
    g = torch.Generator().manual_seed(seed)
    j = spec.num_joints
    lengths = torch.tensor(
        lengths or (T2M_LENGTHS if j == 22 else [0] + [0.2] * (j - 1)), dtype=torch.float64
    )
    offsets = torch.tensor(spec.raw_offsets, dtype=torch.float64) * lengths[:, None]
    t = torch.arange(frames, dtype=torch.float64) / spec.fps
    axes = torch.randn(j, 3, generator=g, dtype=torch.float64)
    amp = 0.15 + 0.35 * torch.rand(j, generator=g, dtype=torch.float64)
    freq = 0.5 + 1.5 * torch.rand(j, generator=g, dtype=torch.float64)
    phase = 2 * math.pi * torch.rand(j, generator=g, dtype=torch.float64)
    angle = amp * torch.sin(2 * math.pi * freq * t[:, None] + phase)  # (T, J)
    quats = axis_angle(axes.expand(frames, j, 3), angle)
    yaw = 0.7 + 0.8 * t  # turning while moving
    quats[:, 0] = axis_angle(
        torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64).expand(frames, 3), yaw
    )
    root = torch.stack(
        [0.3 + 0.8 * torch.sin(0.9 * t), 0.95 + 0.03 * torch.sin(6 * t), 0.2 + 1.1 * t], -1
    )
    return forward_kinematics(spec, quats, root, offsets).numpy()
