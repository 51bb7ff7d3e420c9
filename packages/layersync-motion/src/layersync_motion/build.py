"""Write joint clips as a HumanML3D-format folder (features, joints, texts, Mean/Std, splits).

Used by the embedded default dataset and by the tests' generated fixtures, so both are read by
the real loader (``layersync_motion.data``). Mirroring and statistics follow HumanML3D:
``swap_left_right`` (negate X, swap the left/right chains, "left" <-> "right" in the text) and
``cal_mean_variance`` (per-dimension mean; std averaged within each feature group).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from layersync.fileio import atomic_write

from .features import joints_to_features
from .skeleton import KIT, T2M, SkeletonSpec

# left/right joint pairs (HumanML3D's swap_left_right chains; KIT's by its kinematic chains)
MIRROR_PAIRS = {
    "t2m": [(1, 2), (4, 5), (7, 8), (10, 11), (13, 14), (16, 17), (18, 19), (20, 21)],
    "kit": [(11, 16), (12, 17), (13, 18), (14, 19), (15, 20), (5, 8), (6, 9), (7, 10)],
}


def mirror_joints(spec: SkeletonSpec, joints: np.ndarray) -> np.ndarray:
    """The clip reflected through the YZ plane (x -> -x, left and right joints swapped)."""
    out = np.array(joints, copy=True)
    out[..., 0] *= -1
    for a, b in MIRROR_PAIRS[spec.name]:
        out[:, [a, b]] = out[:, [b, a]]
    return out


def mirror_text(text: str) -> str:
    """Swap the words left and right (any case), as HumanML3D's mirrored texts."""
    swap = {
        "left": "right",
        "right": "left",
        "Left": "Right",
        "Right": "Left",
        "LEFT": "RIGHT",
        "RIGHT": "LEFT",
    }
    return re.sub(r"\b(left|right|Left|Right|LEFT|RIGHT)\b", lambda m: swap[m.group(1)], text)


def group_std(features: np.ndarray, joints_num: int) -> np.ndarray:
    """HumanML3D's Std: the per-dimension std averaged within each feature group (a group of
    zero spread, e.g. always-on contacts, gets 1 so normalisation stays finite)."""
    std = features.std(axis=0)
    bounds = [0, 1, 3, 4, 4 + (joints_num - 1) * 3, 4 + (joints_num - 1) * 9]
    bounds += [bounds[-1] + joints_num * 3, features.shape[1]]
    for lo, hi in itertools.pairwise(bounds):
        value = std[lo:hi].mean()
        std[lo:hi] = value if value > 0 else 1.0
    return std


@dataclass
class ClipRecord:
    """One clip to write: joints (T, J, 3) y-up metres, and its text lines."""

    name: str
    joints: np.ndarray
    captions: Sequence[str]
    spans: Sequence[tuple[float, float]] | None = (
        None  # per caption (start, end) seconds; None = whole
    )


def tokens_of(caption: str) -> str:
    """HumanML3D-style "word/POS" tokens; without a tagger every POS is OTHER."""
    words = re.findall(r"[a-z]+", caption.lower())
    return " ".join(f"{w}/OTHER" for w in words)


def write_dataset(
    root: Path,
    records: Iterable[ClipRecord],
    splits: Mapping[str, Sequence[str]],
    spec: SkeletonSpec = T2M,
    mirror: bool = True,
) -> Path:
    """Features, joints and texts of every record (plus its ``M``-mirror), Mean/Std over all
    written features, and the split files (a mirrored clip joins its source's split)."""
    root = Path(root)
    (root / "new_joint_vecs").mkdir(parents=True, exist_ok=True)
    (root / "new_joints").mkdir(exist_ok=True)
    (root / "texts").mkdir(exist_ok=True)
    all_feats = []
    for rec in records:
        versions = [(rec.name, rec.joints, list(rec.captions))]
        if mirror:
            versions.append(
                (
                    "M" + rec.name,
                    mirror_joints(spec, rec.joints),
                    [mirror_text(c) for c in rec.captions],
                )
            )
        for name, joints, captions in versions:
            feats, pos = joints_to_features(spec, joints)
            all_feats.append(feats)
            np.save(root / "new_joint_vecs" / f"{name}.npy", feats)
            np.save(root / "new_joints" / f"{name}.npy", pos[:-1])
            spans = rec.spans or [(0.0, 0.0)] * len(captions)
            lines = [
                f"{c}#{tokens_of(c)}#{s:g}#{e:g}" for c, (s, e) in zip(captions, spans, strict=True)
            ]
            atomic_write(root / "texts" / f"{name}.txt", "\n".join(lines) + "\n")
    data = np.concatenate(all_feats)
    np.save(root / "Mean.npy", data.mean(axis=0).astype(np.float32))
    np.save(root / "Std.npy", group_std(data, spec.num_joints).astype(np.float32))
    for split, names in splits.items():
        ids = [n for name in names for n in ([name, "M" + name] if mirror else [name])]
        atomic_write(root / f"{split}.txt", "\n".join(ids) + "\n")
    return root


__all__ = [
    "KIT",
    "T2M",
    "ClipRecord",
    "group_std",
    "mirror_joints",
    "mirror_text",
    "tokens_of",
    "write_dataset",
]
