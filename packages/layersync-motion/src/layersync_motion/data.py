"""HumanML3D / KIT-ML folders: split files, text lines, Mean/Std, sub-clips, the training dataset.

Layout (DESIGN.md 7)::

    root/new_joint_vecs/<id>.npy   (T, D) features (263 HumanML3D, 251 KIT)
    root/texts/<id>.txt            lines "caption#word/POS word/POS ...#start#end" (seconds)
    root/Mean.npy, root/Std.npy    (D,) dataset statistics
    root/train.txt, val.txt, test.txt   one id per line (mirrored clips "M<id>" listed too)

As MDM's ``Text2MotionDatasetV2``: clips of min_len <= T < 200 frames are kept (min 40, KIT
24); a text line with a non-zero ``#start#end`` is its own sub-clip (frames int(start·fps) ..
int(end·fps), same length filter); each visit takes a random caption, cuts the length to a
multiple of 4 (one time in three one unit shorter), takes a random window of that length,
normalises by Mean/Std and zero-pads to ``max_len`` (196) with a valid-frame mask. All draws
come from ``SeededDataset.generator`` (seed, epoch, index).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from layersync.train.data import SeededDataset

from .skeleton import SKELETONS, SkeletonSpec


class MotionDataError(ValueError):
    """A dataset file is missing or malformed (the message names the file)."""


@dataclass(frozen=True)
class TextLine:
    caption: str
    tokens: str  # "word/POS word/POS ..." (may be empty)
    start: float
    end: float


@dataclass
class MotionClip:
    name: str
    motion: np.ndarray  # (T, D) raw (unnormalised) features
    texts: list[TextLine] = field(default_factory=list)

    @property
    def length(self) -> int:
        return len(self.motion)


#################################################################################
#                                  File readers                                 #
#################################################################################


def read_split(root: Path, split: str) -> list[str]:
    path = Path(root) / f"{split}.txt"
    if not path.is_file():
        raise MotionDataError(f"split file not found: {path}")
    ids = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        name = line.strip()
        if not name:
            continue
        if name.endswith(".npy"):
            raise MotionDataError(
                f"{path}:{n}: split id {name!r} must not end with .npy (write {name[:-4]!r})"
            )
        ids.append(name)
    return ids


def read_texts(path: Path) -> list[TextLine]:
    """The lines of a HumanML3D text file; one-line error naming file:line when malformed."""
    if not path.is_file():
        raise MotionDataError(f"text file not found: {path}")
    lines = []
    for n, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not raw.strip():
            continue
        parts = raw.strip().split("#")
        if len(parts) != 4 or not parts[0].strip():
            raise MotionDataError(
                f"{path}:{n}: malformed text line (want 'caption#tokens#start#end', got {raw.strip()[:60]!r})"
            )
        try:
            start, end = float(parts[2]), float(parts[3])
        except ValueError:
            raise MotionDataError(
                f"{path}:{n}: start/end must be numbers, got {parts[2]!r} and {parts[3]!r}"
            ) from None
        start = 0.0 if math.isnan(start) else start
        end = 0.0 if math.isnan(end) else end
        lines.append(TextLine(parts[0].strip(), parts[1].strip(), start, end))
    if not lines:
        raise MotionDataError(f"{path}: no text lines")
    return lines


def load_array(path: Path, role: str) -> np.ndarray:
    if not path.is_file():
        raise MotionDataError(f"{role} not found: {path}")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise MotionDataError(f"cannot read {role} {path}: {e}") from e


def load_mean_std(root: Path, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """The dataset's Mean.npy / Std.npy, checked to be (dim,) with a positive Std."""
    root = Path(root)
    mean = load_array(root / "Mean.npy", "dataset mean (Mean.npy)").astype(np.float32)
    std = load_array(root / "Std.npy", "dataset std (Std.npy)").astype(np.float32)
    for arr, name in ((mean, "Mean.npy"), (std, "Std.npy")):
        if arr.shape != (dim,):
            raise MotionDataError(f"{root / name}: shape {arr.shape}, expected ({dim},)")
    if not (std > 0).all():
        raise MotionDataError(
            f"{root / 'Std.npy'}: {int((std <= 0).sum())} entries are not positive"
        )
    return mean, std


def load_clips(
    root: Path, split: str, spec: SkeletonSpec, min_len: int, max_frames: int = 200
) -> list[MotionClip]:
    """Clips and sub-clips of a split, sorted by (length, name), as MDM's loader."""
    root = Path(root)
    clips = []
    for name in read_split(root, split):
        path = root / "new_joint_vecs" / f"{name}.npy"
        motion = load_array(path, f"motion features of {name!r}")
        if motion.ndim != 2 or motion.shape[1] != spec.feature_dim:
            raise MotionDataError(
                f"{path}: feature width {motion.shape[-1] if motion.ndim else '?'} (shape {motion.shape}), "
                f"expected {spec.feature_dim} for skeleton {spec.name!r}"
            )
        if not min_len <= len(motion) < max_frames:
            continue
        whole = []
        for line in read_texts(root / "texts" / f"{name}.txt"):
            if line.start == 0.0 and line.end == 0.0:
                whole.append(line)
                continue
            sub = motion[int(line.start * spec.fps) : int(line.end * spec.fps)]
            if min_len <= len(sub) < max_frames:
                clips.append(MotionClip(f"{name}#{line.start:g}#{line.end:g}", sub, [line]))
        if whole:
            clips.append(MotionClip(name, motion, whole))
    return sorted(clips, key=lambda c: (c.length, c.name))


#################################################################################
#                                   Dataset                                     #
#################################################################################


class MotionDataset(SeededDataset):
    """Items: {"x": (max_len, D) normalised, zero-padded; "mask": (max_len,) bool; "length";
    "caption"; "tokens"; "name"}."""

    def __init__(
        self,
        root: Path,
        split: str,
        skeleton: str = "t2m",
        min_len: int | None = None,
        max_len: int = 196,
        unit_length: int = 4,
        seed: int | None = 0,
    ) -> None:
        super().__init__(seed)
        if skeleton not in SKELETONS:
            raise MotionDataError(
                f"unknown skeleton {skeleton!r} (choose from {', '.join(SKELETONS)})"
            )
        self.root, self.split, self.spec = Path(root), split, SKELETONS[skeleton]
        self.min_len = min_len if min_len is not None else (40 if skeleton == "t2m" else 24)
        self.max_len, self.unit_length = max_len, unit_length
        self.mean, self.std = load_mean_std(self.root, self.spec.feature_dim)
        self.clips = load_clips(self.root, split, self.spec, self.min_len)
        if not self.clips:
            raise MotionDataError(
                f"{self.root}: split {split!r} has no clip of {self.min_len}..199 frames"
            )

    def __len__(self) -> int:
        return len(self.clips)

    def normalize(self, motion: np.ndarray) -> np.ndarray:
        return (motion - self.mean) / self.std

    def denormalize(self, x: np.ndarray | torch.Tensor):
        if torch.is_tensor(x):
            return x * torch.from_numpy(self.std).to(x) + torch.from_numpy(self.mean).to(x)
        return x * self.std + self.mean

    def __getitem__(self, index: int) -> dict:
        clip = self.clips[index]
        g = self.generator(index)
        text = clip.texts[int(torch.randint(len(clip.texts), (), generator=g))]
        units = clip.length // self.unit_length
        if self.unit_length < 10 and int(torch.randint(3, (), generator=g)) == 2:
            units -= 1  # MDM's 'double' coin: one unit shorter, one time in three
        length = min(units * self.unit_length, self.max_len)
        start = int(torch.randint(clip.length - length + 1, (), generator=g))
        motion = self.normalize(clip.motion[start : start + length]).astype(np.float32)
        x = np.zeros((self.max_len, motion.shape[1]), np.float32)
        x[:length] = motion
        return {
            "x": torch.from_numpy(x),
            "mask": torch.arange(self.max_len) < length,
            "length": length,
            "caption": text.caption,
            "tokens": text.tokens,
            "name": clip.name,
        }
