"""Embedded default data: moving digits (scikit-learn's 8x8 digits bouncing in a small canvas).

One digit per clip, grey on black, moving in a straight line and bouncing off the walls. Its
start position, direction and speed come from the item's seeded generator (a new trajectory every
epoch, identical on resume). ``start_spread`` is the fraction of the free room the start is drawn
from, centred: 1 = anywhere, 0 = the centre of the canvas (a predictable first frame, meant to
ease a small model's job; its effect is not measured yet). Label = the digit. The train and eval splits use disjoint digit
images (a fixed permutation of the 1,797 digits, the last 20% for eval).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from layersync.train.data import SeededDataset


def digit_images(split: str, split_seed: int = 0, eval_fraction: float = 0.2):
    """(images uint8 (N, 8, 8) in 0..255, labels int64 (N,)) of one split of sklearn's digits."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover - a declared dependency
        raise ImportError("moving digits need scikit-learn: pip install scikit-learn") from e
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    d = load_digits()
    images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)
    order = np.random.default_rng(split_seed).permutation(len(images))
    n_eval = round(eval_fraction * len(images))
    idx = order[-n_eval:] if split == "eval" else order[:-n_eval]
    return images[idx], d.target[idx].astype(np.int64)


def bounce(p0: float, v: float, steps: int, room: float) -> np.ndarray:
    """Positions p0 + v*t reflected into [0, room] for t = 0..steps-1 (a triangle wave)."""
    p = p0 + v * np.arange(steps)
    if room <= 0:
        return np.zeros(steps)
    p = np.mod(p, 2 * room)
    return np.where(p > room, 2 * room - p, p)


class MovingDigits(SeededDataset):
    """Clips (1, frames, size, size) in [-1, 1] of one bouncing digit; label = the digit."""

    channels = 1
    num_classes = 10

    def __init__(
        self,
        split: str = "train",
        frames: int = 16,
        size: int = 16,
        digit_size: int = 8,
        speed: tuple[float, float] = (0.5, 1.5),
        seed: int | None = 0,
        start_spread: float = 1.0,
    ) -> None:
        super().__init__(seed)
        if digit_size > size:
            raise ValueError(f"data.digit_size = {digit_size} exceeds data.size = {size}")
        if not 0.0 <= start_spread <= 1.0:
            raise ValueError(f"data.start_spread = {start_spread} is not in [0, 1]")
        self.start_spread = start_spread
        self.images, self.labels = digit_images(split)
        self.frames, self.size, self.digit_size, self.speed = frames, size, digit_size, speed
        digits = torch.from_numpy(self.images).float()[:, None] / 255.0
        if digit_size != 8:
            digits = F.interpolate(digits, size=(digit_size, digit_size), mode="bilinear")
        self._digits = digits[:, 0].clamp(0, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def trajectory(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-left (y, x) integer positions per frame, from the item's generator."""
        g = self.generator(index)
        room = self.size - self.digit_size
        u = torch.rand(4, generator=g).double().tolist()
        angle = 2 * math.pi * u[2]
        speed = self.speed[0] + (self.speed[1] - self.speed[0]) * u[3]
        y0, x0 = (room * (0.5 + self.start_spread * (v - 0.5)) for v in u[:2])
        y = bounce(y0, speed * math.sin(angle), self.frames, room)
        x = bounce(x0, speed * math.cos(angle), self.frames, room)
        return np.round(y).astype(int), np.round(x).astype(int)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        ys, xs = self.trajectory(index)
        d, s = self.digit_size, self.size
        clip = torch.zeros(1, self.frames, s, s)
        for t, (y, x) in enumerate(zip(ys, xs, strict=True)):
            clip[0, t, y : y + d, x : x + d] = self._digits[index]
        return clip * 2 - 1, torch.tensor(int(self.labels[index]), dtype=torch.int64)
