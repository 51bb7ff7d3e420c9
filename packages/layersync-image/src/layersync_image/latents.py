"""Pre-extracted VAE latents, so training never runs the VAE encoder per step.

The official SiT training encodes each batch and samples the posterior every step:
``vae.encode(x).latent_dist.sample().mul_(0.18215)``. We cache the posterior's moments (mean and
std of the diagonal Gaussian) once, and each visit of an item draws a fresh
``z = (mean + std * eps) * scale_factor``, which keeps that per-step sampling.

The cache is core's shape-agnostic format (:mod:`layersync.latents`: a directory written to
``<out>.partial`` and renamed when complete; ``meta.json`` + safetensors shards of ``mean``,
``std`` (n, C, h, w) float16 by default, ``mean_flip``/``std_flip`` with ``flip=True``), with one
per-item field ``labels`` (n,) int64 and the image facts (vae, image_size, image_channels,
num_classes, source) in meta.json. Caches written before core owned the format read unchanged.

Randomness of ``LatentDataset``: item ``i`` first draws the view (flipped or not, only when
flipped moments are used) with ``torch.rand(1) < 0.5``, then ``eps = torch.randn(C, h, w)``, both
from ``dataset.generator(i)`` (global RNG when ``seed`` is None).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from layersync.assets import load_diffusers
from layersync.latents import FORMAT, VERSION, write_latent_cache
from layersync.latents import LatentDataset as CoreLatentDataset

__all__ = ["FORMAT", "SD_VAE_SCALE", "VERSION", "LatentDataset", "encode_dataset", "load_vae"]

SD_VAE_SCALE = 0.18215
INSTALL = "pip install 'layersync-image[vae]'"

# -----------------------------------------------------------------------------
# Loading the VAE (optional dependency: diffusers)


def load_vae(vae_dir: str | os.PathLike, key: str = "vae") -> Any:
    """A diffusers ``AutoencoderKL`` from a LOCAL folder (``config.json`` + weights, as written
    by ``save_pretrained``; a pipeline folder with a ``vae/`` sub-folder also works), in eval
    mode; AssetError naming ``key`` and the folder otherwise."""
    return load_diffusers(vae_dir, "AutoencoderKL", key=key, install=INSTALL)


# -----------------------------------------------------------------------------
# Encoding a dataset into a cache (the format and its writing are layersync.latents')


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
    called after each batch (and once for each shard kept from an interrupted run).
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
    vae = load_vae(vae_dir, key="--vae").to(device)
    scale = float(vae.config.scaling_factor if scale_factor is None else scale_factor)
    last: list[tuple[int, int]] = []

    def report(done: int, total: int) -> None:  # per batch, and per kept shard; no repeats
        if progress is not None and (not last or last[-1] != (done, total)):
            last.append((done, total))
            progress(done, total)

    def encode(lo: int, hi: int) -> dict[str, torch.Tensor]:
        loader = DataLoader(
            Subset(dataset, range(lo, hi)), batch_size=batch_size, num_workers=num_workers
        )
        return _encode_batches(loader, vae, device, flip, dtype, vae_dir, lo, n, report)

    vae_path = str(Path(vae_dir).resolve())
    return write_latent_cache(
        out_dir,
        n,
        encode,
        scale_factor=scale,
        dtype=dtype,
        shard_size=shard_size,
        info={
            "vae": vae_path,
            "vae_scaling_factor": vae.config.scaling_factor,
            "image_size": getattr(dataset, "image_size", None),
            "image_channels": getattr(dataset, "channels", None),
            "num_classes": getattr(dataset, "num_classes", None),
            "source": repr(dataset),
        },
        plan={"source": repr(dataset), "vae": vae_path, "flip": flip},
        overwrite=overwrite,
        progress=report,
    )


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


class LatentDataset(CoreLatentDataset):
    """Items ``(z, label)`` with ``z = (mean + std * eps) * scale_factor`` from a cache written by
    ``encode_dataset`` (:class:`layersync.latents.LatentDataset` with the ``labels`` field);
    ``sample=False`` gives ``mean * scale_factor``. ``flip=None`` uses the cached flipped moments
    when present (picking a view at random per item), ``False`` never, ``True`` requires them.
    ``channels`` / ``image_size`` describe the latent (the model input); ``source_image_size``
    the encoded images."""

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        flip: bool | None = None,
        sample: bool = True,
        seed: int | None = None,
    ) -> None:
        super().__init__(path, ["labels"], flip=flip, sample=sample, seed=seed)
        meta_file = self.path / "meta.json"
        if len(self.latent_shape) != 3 or self.latent_shape[1] != self.latent_shape[2]:
            raise ValueError(
                f"{meta_file}: latents must be square (C, h, h), got {self.latent_shape}"
            )
        self.channels, self.image_size = self.latent_shape[0], self.latent_shape[1]
        self.source_image_size = self.meta.get("image_size")
        self.labels = self.columns["labels"]
        if self.labels.dtype != torch.int64 or self.labels.ndim != 1:
            raise ValueError(f"{meta_file}: labels must be int64 (N,), got {self.labels.dtype}")
        nc = self.meta.get("num_classes")
        self.num_classes = int(nc) if nc is not None else int(self.labels.max()) + 1

    def moments(self, index: int, flipped: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """The cached posterior (mean, std) of item ``index`` as float32 (C, h, w)."""
        return self.cache.moments(index, flipped)

    def __repr__(self) -> str:
        return (
            f"LatentDataset({str(self.path)!r}, n={len(self)}, latent={self.channels}x"
            f"{self.image_size}x{self.image_size}, num_classes={self.num_classes})"
        )
