"""Class folders of images (ImageNet layout) with the ADM/DiT centre crop, and what to do with
unreadable files (``on_error``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image

from layersync_image.data import BaseDataset, _label, _uint8_to_tensor

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".bmp", ".tif", ".tiff", ".webp")


def center_crop_arr(pil_image: Image.Image, image_size: int) -> Image.Image:
    """ADM/DiT centre crop: halve with BOX while the short side >= 2 * image_size, BICUBIC-resize
    so the short side is image_size, then crop the centre image_size x image_size."""
    while min(*pil_image.size) >= 2 * image_size:
        pil_image = pil_image.resize(tuple(s // 2 for s in pil_image.size), resample=Image.BOX)
    scale = image_size / min(*pil_image.size)
    pil_image = pil_image.resize(
        tuple(round(s * scale) for s in pil_image.size), resample=Image.BICUBIC
    )
    arr = np.array(pil_image)
    top = (arr.shape[0] - image_size) // 2
    left = (arr.shape[1] - image_size) // 2
    return Image.fromarray(arr[top : top + image_size, left : left + image_size])


class ImageFolderDataset(BaseDataset):
    """``root/<class>/**/<image>``: classes sorted by name -> label indices; any Pillow-readable
    file with an image extension, converted to RGB, ADM centre-cropped to ``image_size``.

    Unreadable files: ``on_error="raise"`` raises ``OSError`` naming the file. With ``"skip"`` a
    bad item is replaced by the next readable one (cyclically, so the result is deterministic)
    and recorded in ``bad_files`` / counted by ``skipped`` (per process: DataLoader workers keep
    their own counts). ``verify=True`` (or calling ``verify()``) decodes every file up front and,
    with ``"skip"``, drops the bad ones from ``samples``; fine for small sets.
    Random horizontal flip (p=0.5) when ``hflip`` (training); pass ``hflip=False`` for eval.
    """

    channels = 3

    def __init__(
        self,
        root: str | os.PathLike,
        image_size: int,
        *,
        hflip: bool = True,
        on_error: Literal["raise", "skip"] = "raise",
        verify: bool = False,
        seed: int | None = None,
    ) -> None:
        super().__init__(seed)
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder not found: {self.root}")
        self.classes = sorted(
            d.name for d in self.root.iterdir() if d.is_dir() and not d.name.startswith(".")
        )
        if not self.classes:
            raise FileNotFoundError(f"no class sub-folders in {self.root} (expected root/<class>/)")
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.samples: list[tuple[Path, int]] = []
        for c in self.classes:
            files = sorted(
                p
                for p in (self.root / c).rglob("*")
                if p.suffix.lower() in IMG_EXTENSIONS and not p.name.startswith(".") and p.is_file()
            )
            self.samples += [(p, self.class_to_idx[c]) for p in files]
        if not self.samples:
            raise FileNotFoundError(f"no images ({', '.join(IMG_EXTENSIONS)}) under {self.root}")
        self.num_classes = len(self.classes)
        self.image_size = int(image_size)
        self.hflip = hflip
        self.on_error = on_error
        self.bad_files: set[Path] = set()
        if verify:
            self.verify()

    @property
    def skipped(self) -> int:
        """How many distinct unreadable files were met (and skipped) so far."""
        return len(self.bad_files)

    @staticmethod
    def _decode(path: Path) -> Image.Image:
        try:
            with Image.open(path) as im:
                return im.convert("RGB")  # forces a full decode
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            raise OSError(f"cannot read image {path}: {e}") from e

    def verify(self) -> list[Path]:
        """Decode every file now; raise on the first bad one, or drop and return the bad ones."""
        bad = []
        for path, _ in self.samples:
            try:
                self._decode(path)
            except OSError:
                if self.on_error == "raise":
                    raise
                bad.append(path)
        if bad:
            self.bad_files.update(bad)
            self.samples = [s for s in self.samples if s[0] not in self.bad_files]
            if not self.samples:
                raise OSError(f"no readable image under {self.root}")
        return bad

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(self.samples)
        index = range(n)[index]
        for k in range(n):
            path, label = self.samples[(index + k) % n]
            if path in self.bad_files:
                continue
            try:
                image = self._decode(path)
                break
            except OSError:
                if self.on_error == "raise":
                    raise
                self.bad_files.add(path)
        else:
            raise OSError(f"no readable image under {self.root}")
        x = _uint8_to_tensor(np.asarray(center_crop_arr(image, self.image_size)))
        if self.hflip and self.coin(self.generator(index)):
            x = x.flip(-1)
        return x, _label(label)

    def __repr__(self) -> str:
        return (
            f"ImageFolderDataset({str(self.root)!r}, n={len(self)}, image_size={self.image_size}, "
            f"num_classes={self.num_classes})"
        )
