"""Pre-extracted VAE latents, so training never runs the VAE encoder per step.

The official SiT training encodes each batch and samples the posterior every step:
``vae.encode(x).latent_dist.sample().mul_(0.18215)``. We cache the posterior's moments (mean and
std of the diagonal Gaussian) once, and each visit of an item draws a fresh
``z = (mean + std * eps) * scale_factor``, which keeps that per-step sampling.

Cache layout (a directory, written to ``<out>.partial`` and renamed when complete)::

    meta.json                  format, version, count, latent_shape, scale_factor, vae,
                               image_size, num_classes, source, flip, dtype, shards
    shard-00000.safetensors    mean, std: (n, C, h, w) float16 (default); labels: (n,) int64;
                               mean_flip, std_flip: moments of the flipped images (flip=True)

Randomness of ``LatentDataset`` (see ``layersync_image.data``): item ``i`` first draws the view
(flipped or not, only when flipped moments are used) with ``torch.rand(1) < 0.5``, then
``eps = torch.randn(C, h, w)``, both from ``dataset.generator(i)`` (global RNG when ``seed`` is None).
"""

from __future__ import annotations

import bisect
import importlib.util
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import DataLoader, Dataset, Subset

from layersync_image.data import BaseDataset

FORMAT = "layersync-latents"
VERSION = 1
SD_VAE_SCALE = 0.18215

# -----------------------------------------------------------------------------
# Loading the VAE (optional dependency: diffusers)


def load_vae(vae_dir: str | os.PathLike) -> Any:
    """A diffusers ``AutoencoderKL`` from a LOCAL folder (``config.json`` + weights, as written
    by ``save_pretrained``; a pipeline folder with a ``vae/`` sub-folder also works)."""
    vae_dir = Path(vae_dir)
    if not (vae_dir / "config.json").is_file() and (vae_dir / "vae" / "config.json").is_file():
        vae_dir = vae_dir / "vae"
    if not (vae_dir / "config.json").is_file():
        raise FileNotFoundError(
            f"no diffusers VAE in {vae_dir}: expected config.json and weights "
            "(a folder written by AutoencoderKL.save_pretrained)"
        )
    try:
        from diffusers import AutoencoderKL
    except ImportError as e:
        raise ImportError(
            "encoding latents needs diffusers: pip install 'layersync-image[vae]'"
        ) from e
    try:
        # low_cpu_mem_usage needs `accelerate`; without it diffusers warns and falls back
        lazy_init = importlib.util.find_spec("accelerate") is not None
        return AutoencoderKL.from_pretrained(
            vae_dir, local_files_only=True, low_cpu_mem_usage=lazy_init
        )
    except (OSError, ValueError, RuntimeError) as e:
        raise OSError(f"cannot load AutoencoderKL from {vae_dir}: {e}") from e


# -----------------------------------------------------------------------------
# Encoding a dataset into a cache


def _atomic_save(tensors: dict[str, torch.Tensor], path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        save_file(tensors, str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_json(obj: dict, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def encode_dataset(
    dataset: Dataset,
    vae_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    flip: bool = False,
    scale_factor: float | None = SD_VAE_SCALE,
    dtype: torch.dtype = torch.float16,
    shard_size: int = 16384,
    num_workers: int = 0,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Encode an image dataset (items ``(image in [-1, 1], label)``) with the VAE in ``vae_dir``
    and write the moment cache to ``out_dir``; returns ``out_dir``.

    The VAE runs in float32 under ``torch.no_grad``; 1-channel images are repeated to RGB for a
    3-channel VAE. ``flip=True`` also stores the moments of the horizontally flipped images (the
    dataset itself must not flip at random). ``scale_factor=None`` takes the VAE config's
    ``scaling_factor``. Shards are written atomically to ``<out_dir>.partial``: rerunning the
    same call after an interruption keeps the finished shards. ``progress(done, total)`` is
    called after each batch.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"latent cache {out_dir} already exists (pass overwrite=True)")
    if getattr(dataset, "hflip", False):
        raise ValueError(
            "the dataset flips images at random (hflip=True): build it with hflip=False and "
            "pass flip=True here to cache both views"
        )
    n = len(dataset)
    if n == 0:
        raise ValueError("cannot encode an empty dataset")
    vae = load_vae(vae_dir).to(device).eval()
    scale = float(vae.config.scaling_factor if scale_factor is None else scale_factor)

    # resume a partial run with the same settings, otherwise start afresh
    partial = out_dir.with_name(out_dir.name + ".partial")
    plan = {
        "count": n,
        "source": repr(dataset),
        "vae": str(Path(vae_dir).resolve()),
        "flip": flip,
        "dtype": str(dtype).removeprefix("torch."),
        "shard_size": shard_size,
    }
    plan_file = partial / "plan.json"
    if partial.exists():
        try:
            same = json.loads(plan_file.read_text()) == plan
        except (OSError, ValueError):
            same = False
        if not same:
            shutil.rmtree(partial)
    partial.mkdir(parents=True, exist_ok=True)
    _write_json(plan, plan_file)

    shards = []
    for s, lo in enumerate(range(0, n, shard_size)):
        hi = min(n, lo + shard_size)
        file = partial / f"shard-{s:05d}.safetensors"
        shards.append({"file": file.name, "count": hi - lo})
        if file.is_file():  # finished by an earlier, interrupted run
            if progress is not None:
                progress(hi, n)
            continue
        loader = DataLoader(
            Subset(dataset, range(lo, hi)), batch_size=batch_size, num_workers=num_workers
        )
        tensors = _encode_batches(loader, vae, device, flip, dtype, vae_dir, lo, n, progress)
        _atomic_save(tensors, file)

    with safe_open(partial / shards[0]["file"], framework="pt") as f:
        latent_shape = list(f.get_slice("mean").get_shape()[1:])
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "count": n,
        "latent_shape": latent_shape,
        "scale_factor": scale,
        "vae": plan["vae"],
        "vae_scaling_factor": vae.config.scaling_factor,
        "image_size": getattr(dataset, "image_size", None),
        "image_channels": getattr(dataset, "channels", None),
        "num_classes": getattr(dataset, "num_classes", None),
        "source": plan["source"],
        "flip": flip,
        "dtype": plan["dtype"],
        "shards": shards,
    }
    _write_json(meta, partial / "meta.json")
    plan_file.unlink()
    if out_dir.exists():  # overwrite=True: swap in the new cache, then delete the old one
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        os.replace(out_dir, old)
        os.replace(partial, out_dir)
        shutil.rmtree(old)
    else:
        os.replace(partial, out_dir)
    return out_dir


def _encode_batches(
    loader: DataLoader,
    vae: Any,
    device: str | torch.device,
    flip: bool,
    dtype: torch.dtype,
    vae_dir: str | os.PathLike,
    start: int,
    total: int,
    progress: Callable[[int, int], None] | None,
) -> dict[str, torch.Tensor]:
    """Moments and labels of every item of ``loader`` (items start..) as CPU tensors."""
    names = ["mean", "std"] + (["mean_flip", "std_flip"] if flip else [])
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in [*names, "labels"]}
    channels = vae.config.in_channels
    done = start
    with torch.no_grad():
        for x, y in loader:
            x = x.to(device, torch.float32)
            if x.shape[1] == 1 and channels == 3:
                x = x.expand(-1, 3, -1, -1)
            if x.shape[1] != channels:
                raise ValueError(
                    f"the VAE in {vae_dir} takes {channels} channels, the dataset gives {x.shape[1]}"
                )
            b = len(x)
            dist = vae.encode(torch.cat([x, x.flip(-1)]) if flip else x).latent_dist
            for k in names:
                v = dist.mean if k.startswith("mean") else dist.std
                v = (v[b:] if k.endswith("_flip") else v[:b]).to("cpu", dtype)
                if not torch.isfinite(v).all():
                    raise ValueError(
                        f"non-finite latent {k} in items {done}..{done + b - 1} "
                        f"(VAE {vae_dir}, dtype {dtype})"
                    )
                parts[k].append(v)
            parts["labels"].append(torch.as_tensor(y, dtype=torch.int64).reshape(-1))
            done += b
            if progress is not None:
                progress(done, total)
    return {k: torch.cat(v).contiguous() for k, v in parts.items()}


# -----------------------------------------------------------------------------
# Reading a cache


class LatentDataset(BaseDataset):
    """Items ``(z, label)`` with ``z = (mean + std * eps) * scale_factor`` from a cache written by
    ``encode_dataset``; ``sample=False`` gives ``mean * scale_factor``. ``flip=None`` uses the
    cached flipped moments when present (picking a view at random per item), ``False`` never,
    ``True`` requires them. ``channels`` / ``image_size`` describe the latent (the model input);
    ``source_image_size`` the encoded images."""

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        flip: bool | None = None,
        sample: bool = True,
        seed: int | None = None,
    ) -> None:
        super().__init__(seed)
        self.path = Path(path)
        meta_file = self.path / "meta.json"
        if not meta_file.is_file():
            raise FileNotFoundError(f"not a latent cache (no meta.json): {self.path}")
        self.meta = json.loads(meta_file.read_text())
        if self.meta.get("format") != FORMAT or self.meta.get("version") != VERSION:
            raise ValueError(
                f"{meta_file}: not a {FORMAT} v{VERSION} cache "
                f"(format={self.meta.get('format')!r}, version={self.meta.get('version')!r})"
            )
        if flip and not self.meta["flip"]:
            raise ValueError(f"{self.path} holds no flipped latents; re-encode with flip=True")
        self.flip = self.meta["flip"] if flip is None else flip
        self.sample = sample
        self.scale_factor = float(self.meta["scale_factor"])
        self.channels, h, w = self.meta["latent_shape"]
        if h != w:
            raise ValueError(f"{meta_file}: latents must be square, got {h}x{w}")
        self.image_size = h
        self.source_image_size = self.meta["image_size"]
        self.files = [self.path / s["file"] for s in self.meta["shards"]]
        counts = [s["count"] for s in self.meta["shards"]]
        self.starts = [0, *np.cumsum(counts)[:-1].tolist()]
        self._handles: dict[int, Any] = {}
        labels = []
        for i, (file, count) in enumerate(zip(self.files, counts, strict=True)):
            if not file.is_file():
                raise FileNotFoundError(f"latent cache shard missing: {file}")
            t = self._open(i).get_tensor("labels")
            if t.shape != (count,):
                raise ValueError(f"{file}: expected {count} labels, got shape {tuple(t.shape)}")
            labels.append(t)
        self.labels = torch.cat(labels)
        if len(self.labels) != self.meta["count"]:
            raise ValueError(f"{meta_file}: count {self.meta['count']} != {len(self.labels)}")
        nc = self.meta.get("num_classes")
        self.num_classes = int(nc) if nc is not None else int(self.labels.max()) + 1

    def _open(self, shard: int) -> Any:
        if shard not in self._handles:
            self._handles[shard] = safe_open(self.files[shard], framework="pt")
        return self._handles[shard]

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_handles"] = {}  # file handles do not pickle; each worker reopens them
        return state

    def __len__(self) -> int:
        return len(self.labels)

    def moments(self, index: int, flipped: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """The cached posterior (mean, std) of item ``index`` as float32 (C, h, w)."""
        index = range(len(self))[index]
        shard = bisect.bisect_right(self.starts, index) - 1
        off = index - self.starts[shard]
        f = self._open(shard)
        suffix = "_flip" if flipped else ""
        mean = f.get_slice("mean" + suffix)[off : off + 1][0].float()
        std = f.get_slice("std" + suffix)[off : off + 1][0].float()
        return mean, std

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        index = range(len(self))[index]
        g = self.generator(index)
        flipped = bool(self.flip) and self.coin(g)
        mean, std = self.moments(index, flipped)
        z = mean + std * torch.randn(mean.shape, generator=g) if self.sample else mean
        return z * self.scale_factor, self.labels[index].clone()

    def __repr__(self) -> str:
        return (
            f"LatentDataset({str(self.path)!r}, n={len(self)}, latent={self.channels}x"
            f"{self.image_size}x{self.image_size}, num_classes={self.num_classes})"
        )
