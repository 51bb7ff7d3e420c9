"""Writing generated clips: GIF grid (+ MP4 when PyAV is installed), per-frame PNGs, samples.npz.

Layout of an export (``layersync sample``): ``grid.gif`` (one clip per cell, one class per
column), ``grid.mp4``, ``frames/<index>/<t>.png`` (what StyleGAN-V-style FVD tools read) and
``samples.npz`` (``arr_0``: uint8 (N, T, H, W, C)).
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from layersync.media import save_gif, save_mp4, tile_clips

GRID_CLIPS, GRID_COLUMNS = 100, 10


def to_uint8_nthwc(clips: torch.Tensor) -> np.ndarray:
    """(N, C, T, H, W) in [-1, 1] -> uint8 (N, T, H, W, C), what a saved frame holds."""
    x = (127.5 * clips.detach().float().cpu() + 128.0).clamp(0, 255).to(torch.uint8)
    return x.permute(0, 2, 3, 4, 1).numpy()


def grid_clip(clips: np.ndarray, columns: int = GRID_COLUMNS) -> np.ndarray:
    """The first 100 clips tiled (one class per column), enlarged to >= 64 px per cell."""
    clips = clips[:GRID_CLIPS]
    up = max(1, 64 // clips.shape[2])
    if up > 1:
        clips = clips.repeat(up, axis=2).repeat(up, axis=3)
    grid = tile_clips(clips, nrow=min(columns, len(clips)), pad=2, pad_value=128)
    return np.repeat(grid, 3, axis=-1) if grid.shape[-1] == 1 else grid


def write_grid(clips: np.ndarray, out_dir: Path, name: str, fps: float) -> list[Path]:
    grid = grid_clip(clips)
    paths = [save_gif(out_dir / f"{name}.gif", grid, fps)]
    if importlib.util.find_spec("av") is not None:
        paths.append(save_mp4(out_dir / f"{name}.mp4", grid, fps))
    return paths


def write_frames(clips: np.ndarray, out_dir: Path, first_index: int = 0) -> list[Path]:
    """``frames/<index>/<t>.png`` for each uint8 (T, H, W, C) clip."""
    paths = []
    for i, clip in enumerate(clips):
        folder = out_dir / "frames" / f"{first_index + i:06d}"
        folder.mkdir(parents=True, exist_ok=True)
        for t, frame in enumerate(clip):
            path = folder / f"{t:03d}.png"
            Image.fromarray(frame[..., 0] if frame.shape[-1] == 1 else frame).save(path)
            paths.append(path)
    return paths


def save_npz(clips: np.ndarray, path: Path) -> Path:
    with open(path, "wb") as f:  # a file object keeps numpy from renaming it
        np.savez(f, arr_0=clips)
    return path


def write_clips(samples: torch.Tensor, out_dir: Path, cfg: Any, prefix: str = "") -> list[Path]:
    """A grid (``<prefix>.gif``/``.mp4``, or ``grid.*``); without a prefix also the export
    files (``frames/``, ``samples.npz``)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    clips = to_uint8_nthwc(samples)
    paths = write_grid(clips, out_dir, prefix or "grid", cfg.sampler.fps)
    if not prefix:
        paths += write_frames(clips, out_dir)
        paths.append(save_npz(clips, out_dir / "samples.npz"))
    return paths


def merge_sample_parts(parts: list[Path], out_dir: Path, cfg: Any) -> list[Path]:
    """Export parts (in order) -> one ``samples.npz``, ``frames/<global index>/`` and a grid;
    the parts folder is then removed."""
    arrays = []
    for part in parts:
        with np.load(part / "samples.npz") as f:
            arrays.append(f["arr_0"])
    clips = np.concatenate(arrays)
    paths = write_grid(clips, out_dir, "grid", cfg.sampler.fps)
    index = 0
    (out_dir / "frames").mkdir(parents=True, exist_ok=True)
    for part, array in zip(parts, arrays, strict=True):
        for k in range(len(array)):
            target = out_dir / "frames" / f"{index:06d}"
            shutil.rmtree(target, ignore_errors=True)
            (part / "frames" / f"{k:06d}").replace(target)
            paths += sorted(target.glob("*.png"))
            index += 1
    paths.append(save_npz(clips, out_dir / "samples.npz"))
    shutil.rmtree(parts[0].parent)
    return paths
