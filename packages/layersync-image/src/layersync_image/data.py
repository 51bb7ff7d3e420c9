"""Image datasets for the image plugin (the writers are in ``writers.py``).

Every dataset yields ``(image, label)``: ``image`` a float32 tensor (C, H, W) in [-1, 1], ``label``
an int64 scalar tensor (class index; datasets without labels use 0). Every dataset exposes
``num_classes``, ``channels`` and ``image_size`` so the plugin can size the model.

Sources: idx files (MNIST / Fashion-MNIST), class folders of images (ImageNet layout, ADM/DiT
centre crop), ``.npz`` / ``.npy`` arrays (ADM layout), and scikit-learn's 8x8 digits as the
embedded default. ``build_dataset(cfg, split)`` picks one from the run config's ``data`` section.

Randomness (horizontal flips here, posterior noise in ``latents``): with ``seed=None`` draws come
from torch's global RNG, like torchvision transforms (a DataLoader seeds each worker from the main
process). With an integer ``seed``, item ``i`` in epoch ``e`` draws from its own generator,
``dataset.generator(i)``, seeded from ``(seed, e, i)``: an item gives the same result whatever the
worker count or visiting order; call ``set_epoch(e)`` every epoch (like ``DistributedSampler``).
"""

from __future__ import annotations

import functools
import gzip
import math
import os
import struct
import zipfile
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

# -----------------------------------------------------------------------------
# Base class: sizing attributes and per-item randomness


class BaseDataset(Dataset):
    """Shared base: ``num_classes``, ``channels``, ``image_size`` and reproducible draws."""

    num_classes: int
    channels: int
    image_size: int

    def __init__(self, seed: int | None = None) -> None:
        if seed is not None and seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed}")
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose per-item draws ``generator`` gives (seeded mode only)."""
        self.epoch = int(epoch)

    def generator(self, index: int) -> torch.Generator | None:
        """The generator item ``index`` draws from; None (global RNG) when ``seed`` is None."""
        if self.seed is None:
            return None
        state = np.random.SeedSequence([self.seed, self.epoch, int(index)]).generate_state(
            1, np.uint64
        )[0]
        return torch.Generator().manual_seed(int(state))

    @staticmethod
    def coin(generator: torch.Generator | None) -> bool:
        """A fair coin (flip decisions): ``torch.rand(1) < 0.5`` from ``generator``."""
        return bool(torch.rand(1, generator=generator).item() < 0.5)


def _uint8_to_tensor(arr: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, C) -> float32 (C, H, W) in [-1, 1] (ToTensor + Normalize(0.5, 0.5))."""
    x = torch.from_numpy(np.array(arr, dtype=np.uint8, copy=True)).permute(2, 0, 1)
    return x.float().div_(127.5).sub_(1.0)


def _label(value: int) -> torch.Tensor:
    return torch.tensor(int(value), dtype=torch.int64)


# -----------------------------------------------------------------------------
# In-memory arrays (uint8 NHWC or float NCHW), .npz / .npy files, digits

Resize = Literal["bilinear", "nearest"]


class InMemoryDataset(BaseDataset):
    """Images held in an array: uint8 (N, H, W, C) / (N, H, W) in 0..255, or float (N, C, H, W)
    in [-1, 1]. Optional per-item resize to ``image_size`` and random horizontal flip."""

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray | None = None,
        *,
        num_classes: int | None = None,
        image_size: int | None = None,
        resize: Resize = "bilinear",
        hflip: bool = False,
        seed: int | None = None,
        name: str = "<array>",
    ) -> None:
        super().__init__(seed)
        self.name = name
        images = np.asarray(images)
        if images.dtype == np.uint8 and images.ndim == 3:
            images = images[..., None]
        layout_err = (
            f"{name}: expected images as uint8 (N, H, W, C) with C in (1, 3) (ADM layout), "
            f"uint8 (N, H, W) or float (N, C, H, W); got shape {tuple(images.shape)} "
            f"dtype {images.dtype}"
        )
        if images.dtype == np.uint8 and images.ndim == 4 and images.shape[-1] in (1, 3):
            self._nhwc = True
            n, h, w, c = images.shape
        elif np.issubdtype(images.dtype, np.floating) and images.ndim == 4:
            self._nhwc = False
            n, c, h, w = images.shape
        else:
            raise ValueError(layout_err)
        if h != w:
            raise ValueError(f"{layout_err}; images must be square (H == W)")
        if n == 0:
            raise ValueError(f"{name}: no images")
        if not self._nhwc:
            lo, hi = float(np.min(images)), float(np.max(images))
            if not (lo >= -1.001 and hi <= 1.001):
                raise ValueError(f"{name}: float images must lie in [-1, 1], found [{lo}, {hi}]")
        self.images = images
        self.native_size = h
        self.channels = c
        self.image_size = int(image_size) if image_size is not None else h
        if resize not in ("bilinear", "nearest"):
            raise ValueError(f"resize must be 'bilinear' or 'nearest', got {resize!r}")
        self.resize = resize
        self.hflip = hflip

        if labels is None:
            self.labels = np.zeros(n, dtype=np.int64)
        else:
            labels = np.asarray(labels)
            if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
                raise ValueError(
                    f"{name}: labels must be integers of shape ({n},), "
                    f"got shape {labels.shape} dtype {labels.dtype}"
                )
            self.labels = labels.astype(np.int64)
        top = int(self.labels.max()) + 1
        self.num_classes = int(num_classes) if num_classes is not None else top
        if int(self.labels.min()) < 0 or top > self.num_classes:
            raise ValueError(
                f"{name}: labels must lie in [0, {self.num_classes}), found "
                f"[{int(self.labels.min())}, {top - 1}]"
            )

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        index = range(len(self))[index]
        if self._nhwc:
            x = _uint8_to_tensor(self.images[index])
        else:
            x = torch.from_numpy(np.array(self.images[index], dtype=np.float32))
        if self.image_size != self.native_size:
            down = self.image_size < self.native_size
            x = F.interpolate(
                x[None],
                size=(self.image_size, self.image_size),
                mode=self.resize,
                **(
                    {"align_corners": False, "antialias": down} if self.resize == "bilinear" else {}
                ),
            )[0]
        if self.hflip and self.coin(self.generator(index)):
            x = x.flip(-1)
        return x, _label(self.labels[index])

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.name}, n={len(self)}, image_size={self.image_size}, "
            f"channels={self.channels}, num_classes={self.num_classes})"
        )


class ArrayDataset(InMemoryDataset):
    """Images from ``.npz`` (key ``images`` or ``arr_0``; labels ``labels`` or ``arr_1``) or
    ``.npy`` (images only, memory-mapped). uint8 NHWC (ADM layout) or float NCHW in [-1, 1]."""

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        num_classes: int | None = None,
        image_size: int | None = None,
        resize: Resize = "bilinear",
        hflip: bool = False,
        seed: int | None = None,
    ) -> None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"array file not found: {path}")
        keys: list[str] = ["arr_0"]
        try:
            with open(path, "rb") as fh:
                magic = fh.read(6)
                if magic == b"\x93NUMPY":  # .npy: memory-map, read items on demand
                    arrays = {"arr_0": np.load(path, mmap_mode="r", allow_pickle=False)}
                elif magic[:4] == b"PK\x03\x04":  # .npz (a zip of .npy files)
                    fh.seek(0)
                    with np.load(fh, allow_pickle=False) as z:
                        keys = sorted(z.files)
                        wanted = ("images", "labels", "arr_0", "arr_1")
                        arrays = {k: z[k] for k in wanted if k in keys}
                else:
                    raise ValueError("neither a .npy nor a .npz file")
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise ValueError(f"cannot read array file {path}: {e}") from e
        key = "images" if "images" in arrays else "arr_0"
        if key not in arrays:
            raise ValueError(f"{path}: no 'images' or 'arr_0' array (keys: {keys})")
        images, labels = arrays[key], arrays.get("labels" if key == "images" else "arr_1")
        super().__init__(
            images,
            labels,
            num_classes=num_classes,
            image_size=image_size,
            resize=resize,
            hflip=hflip,
            seed=seed,
            name=str(path),
        )


@functools.lru_cache(maxsize=1)
def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise ImportError("digits() needs scikit-learn: pip install scikit-learn") from e
    d = load_digits()
    images = (d.images.astype(np.float32) / 8.0 - 1.0)[:, None]  # (N, 1, 8, 8)
    labels = d.target.astype(np.int64)
    images.flags.writeable = labels.flags.writeable = False  # shared by every call
    return images, labels


def digits(
    split: Literal["train", "test", "all"] = "train",
    *,
    image_size: int = 8,
    resize: Resize = "bilinear",
    test_fraction: float = 0.1,
    split_seed: int = 0,
    hflip: bool = False,
) -> InMemoryDataset:
    """scikit-learn's 1797 real 8x8 handwritten digits (values 0..16 -> [-1, 1]), 1 channel,
    10 classes. The split is a fixed permutation (``split_seed``): ``round(test_fraction * 1797)``
    test items (180 by default), the rest train; each split keeps the original order."""
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    images, labels = _load_digits()
    n = len(labels)
    n_test = round(test_fraction * n)
    perm = np.random.default_rng(split_seed).permutation(n)
    idx = {
        "train": np.sort(perm[n_test:]),
        "test": np.sort(perm[:n_test]),
        "all": np.arange(n),
    }[split]
    return InMemoryDataset(
        images[idx],
        labels[idx],
        num_classes=10,
        image_size=image_size,
        resize=resize,
        hflip=hflip,
        name=f"digits[{split}]",
    )


# -----------------------------------------------------------------------------
# idx files (MNIST / Fashion-MNIST)

_IDX_DTYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an idx file (plain or gzip): magic ``00 00 <dtype> <ndim>``, ndim big-endian uint32
    sizes, then the data. Checks the magic and that the data size matches the header."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"idx file not found: {path}")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise ValueError(f"{path}: corrupt gzip data ({e})") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path}: not an idx file (magic bytes {raw[:4].hex() or 'missing'})")
    ndim = raw[3]
    start = 4 + 4 * ndim
    if len(raw) < start:
        raise ValueError(f"{path}: truncated idx header ({ndim} dimensions announced)")
    shape = struct.unpack(f">{ndim}I", raw[4:start])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = math.prod(shape) * dtype.itemsize
    if len(raw) - start != expected:
        raise ValueError(
            f"{path}: header says shape {shape} ({expected} data bytes) "
            f"but the file holds {len(raw) - start}"
        )
    arr = np.frombuffer(raw, dtype=dtype, offset=start).reshape(shape)
    return arr.astype(dtype.newbyteorder("="))


class IdxDataset(InMemoryDataset):
    """Grayscale images from idx files (uint8 (N, H, W)) with optional idx labels.

    ``image_size`` larger than native with ``resize="pad"`` pads the background (value -1) evenly
    (28 -> 32 makes patch sizes 2/4/8 divide); ``"bilinear"``/``"nearest"`` resample instead.
    Without ``labels_path`` every label is 0 and ``num_classes`` is 1.
    """

    def __init__(
        self,
        images_path: str | os.PathLike,
        labels_path: str | os.PathLike | None = None,
        *,
        image_size: int | None = None,
        resize: Literal["pad", "bilinear", "nearest"] = "pad",
        num_classes: int | None = None,
        hflip: bool = False,
        seed: int | None = None,
    ) -> None:
        images = read_idx(images_path)
        if images.dtype != np.uint8 or images.ndim != 3:
            raise ValueError(
                f"{images_path}: expected uint8 images (N, H, W), "
                f"got shape {images.shape} dtype {images.dtype}"
            )
        labels = None
        if labels_path is not None:
            labels = read_idx(labels_path)
            if labels.ndim != 1 or len(labels) != len(images):
                raise ValueError(
                    f"{labels_path}: expected {len(images)} labels (N,), got shape {labels.shape}"
                )
        if resize == "pad":
            h, w = images.shape[1:]
            if image_size is not None and image_size != h:
                if image_size < h or h != w:
                    raise ValueError(
                        f"{images_path}: cannot pad {h}x{w} images to {image_size}; "
                        "use resize='bilinear' to shrink"
                    )
                before = (image_size - h) // 2
                after = image_size - h - before
                images = np.pad(images, ((0, 0), (before, after), (before, after)))
            image_size, resize = None, "bilinear"
        super().__init__(
            images,
            labels,
            num_classes=num_classes,
            image_size=image_size,
            resize=resize,
            hflip=hflip,
            seed=seed,
            name=str(images_path),
        )


FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


def _find_idx(root: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (root / name).is_file():
            return root / name
    raise FileNotFoundError(
        f"Fashion-MNIST file not found: {root / (stem + '.gz')} "
        "(install it with `apt-get install dataset-fashion-mnist` or pass root=...)"
    )


def fashion_mnist(
    split: Literal["train", "test"] = "train",
    *,
    root: str | os.PathLike = FASHION_MNIST_ROOT,
    image_size: int = 32,
    resize: Literal["pad", "bilinear", "nearest"] = "pad",
    hflip: bool = False,
    seed: int | None = None,
) -> IdxDataset:
    """Fashion-MNIST (60000 train / 10000 test, 10 classes) from the Debian package's idx files.
    Native size is 28; the default pads to 32 so patch sizes 2/4/8 all divide it."""
    prefix = {"train": "train", "test": "t10k"}.get(split)
    if prefix is None:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = Path(root)
    return IdxDataset(
        _find_idx(root, f"{prefix}-images-idx3-ubyte"),
        _find_idx(root, f"{prefix}-labels-idx1-ubyte"),
        image_size=image_size,
        resize=resize,
        num_classes=10,
        hflip=hflip,
        seed=seed,
    )


# -----------------------------------------------------------------------------
# From the run config (``data`` section)


def build_dataset(cfg: Any, split: str) -> Dataset:
    """The dataset of ``cfg.data`` for ``split`` ("train" or "eval")."""
    dc, train = cfg.data, split == "train"
    size = {} if dc.image_size is None else {"image_size": dc.image_size}
    flip = dc.hflip and train
    if dc.source == "digits":
        return digits("train" if train else "test", hflip=flip, **size)
    if dc.source == "latents":
        from layersync_image.latents import LatentDataset

        return LatentDataset(_required_path(dc), flip=None if flip else False)
    if dc.source == "fashion-mnist":
        root = {"root": dc.path} if dc.path else {}
        return fashion_mnist("train" if train else "test", hflip=flip, **root, **size)
    if dc.source == "mnist":
        root = Path(_required_path(dc))
        prefix = "train" if train else "t10k"
        return IdxDataset(
            _find_idx(root, f"{prefix}-images-idx3-ubyte"),
            _find_idx(root, f"{prefix}-labels-idx1-ubyte"),
            num_classes=10,
            hflip=flip,
            **size,
        )
    if dc.source == "folder":
        root = Path(_required_path(dc))
        sub = root / ("train" if train else "val")
        from layersync_image.folder import ImageFolderDataset

        return ImageFolderDataset(
            sub if sub.is_dir() else root, dc.image_size or 256, hflip=flip, on_error=dc.on_error
        )
    return ArrayDataset(_required_path(dc), hflip=flip, **size)


def _required_path(dc: Any) -> str:
    if not dc.path:
        raise ValueError(f"data.path is required for data.source = {dc.source!r}")
    return dc.path


def dataset_spec(cfg: Any) -> tuple[int, int, int]:
    """(channels, image size, number of classes) of the training data, sizing the model."""
    return _spec_cached(cfg.data.model_dump_json())


@functools.lru_cache(maxsize=8)
def _spec_cached(data_json: str) -> tuple[int, int, int]:
    from types import SimpleNamespace

    from layersync_image.config import DataConfig

    data = DataConfig.model_validate_json(data_json)
    ds = build_dataset(SimpleNamespace(data=data), "train")
    return ds.channels, ds.image_size, ds.num_classes
