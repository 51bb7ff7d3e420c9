"""Video datasets: files decoded with PyAV, frame folders, arrays, CLEVRER.

Every dataset yields ``(clip, label)``: ``clip`` float32 ``(C, T, H, W)`` in [-1, 1], ``label``
an int64 scalar (0 for unlabelled sources). Datasets expose ``channels``, ``frames``, ``size``
and ``num_classes`` (sizing the model), plus ``skipped``: ``{path: reason}`` of the videos left
out at start with ``on_error="skip"`` (undecodable, truncated, shorter than one clip).

A clip is ``frames`` frames ``stride`` apart. Its start is drawn from the item's seeded generator
(``SeededDataset.generator(i)``: exact resume) or is 0 with ``random_start=False`` (FVD's
generated-side protocol). Frames are centre-cropped to the largest square, then resized
(bilinear, antialiased) to ``size`` x ``size`` (= short-side resize + centre crop); an optional
horizontal flip is drawn from the same generator.
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from layersync.train.data import SeededDataset

VIDEO_EXTS = (".mp4", ".avi", ".webm", ".mkv")
FRAME_EXTS = (".png", ".jpg", ".jpeg")
OnError = Literal["skip", "error"]


class VideoDataError(ValueError):
    """A video file, frame folder or array that cannot be used (the message names it)."""


# -----------------------------------------------------------------------------
# Decoding (PyAV)


def _av():
    try:
        import av
    except ImportError as e:  # pragma: no cover - a declared dependency
        raise ImportError("decoding video files needs PyAV: pip install av") from e
    return av


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def count_frames(path: str | Path, exact: bool = False) -> int:
    """Number of frames of ``path``: the container's count when it records one (opening the
    file already rejects undecodable ones), else (or with ``exact``) by decoding every frame.
    A file whose header promises more frames than it holds fails later, in ``read_frames``."""
    av, n = _av(), 0
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            if stream.frames > 0 and not exact:
                return int(stream.frames)
            for _ in container.decode(stream):
                n += 1
    except Exception as e:  # PyAV raises FFmpegError subclasses, IndexError (no video stream)
        raise VideoDataError(f"{path}: cannot decode video ({_first_line(e)})") from e
    if n == 0:
        raise VideoDataError(f"{path}: cannot decode video (no frames)")
    return n


def read_frames(path: str | Path, indices: list[int]) -> np.ndarray:
    """Frames ``indices`` (increasing) of ``path`` as uint8 ``(len, H, W, 3)`` RGB."""
    av, wanted, out = _av(), set(indices), {}
    last = max(indices)
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for i, frame in enumerate(container.decode(stream)):
                if i in wanted:
                    out[i] = frame.to_ndarray(format="rgb24")
                if i >= last:
                    break
    except Exception as e:
        raise VideoDataError(f"{path}: cannot decode video ({_first_line(e)})") from e
    if len(out) < len(wanted):
        raise VideoDataError(
            f"{path}: cannot decode video (truncated: frame {last} requested, "
            f"{max(out, default=-1) + 1} decodable)"
        )
    return np.stack([out[i] for i in indices])


# -----------------------------------------------------------------------------
# Clip transforms


def crop_resize(clip: np.ndarray, size: int | None) -> torch.Tensor:
    """uint8 ``(T, H, W, C)`` -> float ``(C, T, size, size)`` in [-1, 1]: centre square crop,
    then bilinear (antialiased) resize; ``size=None`` keeps the crop's size."""
    x = torch.from_numpy(np.ascontiguousarray(clip)).permute(0, 3, 1, 2).float()  # T C H W
    h, w = x.shape[-2:]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    x = x[..., top : top + side, left : left + side]
    if size is not None and side != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
    return (x / 127.5 - 1.0).clamp(-1, 1).permute(1, 0, 2, 3).contiguous()


def _label(value: int) -> torch.Tensor:
    return torch.tensor(int(value), dtype=torch.int64)


class ClipDataset(SeededDataset):
    """Shared clip sampling over a list of sources with known frame counts."""

    channels = 3
    num_classes = 1

    def __init__(
        self,
        frames: int,
        stride: int,
        size: int | None,
        hflip: bool,
        random_start: bool,
        seed: int | None,
    ) -> None:
        super().__init__(seed)
        if frames < 1 or stride < 1:
            raise ValueError(f"frames and stride must be >= 1, got {frames}, {stride}")
        self.frames, self.stride, self.size = frames, stride, size
        self.hflip, self.random_start = hflip, random_start
        self.skipped: dict[str, str] = {}
        self.lengths: list[int] = []

    @property
    def span(self) -> int:
        """Frames one clip covers in the source."""
        return (self.frames - 1) * self.stride + 1

    def _check_length(self, name: str, n: int, on_error: OnError) -> bool:
        if n >= self.span:
            return True
        reason = (
            f"{name}: {n} frames, shorter than one clip ({self.frames} frames at stride "
            f"{self.stride} = {self.span})"
        )
        if on_error == "error":
            raise VideoDataError(reason)
        self.skipped[name] = reason
        return False

    def _indices(self, index: int) -> list[int]:
        start = 0
        free = self.lengths[index] - self.span
        if self.random_start and free > 0:
            start = int(torch.randint(free + 1, (1,), generator=self.generator(index)))
        return [start + k * self.stride for k in range(self.frames)]

    def _finish(self, index: int, clip: np.ndarray) -> torch.Tensor:
        x = crop_resize(clip, self.size)
        if self.hflip and torch.rand(2, generator=self.generator(index))[1] < 0.5:
            x = x.flip(-1)
        return x

    def __len__(self) -> int:
        return len(self.lengths)


# -----------------------------------------------------------------------------
# Sources


def _natural_key(path: Path) -> list:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", path.name)]


def _scan(root: Path, exts: tuple[str, ...]) -> list[Path]:
    return sorted((p for p in root.rglob("*") if p.suffix.lower() in exts), key=_natural_key)


class VideoFileDataset(ClipDataset):
    """Video files (mp4/avi/webm/mkv) under ``root`` (recursively), or a list of files."""

    def __init__(
        self,
        root: str | Path | list[Path],
        frames: int = 16,
        stride: int = 1,
        size: int | None = 64,
        hflip: bool = False,
        random_start: bool = True,
        seed: int | None = None,
        on_error: OnError = "error",
        count: Callable[[Path], int] = count_frames,
    ) -> None:
        super().__init__(frames, stride, size, hflip, random_start, seed)
        if isinstance(root, list):
            files = root
        else:
            root = Path(root)
            if not root.exists():
                raise VideoDataError(f"data.path = {root}: no such file or folder")
            files = [root] if root.is_file() else _scan(root, VIDEO_EXTS)
        if not files:
            raise VideoDataError(f"{root}: no video files ({', '.join(VIDEO_EXTS)})")
        self.paths: list[Path] = []
        for path in files:
            try:
                n = count(path)
            except VideoDataError as e:
                if on_error == "error":
                    raise
                self.skipped[str(path)] = str(e)
                continue
            if self._check_length(str(path), n, on_error):
                self.paths.append(path)
                self.lengths.append(n)
        if not self.paths:
            raise VideoDataError(f"{root}: no usable video ({len(self.skipped)} skipped)")

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        clip = read_frames(self.paths[index], self._indices(index))
        return self._finish(index, clip), _label(0)


class FrameFolderDataset(ClipDataset):
    """StyleGAN-V layout: ``root/<video>/<frame>.png|jpg`` (frames in natural order)."""

    def __init__(
        self,
        root: str | Path,
        frames: int = 16,
        stride: int = 1,
        size: int | None = 64,
        hflip: bool = False,
        random_start: bool = True,
        seed: int | None = None,
        on_error: OnError = "error",
    ) -> None:
        from PIL import Image

        super().__init__(frames, stride, size, hflip, random_start, seed)
        root = Path(root)
        if not root.is_dir():
            raise VideoDataError(f"data.path = {root}: no such folder")
        self.videos: list[list[Path]] = []
        for folder in sorted((d for d in root.iterdir() if d.is_dir()), key=_natural_key):
            files = sorted(
                (f for f in folder.iterdir() if f.suffix.lower() in FRAME_EXTS), key=_natural_key
            )
            if not files:
                continue
            try:
                sizes = {}
                for f in files:
                    with Image.open(f) as im:
                        sizes.setdefault(im.size, f.name)
                if len(sizes) > 1:
                    (a, fa), (b, fb) = list(sizes.items())[:2]
                    raise VideoDataError(
                        f"{folder}: mixed frame sizes {a[0]}x{a[1]} ({fa}) and {b[0]}x{b[1]} ({fb})"
                    )
            except OSError as e:
                raise VideoDataError(f"{folder}: cannot read frame ({_first_line(e)})") from e
            if self._check_length(str(folder), len(files), on_error):
                self.videos.append(files)
                self.lengths.append(len(files))
        if not self.videos:
            raise VideoDataError(f"{root}: no frame folders <video>/<frame>.png|jpg")

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        from PIL import Image

        files = self.videos[index]
        clip = np.stack(
            [np.asarray(Image.open(files[i]).convert("RGB")) for i in self._indices(index)]
        )
        return self._finish(index, clip), _label(0)


class ArrayVideoDataset(ClipDataset):
    """``.npy`` / ``.npz`` (``arr_0`` or ``videos``; optional ``labels``): (N, T, H, W, C) uint8."""

    def __init__(
        self,
        path: str | Path,
        frames: int = 16,
        stride: int = 1,
        size: int | None = None,
        hflip: bool = False,
        random_start: bool = True,
        seed: int | None = None,
    ) -> None:
        super().__init__(frames, stride, size, hflip, random_start, seed)
        path = Path(path)
        labels = None
        try:
            if path.suffix == ".npz":
                with np.load(path) as f:
                    key = next((k for k in ("videos", "arr_0") if k in f.files), None)
                    if key is None:
                        raise VideoDataError(f"{path}: no 'videos' or 'arr_0' array ({f.files})")
                    videos = f[key]
                    labels = f["labels"] if "labels" in f.files else None
            else:
                videos = np.load(path, mmap_mode="r")
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            if isinstance(e, VideoDataError):
                raise
            raise VideoDataError(f"{path}: cannot read array file ({_first_line(e)})") from e
        if videos.ndim != 5 or videos.dtype != np.uint8 or videos.shape[-1] not in (1, 3):
            raise VideoDataError(
                f"{path}: expected uint8 (N, T, H, W, C) with C = 1 or 3, got {videos.dtype} "
                f"{videos.shape}"
            )
        self.videos, self.channels = videos, int(videos.shape[-1])
        self._check_length(str(path), int(videos.shape[1]), "error")
        self.lengths = [int(videos.shape[1])] * len(videos)
        self.labels = None if labels is None else np.asarray(labels, dtype=np.int64)
        self.num_classes = 1 if self.labels is None else int(self.labels.max()) + 1

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        clip = np.asarray(self.videos[index][self._indices(index)])
        label = 0 if self.labels is None else self.labels[index]
        return self._finish(index, clip), _label(label)


def clevrer(root: str | Path, split: str, **kw) -> VideoFileDataset:
    """CLEVRER: ``root/video_{train,validation}/video_00000-01000/video_00000.mp4`` (480x320,
    128 frames); the centre 320x320 square is resized to ``size``."""
    folder = Path(root) / ("video_train" if split == "train" else "video_validation")
    if not folder.is_dir():
        raise VideoDataError(f"data.path = {root}: no {folder.name}/ folder (CLEVRER layout)")
    return VideoFileDataset(folder, **kw)
