"""Shape-agnostic latent cache: VAE posterior moments per item, written once, sampled per visit.

Training on latents never runs the VAE encoder per step. The posterior of each item (the mean and
std of a diagonal Gaussian, any shape: (C, h, w) images, (64, L) audio, (C, F, h, w) video) is
stored once; each visit draws a fresh ``z = (mean + std * eps) * scale_factor``, as the official
code's per-step ``latent_dist.sample()`` does. Extra per-item fields ride along: tensors (labels,
multi-hot tags, lengths) and text (captions, or a list of captions per item).

Layout (a directory, built as ``<out>.partial`` and renamed when complete)::

    meta.json                  format, version, count, latent_shape, scale_factor, dtype, flip,
                               fields {name: {kind, dtype, shape}}, shards, + the writer's info
    shard-00000.safetensors    mean, std (n, *latent_shape); mean_flip/std_flip when flip;
                               one tensor per tensor field (n, *shape)
    shard-00000.json           text fields: {name: [n items]} (only when there are text fields)

The image plugin's caches (format ``layersync-latents`` v1, a ``labels`` tensor and no ``fields``
entry) read as they are.
"""

from __future__ import annotations

import bisect
import json
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from layersync.fileio import atomic_write
from layersync.train.data import SeededDataset

__all__ = ["FORMAT", "VERSION", "LatentCache", "LatentDataset", "write_latent_cache"]

FORMAT = "layersync-latents"
VERSION = 1
MOMENTS = ("mean", "std", "mean_flip", "std_flip")
EncodeRange = Callable[[int, int], Mapping[str, Any]]
"""``encode(lo, hi)`` -> the moments and fields of items ``lo .. hi-1`` (see write_latent_cache)."""


# -----------------------------------------------------------------------------
# Writing


def _is_text(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and not torch.is_tensor(value)


def _check_range(part: Mapping[str, Any], lo: int, hi: int) -> None:
    n = hi - lo
    for k in ("mean", "std"):
        if k not in part:
            raise ValueError(f"encode({lo}, {hi}) returned no {k!r} (keys: {sorted(part)})")
    if ("mean_flip" in part) != ("std_flip" in part):
        raise ValueError(f"encode({lo}, {hi}) must return both mean_flip and std_flip, or neither")
    for k, v in part.items():
        rows = len(v) if _is_text(v) else (v.shape[0] if torch.is_tensor(v) and v.ndim else -1)
        if rows != n:
            raise ValueError(f"encode({lo}, {hi}) field {k!r}: expected {n} rows, got {rows}")
        if k in MOMENTS and not torch.isfinite(v).all():
            raise ValueError(f"non-finite latent {k} in items {lo}..{hi - 1}")
    if part["std"].shape != part["mean"].shape:
        raise ValueError(f"std {tuple(part['std'].shape)} != mean {tuple(part['mean'].shape)}")


def write_latent_cache(
    out_dir: str | os.PathLike,
    count: int,
    encode: EncodeRange,
    *,
    scale_factor: float,
    dtype: torch.dtype = torch.float16,
    shard_size: int = 16384,
    info: Mapping[str, Any] | None = None,
    plan: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write a latent cache of ``count`` items to ``out_dir``; returns ``out_dir``.

    ``encode(lo, hi)`` returns, for items ``lo .. hi-1`` (one shard), a dict with ``mean`` and
    ``std`` ``(n, *latent_shape)`` (optionally ``mean_flip``/``std_flip``), any per-item tensor
    fields ``(n, ...)`` and any text fields (a list of n strings or n lists of strings). Moments are
    stored as ``dtype``, fields as given. ``info`` is copied into meta.json (VAE path, source
    sizes...). Shards go to ``<out_dir>.partial`` atomically: calling again with the same ``plan``
    (anything that identifies the job; default: count, dtype, shard size) after an interruption
    keeps the finished shards. ``progress(done, count)`` is called after each shard.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"latent cache {out_dir} already exists (pass overwrite=True)")
    if count < 1:
        raise ValueError("cannot write an empty latent cache")
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    dtype_name = str(dtype).removeprefix("torch.")
    plan = {"count": count, "dtype": dtype_name, "shard_size": shard_size, **(plan or {})}

    partial = out_dir.with_name(out_dir.name + ".partial")
    plan_file = partial / "plan.json"
    if partial.exists():  # resume a partial run of the same job, otherwise start afresh
        try:
            same = json.loads(plan_file.read_text()) == json.loads(json.dumps(plan))
        except (OSError, ValueError):
            same = False
        if not same:
            shutil.rmtree(partial)
    partial.mkdir(parents=True, exist_ok=True)
    atomic_write(plan_file, json.dumps(plan, indent=2) + "\n")

    shards = []
    for s, lo in enumerate(range(0, count, shard_size)):
        hi = min(count, lo + shard_size)
        file = partial / f"shard-{s:05d}.safetensors"
        shards.append({"file": file.name, "count": hi - lo})
        if not file.is_file():  # else: finished by an earlier, interrupted run
            part = dict(encode(lo, hi))
            _check_range(part, lo, hi)
            tensors, texts = {}, {}
            for k, v in part.items():
                if _is_text(v):
                    texts[k] = [list(x) if _is_text(x) else str(x) for x in v]
                else:
                    v = v.detach().to("cpu")
                    tensors[k] = (v.to(dtype) if k in MOMENTS else v).contiguous()
            if texts:
                atomic_write(file.with_suffix(".json"), json.dumps(texts) + "\n")
            order = {"fields": json.dumps([k for k in part if k not in MOMENTS])}  # keep the order
            atomic_write(file, lambda tmp, t=tensors, m=order: save_file(t, str(tmp), metadata=m))
        if progress is not None:
            progress(hi, count)

    meta = {**(info or {}), **_describe(partial / shards[0]["file"])}
    meta.update(
        format=FORMAT,
        version=VERSION,
        count=count,
        scale_factor=float(scale_factor),
        dtype=dtype_name,
        shards=shards,
    )
    atomic_write(partial / "meta.json", json.dumps(meta, indent=2) + "\n")
    plan_file.unlink()
    if out_dir.exists():  # overwrite=True: swap in the new cache, then delete the old one
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        os.replace(out_dir, old)
        os.replace(partial, out_dir)
        shutil.rmtree(old)
    else:
        os.replace(partial, out_dir)
    return out_dir


def _describe(first_shard: Path) -> dict[str, Any]:
    """latent_shape, flip and the field table, read from the first shard."""
    fields: dict[str, Any] = {}
    text_file = first_shard.with_suffix(".json")
    texts = json.loads(text_file.read_text()) if text_file.is_file() else {}
    with safe_open(str(first_shard), framework="pt") as f:
        keys = list(f.keys())
        latent_shape = list(f.get_slice("mean").get_shape()[1:])
        for k in json.loads((f.metadata() or {}).get("fields", "[]")):  # the encoder's order
            if k in texts:
                fields[k] = {"kind": "text"}
            else:
                t = f.get_slice(k)
                fields[k] = {
                    "kind": "tensor",
                    "dtype": _dtype_name(t.get_dtype()),
                    "shape": list(t.get_shape()[1:]),
                }
    return {"latent_shape": latent_shape, "flip": "mean_flip" in keys, "fields": fields}


_SAFETENSORS_DTYPES = {
    "F16": "float16",
    "BF16": "bfloat16",
    "F32": "float32",
    "F64": "float64",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
}


def _dtype_name(code: str) -> str:
    return _SAFETENSORS_DTYPES.get(code, code.lower())


# -----------------------------------------------------------------------------
# Reading


class LatentCache:
    """Read access to a cache: ``moments(i)``, whole ``field(name)`` columns, the meta data.

    Pickles without its open file handles (DataLoader workers reopen them).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        meta_file = self.path / "meta.json"
        if not meta_file.is_file():
            raise FileNotFoundError(f"not a latent cache (no meta.json): {self.path}")
        try:
            self.meta = json.loads(meta_file.read_text())
        except ValueError as e:
            raise ValueError(f"{meta_file}: not valid JSON ({e})") from e
        if self.meta.get("format") != FORMAT or self.meta.get("version") != VERSION:
            raise ValueError(
                f"{meta_file}: not a {FORMAT} v{VERSION} cache "
                f"(format={self.meta.get('format')!r}, version={self.meta.get('version')!r})"
            )
        self.latent_shape = tuple(int(s) for s in self.meta["latent_shape"])
        self.scale_factor = float(self.meta["scale_factor"])
        self.has_flip = bool(self.meta.get("flip", False))
        self.files = [self.path / s["file"] for s in self.meta["shards"]]
        self.counts = [int(s["count"]) for s in self.meta["shards"]]
        self.starts = [0, *np.cumsum(self.counts)[:-1].tolist()]
        for file in self.files:
            if not file.is_file():
                raise FileNotFoundError(f"latent cache shard missing: {file}")
        if sum(self.counts) != self.meta["count"]:
            raise ValueError(f"{meta_file}: count {self.meta['count']} != {sum(self.counts)}")
        # caches written before per-item fields were described hold just `labels`; a cache
        # written with no fields at all has an empty `fields` entry
        self.fields: dict[str, Any] = self.meta.get("fields", None)
        if self.fields is None:
            self.fields = {"labels": {"kind": "tensor", "dtype": "int64", "shape": []}}
        self._handles: dict[int, Any] = {}
        self._columns: dict[str, Any] = {}

    def __len__(self) -> int:
        return int(self.meta["count"])

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_handles"] = {}  # file handles do not pickle; each worker reopens them
        return state

    def _open(self, shard: int) -> Any:
        if shard not in self._handles:
            self._handles[shard] = safe_open(str(self.files[shard]), framework="pt")
        return self._handles[shard]

    def _locate(self, index: int) -> tuple[int, int]:
        index = range(len(self))[index]
        shard = bisect.bisect_right(self.starts, index) - 1
        return shard, index - self.starts[shard]

    def moments(self, index: int, flipped: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """The posterior (mean, std) of item ``index`` as float32 ``latent_shape`` tensors."""
        if flipped and not self.has_flip:
            raise ValueError(f"{self.path} holds no flipped latents")
        shard, off = self._locate(index)
        f = self._open(shard)
        suffix = "_flip" if flipped else ""
        mean = f.get_slice("mean" + suffix)[off : off + 1][0].float()
        std = f.get_slice("std" + suffix)[off : off + 1][0].float()
        return mean, std

    def field(self, name: str) -> torch.Tensor | list[Any]:
        """A whole per-item field: a tensor ``(count, ...)`` or a list of ``count`` texts."""
        if name not in self.fields:
            raise KeyError(f"{self.path}: no field {name!r} (fields: {sorted(self.fields)})")
        if name not in self._columns:
            if self.fields[name]["kind"] == "text":
                column: Any = []
                for file in self.files:
                    column.extend(json.loads(file.with_suffix(".json").read_text())[name])
            else:
                column = torch.cat([self._open(s).get_tensor(name) for s in range(len(self.files))])
            if len(column) != len(self):
                raise ValueError(
                    f"{self.path}: field {name!r} has {len(column)} rows, not {len(self)}"
                )
            self._columns[name] = column
        return self._columns[name]


class LatentDataset(SeededDataset):
    """Items ``(z, *fields)`` from a latent cache, ``z = (mean + std * eps) * scale_factor``.

    ``fields``: the per-item fields to return after z, in order (default: all, in the cache's
    order). ``sample=False`` gives ``mean * scale_factor``. ``flip=None`` uses cached flipped
    moments when present (a view picked at random per item), ``False`` never, ``True`` requires
    them. Per-item draws, from ``self.generator(i)`` (global RNG when ``seed`` is None): first the
    view (``torch.rand(1) < 0.5``, only when flipped moments are used), then ``eps``. A subclass
    may draw more (e.g. a caption choice) from the same generator afterwards.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        fields: Sequence[str] | None = None,
        *,
        flip: bool | None = None,
        sample: bool = True,
        seed: int | None = None,
    ) -> None:
        super().__init__(seed)
        self.cache = LatentCache(path)
        self.path = self.cache.path
        self.meta = self.cache.meta
        if flip and not self.cache.has_flip:
            raise ValueError(f"{self.path} holds no flipped latents; re-encode with flip=True")
        self.flip = self.cache.has_flip if flip is None else bool(flip)
        self.sample = sample
        self.scale_factor = self.cache.scale_factor
        self.latent_shape = self.cache.latent_shape
        self.field_names = list(self.cache.fields) if fields is None else list(fields)
        self.columns = {name: self.cache.field(name) for name in self.field_names}

    def __len__(self) -> int:
        return len(self.cache)

    @staticmethod
    def coin(generator: torch.Generator | None) -> bool:
        """A fair coin (view choice): ``torch.rand(1) < 0.5`` from ``generator``."""
        return bool(torch.rand(1, generator=generator).item() < 0.5)

    def latent(self, index: int, generator: torch.Generator | None) -> torch.Tensor:
        """The scaled latent of item ``index``, drawing the view and eps from ``generator``."""
        flipped = self.flip and self.coin(generator)
        mean, std = self.cache.moments(index, flipped)
        z = mean + std * torch.randn(mean.shape, generator=generator) if self.sample else mean
        return z * self.scale_factor

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        index = range(len(self))[index]
        z = self.latent(index, self.generator(index))
        values = []
        for name in self.field_names:
            column = self.columns[name]
            values.append(column[index].clone() if torch.is_tensor(column) else column[index])
        return (z, *values)

    def __repr__(self) -> str:
        shape = "x".join(map(str, self.latent_shape))
        return f"LatentDataset({str(self.path)!r}, n={len(self)}, latent={shape}, fields={self.field_names})"
