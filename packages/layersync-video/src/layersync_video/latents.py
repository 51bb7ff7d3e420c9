"""Frame-wise VAE latents of videos: ``layersync video encode`` writes them, training reads them.

**One cache item = one source video**: its first ``W`` frames at the encode stride (source frames
0, s, ..., (W-1)s), each centre-cropped to a square and resized to ``--size`` exactly as the pixel
datasets do, then encoded frame by frame: posterior moments ``(c, W, h, w)`` in the core latent
cache (``layersync.latents``). ``W`` is ``--frames``, or by default the most that every usable
video gives (the shortest one's); a video shorter than ``W`` frames at the stride is an error
naming it (or skipped and counted with ``--on-error skip``). Per-item fields: ``labels`` (int64,
only when the source has labels: an array's ``labels``) and ``video`` (the source's name).

Training (``data.source=latents``) draws, from the item's seeded generator
(``SeededDataset.generator(i)``: exact resume), first the start ``s`` of ``data.frames``
consecutive latent frames in ``[0, W - data.frames]`` (no draw when ``W == data.frames``), then
the view (flipped or not, only with flipped moments and ``data.hflip``), then the posterior noise:
``z = (mean + std * eps)[:, s : s + data.frames] * scaling_factor``.

Sources with splits (CLEVRER's ``video_train``/``video_validation``; folders with ``train/`` and
``val/``) give two caches, ``OUT/train`` and ``OUT/eval``; any other source one cache at ``OUT``,
read for both splits. meta.json's ``source`` records where the videos are, for FVD's real clips.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Subset

from layersync.latents import LatentCache, LatentDataset, write_latent_cache
from layersync_video import data as d
from layersync_video.vae import downsampling, encode_frames, load_vae

__all__ = [
    "LatentVideoDataset",
    "cache_path",
    "detect_source",
    "encode_source",
    "encode_videos",
    "source_dataset",
    "source_roots",
]

SOURCES = ("clevrer", "folder", "frames", "array")
SHARD_BYTES = 256 * 2**20  # moments per shard file (a shard is built in memory)

# -----------------------------------------------------------------------------
# Sources: which videos, in which splits


def detect_source(path: str | os.PathLike) -> str:
    """``clevrer`` (a ``video_train`` folder), ``array`` (.npy/.npz), ``folder`` (video files,
    or one file) or ``frames`` (frame folders)."""
    path = Path(path)
    if not path.exists():
        raise d.VideoDataError(f"{path}: no such file or folder")
    if path.is_file():
        return "array" if path.suffix in (".npy", ".npz") else "folder"
    if (path / "video_train").is_dir():
        return "clevrer"
    has_video = any(p.suffix.lower() in d.VIDEO_EXTS for p in path.rglob("*"))
    return "folder" if has_video else "frames"


def source_roots(kind: str, path: str | os.PathLike) -> dict[str | None, Path]:
    """``{"train": root, "eval": root}`` for a source with splits, else ``{None: path}``."""
    path = Path(path)
    if kind not in SOURCES:
        raise ValueError(f"--source = {kind!r}: use one of {', '.join(SOURCES)}")
    if kind == "clevrer":
        roots = {"train": path / "video_train", "eval": path / "video_validation"}
        for root in roots.values():
            if not root.is_dir():
                raise d.VideoDataError(f"{path}: no {root.name}/ folder (CLEVRER layout)")
        return roots
    if kind == "array":
        return {None: path}
    train = path / "train" if (path / "train").is_dir() else path  # as the pixel sources do
    val = path / "val" if (path / "val").is_dir() else path
    return {None: path} if train == val else {"train": train, "eval": val}


def source_dataset(
    kind: str,
    root: str | os.PathLike,
    *,
    frames: int,
    stride: int,
    size: int | None,
    on_error: d.OnError = "error",
    seed: int | None = None,
    random_start: bool = False,
) -> d.ClipDataset:
    """The pixel clip dataset of one split's ``root`` (``source_roots``), never flipped."""
    clip = dict(frames=frames, stride=stride, size=size, seed=seed, random_start=random_start)
    if kind == "array":
        return d.ArrayVideoDataset(root, **clip)
    if kind == "frames":
        return d.FrameFolderDataset(root, on_error=on_error, **clip)
    # skip: count every frame up front, so no video fails half-way through the encoding
    count = partial(d.count_frames, exact=on_error == "skip")
    return d.VideoFileDataset(Path(root), on_error=on_error, count=count, **clip)


def _names(dataset: d.ClipDataset, root: Path) -> list[str]:
    """A readable name per video (path relative to the split root; ``file[i]`` for arrays)."""
    if isinstance(dataset, d.VideoFileDataset):
        paths = dataset.paths
    elif isinstance(dataset, d.FrameFolderDataset):
        paths = [files[0].parent for files in dataset.videos]
    else:
        return [f"{root.name}[{i}]" for i in range(len(dataset))]
    if not root.is_dir():  # a single video file
        return [p.name for p in paths]
    return [str(p.relative_to(root)) if p.is_relative_to(root) else str(p) for p in paths]


# -----------------------------------------------------------------------------
# Encoding


def encode_videos(
    dataset: d.ClipDataset,
    vae: Any,
    out_dir: str | os.PathLike,
    *,
    info: dict[str, Any],
    flip: bool = False,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float16,
    shard_size: int | None = None,
    num_workers: int = 0,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Encode every clip of ``dataset`` (items ``(clip (C, W, H, W) in [-1, 1], label)``, start
    0, no flips) frame by frame with ``vae`` into a latent cache at ``out_dir``; ``info`` goes to
    meta.json (and identifies the job for resuming). ``flip`` also stores the moments of the
    horizontally flipped frames. ``batch_size``: frames per VAE forward. Returns ``out_dir``."""
    n, root = len(dataset), Path(info["source"]["root"])
    names = _names(dataset, root)
    labels = getattr(dataset, "labels", None)
    scale = float(vae.config.scaling_factor)
    if shard_size is None:
        c, f = vae.config.latent_channels, downsampling(vae.config)
        h = -(-dataset.size // f) if dataset.size else 1
        item = 2 * (1 + flip) * c * dataset.frames * h * h * torch.empty(0, dtype=dtype).itemsize
        shard_size = max(1, SHARD_BYTES // item)
    last: list[tuple[int, int]] = []

    def report(done: int, total: int) -> None:  # per video, and per kept shard; no repeats
        if progress is not None and (not last or last[-1] != (done, total)):
            last.append((done, total))
            progress(done, total)

    def encode(lo: int, hi: int) -> dict[str, Any]:
        parts: dict[str, list[torch.Tensor]] = {"mean": [], "std": []}
        if flip:
            parts.update(mean_flip=[], std_flip=[])
        loader = DataLoader(
            Subset(dataset, range(lo, hi)), batch_size=None, num_workers=num_workers
        )
        for k, (clip, _) in enumerate(loader):
            clip = clip.to(device)
            views = {"": clip, "_flip": clip.flip(-1)} if flip else {"": clip}
            for suffix, x in views.items():
                mean, std = encode_frames(vae, x, batch_size)
                parts["mean" + suffix].append(mean.cpu())
                parts["std" + suffix].append(std.cpu())
            report(lo + k + 1, n)
        out: dict[str, Any] = {key: torch.stack(v) for key, v in parts.items()}
        if labels is not None:
            out["labels"] = torch.as_tensor(labels[lo:hi], dtype=torch.int64)
        out["video"] = names[lo:hi]
        return out

    meta = {
        **info,
        "modality": "video",
        "vae_scaling_factor": scale,
        "num_classes": int(dataset.num_classes) if labels is not None else 1,
        "skipped": dict(dataset.skipped),
    }
    return write_latent_cache(
        out_dir,
        n,
        encode,
        scale_factor=scale,
        dtype=dtype,
        shard_size=shard_size,
        info=meta,
        plan={**info, "flip": flip},
        overwrite=overwrite,
        progress=report,
    )


def _window(dataset: d.ClipDataset, stride: int) -> int:
    """Frames at ``stride`` the shortest video of ``dataset`` gives."""
    return min((n - 1) // stride + 1 for n in dataset.lengths)


def _same_job(cache_dir: Path, info: dict[str, Any], flip: bool) -> bool:
    """Whether ``cache_dir`` is a complete cache of the same source, VAE and views."""
    try:
        meta = LatentCache(cache_dir).meta
    except (OSError, ValueError):
        return False
    keys = ("source", "vae")
    return all(meta.get(k) == info[k] for k in keys) and meta.get("flip") == flip


def encode_source(
    source: str | os.PathLike,
    vae_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    size: int,
    frames: int | None = None,
    stride: int = 1,
    kind: str = "auto",
    on_error: d.OnError = "error",
    flip: bool = False,
    overwrite: bool = False,
    status: Callable[[str], None] | None = None,
    **encode_kw: Any,
) -> dict[str | None, tuple[Path, d.ClipDataset | None]]:
    """Encode every split of ``source`` (``kind`` or detected) into ``out_dir`` (``OUT/train``
    and ``OUT/eval``, or ``OUT``): ``{split: (cache, dataset)}``, dataset None for a cache kept
    from an earlier run of the same job. ``encode_kw`` go to :func:`encode_videos`."""
    if (frames is not None and frames < 1) or stride < 1 or size < 1:
        raise ValueError(f"--frames, --stride and --size must be >= 1 ({frames}, {stride}, {size})")
    kind = detect_source(source) if kind == "auto" else kind
    roots = source_roots(kind, source)
    vae_folder = Path(vae_dir).resolve()
    vae = load_vae(vae_dir, key="--vae").to(encode_kw.get("device", "cpu"))
    done: dict[str | None, tuple[Path, d.ClipDataset | None]] = {}
    for split, root in roots.items():
        target = Path(out_dir) / split if split else Path(out_dir)
        ds = source_dataset(
            kind, root, frames=frames or 1, stride=stride, size=size, on_error=on_error
        )
        ds.frames = frames or _window(ds, stride)
        spec = dict(kind=kind, root=str(Path(root).resolve()), size=size, stride=stride)
        info = {"source": {**spec, "frames": ds.frames, "on_error": on_error, "videos": len(ds)}}
        info["vae"] = str(vae_folder)
        if target.exists() and not overwrite:
            if _same_job(target, info, flip):
                done[split] = (target, None)
                continue
            raise FileExistsError(
                f"--out {target}: exists and is not this job's cache (--overwrite replaces it)"
            )
        if status is not None:
            status(f"encoding {len(ds)} videos of {root} ({ds.frames} frames each) into {target}")
        path = encode_videos(
            ds, vae, target, info=info, flip=flip, overwrite=overwrite, **encode_kw
        )
        done[split] = (path, ds)
    return done


# -----------------------------------------------------------------------------
# Reading (data.source = latents)


def cache_path(path: str | os.PathLike, split: str) -> Path:
    """The cache of ``split`` ("train" or "eval") under ``path``: ``path/train`` or
    ``path/eval`` when ``video encode`` wrote two, else ``path`` itself."""
    path = Path(path)
    sub = path / ("train" if split == "train" else "eval")
    if (sub / "meta.json").is_file():
        return sub
    if (path / "meta.json").is_file():
        return path
    raise FileNotFoundError(
        f"data.path = {path}: not a latent cache (no meta.json, train/ or eval/): "
        "write one with `layersync video encode`"
    )


class LatentVideoDataset(LatentDataset):
    """Items ``(z (c, frames, h, w), label)`` from a cache written by ``encode_videos``: a
    random window of ``frames`` latent frames, posterior sample scaled by the VAE's factor
    (the draws and their order: module docstring). Unlabelled caches give label 0."""

    def __init__(
        self,
        path: str | os.PathLike,
        frames: int,
        *,
        flip: bool = False,
        sample: bool = True,
        seed: int | None = None,
    ) -> None:
        has_labels = "labels" in LatentCache(path).fields
        super().__init__(
            path, ["labels"] if has_labels else [], flip=flip, sample=sample, seed=seed
        )
        meta_file = self.path / "meta.json"
        if len(self.latent_shape) != 4:
            raise ValueError(
                f"{meta_file}: not a video latent cache (latent_shape {list(self.latent_shape)}, "
                "expected [c, frames, h, w])"
            )
        self.channels, self.window, self.latent_size = self.latent_shape[:3]
        if frames > self.window:
            raise ValueError(
                f"data.frames = {frames}: the cache {self.path} holds {self.window} latent frames "
                "per video (encode with more --frames, or lower data.frames)"
            )
        self.frames = frames
        self.labels = self.columns.get("labels")
        self.num_classes = int(self.meta.get("num_classes") or 1)
        self.source: dict[str, Any] = self.meta.get("source") or {}

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        index = range(len(self))[index]
        g = self.generator(index)
        start, free = 0, self.window - self.frames
        if free > 0:
            start = int(torch.randint(free + 1, (1,), generator=g))
        flipped = self.flip and self.coin(g)
        mean, std = self.cache.moments(index, flipped)
        mean, std = mean[:, start : start + self.frames], std[:, start : start + self.frames]
        z = mean + std * torch.randn(mean.shape, generator=g) if self.sample else mean
        label = 0 if self.labels is None else int(self.labels[index])
        return z * self.scale_factor, torch.tensor(label, dtype=torch.int64)

    def __repr__(self) -> str:
        c, w, h, _ = self.latent_shape
        return (
            f"LatentVideoDataset({str(self.path)!r}, n={len(self)}, latent={c}x{w}x{h}x{h}, "
            f"frames={self.frames}, num_classes={self.num_classes})"
        )
