"""Spectrogram grids as PNG (numpy + zlib only: no imaging library needed)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import torch

# a perceptual dark-to-bright ramp (black, purple, red, orange, pale yellow), interpolated
_RAMP = np.array(
    [[0, 0, 4], [80, 18, 123], [183, 55, 121], [252, 137, 97], [252, 253, 191]], np.float64
)


def colorize(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> uint8 RGB (..., 3) along the ramp."""
    pos = np.clip(values, 0, 1) * (len(_RAMP) - 1)
    lo = np.minimum(pos.astype(int), len(_RAMP) - 2)
    frac = (pos - lo)[..., None]
    return np.round(_RAMP[lo] * (1 - frac) + _RAMP[lo + 1] * frac).astype(np.uint8)


def write_png(path: str | Path, rgb: np.ndarray) -> Path:
    """An (H, W, 3) uint8 array -> an 8-bit RGB PNG, written atomically."""
    from layersync.fileio import atomic_write

    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    h, w, _ = rgb.shape
    raw = b"".join(b"\0" + rgb[y].tobytes() for y in range(h))  # filter 0 on every row

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")
    return atomic_write(path, png)


def spectrogram_grid(
    log_mels: torch.Tensor, path: str | Path, columns: int, dynamic_range: float = 80.0
) -> Path:
    """Log-mels ``(N, n_mels, frames)`` (natural log of power) -> a PNG grid, ``columns`` per
    row (one class per column for class-balanced samples), low frequencies at the bottom,
    ``dynamic_range`` dB below the loudest bin mapped to black, grey separators."""
    from layersync.media import tile_clips

    db = log_mels.detach().float().cpu().numpy() * (10.0 / np.log(10.0))
    top = db.max() if db.size else 0.0
    tiles = colorize((db - (top - dynamic_range)) / dynamic_range)[:, ::-1]  # (N, mels, F, 3)
    grid = tile_clips(tiles[:, None], nrow=max(1, columns), pad=2, pad_value=128)[0]
    return write_png(path, grid)


def merge_wav_parts(parts: list[Path], out_dir: Path) -> list[Path]:
    """Per-batch outputs of ``write_samples`` (in order) -> ``wav/<global index>.wav`` and the
    first batch's spectrogram grid as ``grid.png``; the parts folder is then removed."""
    import shutil

    out_dir = Path(out_dir)
    (out_dir / "wav").mkdir(parents=True, exist_ok=True)
    paths = []
    grid = parts[0] / "grid.png" if parts else None
    if grid is not None and grid.is_file():
        paths.append(grid.replace(out_dir / "grid.png"))
    index = 0
    for part in parts:
        for wav in sorted((part / "wav").glob("*.wav")):
            paths.append(wav.replace(out_dir / "wav" / f"{index:06d}.wav"))
            index += 1
    shutil.rmtree(parts[0].parent)
    return paths
