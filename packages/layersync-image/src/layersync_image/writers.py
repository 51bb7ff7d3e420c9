"""Image writers: uint8 conversion, sample grids, PNG and the ADM evaluator's ``.npz``.

Every file is written atomically (``layersync.fileio.atomic_write``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

import numpy as np
import torch
from PIL import Image

from layersync.fileio import atomic_write


def to_uint8_nhwc(images: torch.Tensor | np.ndarray, rgb: bool = False) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> uint8 (N, H, W, C): ``clip(127.5 * x + 128, 0, 255)`` truncated,
    i.e. round-half-up of ``(x + 1) * 127.5`` as DiT/SiT samplers write. ``rgb`` repeats a single
    channel to 3 (the ADM evaluator's Inception needs RGB)."""
    x = torch.as_tensor(images).detach().to("cpu", torch.float32)
    if x.ndim != 4:
        raise ValueError(f"expected images (N, C, H, W), got shape {tuple(x.shape)}")
    if rgb and x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    x = (127.5 * x + 128.0).clamp_(0, 255).to(torch.uint8)
    return x.permute(0, 2, 3, 1).contiguous().numpy()


def make_grid(
    images: torch.Tensor | np.ndarray,
    nrow: int = 8,
    padding: int = 1,
    upscale: int = 1,
    pad_value: int = 0,
) -> np.ndarray:
    """Tile (N, C, H, W) images in [-1, 1], C in (1, 3), into uint8 (H', W', 3): ``nrow`` images
    per row, row-major, ``padding`` pixels of ``pad_value`` around each; ``upscale`` enlarges
    each image by pixel repetition (nearest) before tiling."""
    x = to_uint8_nhwc(images, rgb=True)
    n, _, _, c = x.shape
    if c != 3:
        raise ValueError(f"make_grid expects 1 or 3 channels, got {c}")
    if n == 0:
        raise ValueError("make_grid got no images")
    if upscale > 1:
        x = x.repeat(upscale, axis=1).repeat(upscale, axis=2)
    h, w = x.shape[1:3]
    cols = min(nrow, n)
    rows = math.ceil(n / cols)
    grid = np.full(
        (rows * (h + padding) + padding, cols * (w + padding) + padding, 3), pad_value, np.uint8
    )
    for i, img in enumerate(x):
        r, col = divmod(i, cols)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        grid[top : top + h, left : left + w] = img
    return grid


def to_file(write: Callable[[IO[bytes]], None]) -> Callable[[Path], None]:
    """``write(file object)`` as a function of a path, for ``atomic_write``."""

    def to_path(path: Path) -> None:
        with open(path, "wb") as f:
            write(f)

    return to_path


def save_png(array: np.ndarray, path: str | os.PathLike) -> Path:
    """Save uint8 (H, W), (H, W, 1) or (H, W, 3) as PNG (atomically)."""
    array = np.asarray(array)
    if array.dtype != np.uint8 or not (
        array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (1, 3))
    ):
        raise ValueError(
            f"save_png expects uint8 (H, W[, 1|3]), got shape {array.shape} dtype {array.dtype}"
        )
    image = Image.fromarray(array[..., 0] if array.ndim == 3 and array.shape[-1] == 1 else array)
    return atomic_write(path, to_file(lambda f: image.save(f, format="PNG")))


def save_npz(
    images: np.ndarray, path: str | os.PathLike, labels: Sequence[int] | np.ndarray | None = None
) -> Path:
    """Write the ADM evaluator's sample file: ``arr_0`` uint8 (N, H, W, C) (and ``arr_1``
    int64 labels, as ADM's class-conditional sampler does), atomically."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(
            f"save_npz expects uint8 (N, H, W, C) with C in (1, 3), "
            f"got shape {images.shape} dtype {images.dtype}"
        )
    arrays = {"arr_0": images}
    if labels is not None:
        labels = np.asarray(labels, dtype=np.int64)
        if labels.shape != (len(images),):
            raise ValueError(f"labels must have shape ({len(images)},), got {labels.shape}")
        arrays["arr_1"] = labels
    return atomic_write(path, to_file(lambda f: np.savez(f, **arrays)))
