"""Media writers every modality shares: WAV (audio), GIF and MP4 (video, motion renders), clip grids.

The writers take numpy arrays (or CPU tensors) in the layout their format stores, write atomically
(a killed run leaves the old file or none), and need an optional library each: soundfile (WAV),
Pillow (GIF), PyAV (MP4). All three come with the ``media`` extra of layersync-core
(``pip install 'layersync-core[media]'``); a missing one is named in a one-line error.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from layersync.fileio import atomic_path

__all__ = ["MediaError", "save_gif", "save_mp4", "save_wav", "tile_clips"]


class MediaError(ValueError):
    """Bad media input (shape, dtype, rate) or a writer library that is not installed."""


def _require(module: str, dist: str, what: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MediaError(
            f"{what} needs {dist}: pip install '{dist}' (or 'layersync-core[media]')"
        ) from e


def _numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x)


# -----------------------------------------------------------------------------
# Audio


def save_wav(path: str | Path, audio: Any, sample_rate: int) -> Path:
    """Write ``audio`` as a 16-bit PCM WAV file.

    ``audio``: float (N,) mono or (C, N) channels-first, nominally in [-1, 1] (clipped), or int16
    samples written as they are. Floats are quantised as ``round(x * 32767)``, so a signal made of
    multiples of 1/32767 reads back (as int16) exactly.
    """
    sf = _require("soundfile", "soundfile", "save_wav")
    x = _numpy(audio)
    if x.ndim not in (1, 2) or x.size == 0:
        raise MediaError(f"{path}: audio must be (N,) or (C, N), got shape {x.shape}")
    if int(sample_rate) <= 0:
        raise MediaError(f"{path}: sample_rate must be positive, got {sample_rate}")
    if x.dtype == np.int16:
        pcm = x
    elif np.issubdtype(x.dtype, np.floating):
        if not np.isfinite(x).all():
            raise MediaError(f"{path}: audio holds NaN or inf")
        pcm = np.round(np.clip(x.astype(np.float64), -1.0, 1.0) * 32767.0).astype(np.int16)
    else:
        raise MediaError(f"{path}: audio must be float in [-1, 1] or int16, got {x.dtype}")
    frames = pcm.T if pcm.ndim == 2 else pcm  # soundfile wants (N, C)
    with atomic_path(path) as tmp:
        sf.write(str(tmp), np.ascontiguousarray(frames), int(sample_rate), "PCM_16", format="WAV")
    return Path(path)


# -----------------------------------------------------------------------------
# Video


def _frames_uint8(frames: Any, path: str | Path) -> np.ndarray:
    """Check and normalise to uint8 (T, H, W, C) with C in (1, 3); (T, H, W) is grey."""
    x = _numpy(frames)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3) or 0 in x.shape:
        raise MediaError(f"{path}: frames must be (T, H, W, C) with C in (1, 3), got {x.shape}")
    if x.dtype != np.uint8:
        raise MediaError(f"{path}: frames must be uint8, got {x.dtype}")
    return x


def _check_fps(fps: float, path: str | Path) -> float:
    if not fps > 0:
        raise MediaError(f"{path}: fps must be positive, got {fps}")
    return float(fps)


def save_gif(path: str | Path, frames: Any, fps: float) -> Path:
    """Write uint8 frames (T, H, W, C) as a looping GIF at ``fps`` frames per second.

    GIF stores frame durations in hundredths of a second: each frame lasts round(100 / fps)
    centiseconds (a 20 fps clip: 50 ms a frame). RGB frames get an adaptive 256-colour palette
    each. Pillow merges consecutive identical frames into one longer frame.
    """
    image_mod = _require("PIL.Image", "pillow", "save_gif")
    x = _frames_uint8(frames, path)
    duration_ms = 10 * max(1, round(100 / _check_fps(fps, path)))
    mode = "L" if x.shape[-1] == 1 else "RGB"
    images = [image_mod.fromarray(f[..., 0] if mode == "L" else f, mode) for f in x]
    with atomic_path(path) as tmp:
        images[0].save(
            tmp,
            format="GIF",
            save_all=True,
            append_images=images[1:],
            duration=duration_ms,
            loop=0,
            disposal=1,
        )
    return Path(path)


def save_mp4(path: str | Path, frames: Any, fps: float, crf: int = 18) -> Path:
    """Write uint8 frames (T, H, W, C) as an H.264 MP4 (yuv420p, constant quality ``crf``).

    Needs PyAV (the ``media`` extra). yuv420p needs even sizes: odd heights/widths are padded by
    repeating the last row/column. ``fps`` must be a rational number PyAV accepts (e.g. 20, 29.97).
    """
    av = _require("av", "av", "save_mp4")
    from fractions import Fraction

    x = _frames_uint8(frames, path)
    rate = Fraction(_check_fps(fps, path)).limit_denominator(1001)
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    pad_h, pad_w = x.shape[1] % 2, x.shape[2] % 2
    if pad_h or pad_w:
        x = np.pad(x, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    with atomic_path(path) as tmp, av.open(str(tmp), mode="w", format="mp4") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height = x.shape[2], x.shape[1]
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": str(int(crf))}
        for frame in x:
            packet = stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24"))
            container.mux(packet)
        container.mux(stream.encode())  # flush
    return Path(path)


# -----------------------------------------------------------------------------
# Grids of clips


def tile_clips(
    clips: Any, nrow: int = 8, pad: int = 1, pad_value: int | float | None = None
) -> np.ndarray:
    """Tile N clips (N, T, H, W, C) into one clip (T, H', W', C): ``nrow`` clips per row,
    row-major, ``pad`` pixels of ``pad_value`` around each (default: mid-grey, 128 for uint8 and
    0.5 for floats). Clips of one length only; the dtype is kept."""
    x = _numpy(clips)
    if x.ndim != 5 or 0 in x.shape:
        raise MediaError(f"tile_clips expects (N, T, H, W, C) clips, got shape {x.shape}")
    if nrow < 1 or pad < 0:
        raise MediaError(f"tile_clips needs nrow >= 1 and pad >= 0, got nrow={nrow}, pad={pad}")
    if pad_value is None:
        pad_value = 128 if np.issubdtype(x.dtype, np.integer) else 0.5
    n, t, h, w, c = x.shape
    cols = min(nrow, n)
    rows = math.ceil(n / cols)
    grid = np.full((t, rows * (h + pad) + pad, cols * (w + pad) + pad, c), pad_value, dtype=x.dtype)
    for i, clip in enumerate(x):
        r, col = divmod(i, cols)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        grid[:, top : top + h, left : left + w] = clip
    return grid
