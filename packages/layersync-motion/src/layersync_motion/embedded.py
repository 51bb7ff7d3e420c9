"""The embedded default dataset: the 20 DeepMimic clips of the ``pybullet`` wheel, as HumanML3D.

``pybullet_data/data/motions/*.txt`` (JSON keyframes: duration, root position, root rotation,
then chest, neck, right hip/knee/ankle/shoulder/elbow, left hip/knee/ankle/shoulder/elbow; 3-DoF
joints as (w, x, y, z) quaternions, knees and elbows as one angle about z) are read without
importing pybullet; forward kinematics uses the joint origins of ``humanoid/humanoid.urdf`` at
the 0.25 scale pybullet's DeepMimic environment loads it with (y up, facing +x, right = +z).
Each clip is resampled to 20 fps (slerp), retargeted to the 22-joint T2M layout (spine, collar
and foot joints interpolated), looped (cyclic clips) or held at its last pose to >= 2.4 s, and
also written at speed x0.8 ("slowly") and x1.25 ("quickly"), each with its mirror, through
``build.write_dataset`` into a HumanML3D-format folder in the cache. Captions come from the clip
names. All splits hold all clips: the set demonstrates the pipeline, not generalisation.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import torch

from layersync.assets import package_file
from layersync.fileio import cache_dir

from .build import ClipRecord, write_dataset
from .skeleton import T2M, forward_direction, qmul, qrot

VERSION = "deepmimic-v1"
FPS = 20.0
URDF_SCALE = 0.25
MIN_SECONDS, MAX_FRAMES = 2.4, 196

CAPTIONS = {
    "humanoid3d_backflip": "a person does a backflip",
    "humanoid3d_cartwheel": "a person does a cartwheel",
    "humanoid3d_crawl": "a person crawls on hands and knees",
    "humanoid3d_dance_a": "a person dances swinging the arms",
    "humanoid3d_dance_b": "a person dances in place",
    "humanoid3d_getup_facedown": "a person lying face down gets up",
    "humanoid3d_getup_faceup": "a person lying on the back gets up",
    "humanoid3d_jump": "a person jumps forward",
    "humanoid3d_kick": "a person kicks",
    "humanoid3d_punch": "a person punches",
    "humanoid3d_roll": "a person rolls forward",
    "humanoid3d_run": "a person runs forward",
    "humanoid3d_spin": "a person spins around",
    "humanoid3d_spinkick": "a person does a spinning kick",
    "humanoid3d_walk": "a person walks forward",
    "walker/0walk_forward": "a person walks straight ahead",
    "walker/turn_left0": "a person walks and turns left",
    "walker/turn_left1": "a person turns left while walking",
    "walker/turn_right0": "a person walks and turns right",
    "walker/turn_right1": "a person turns right while walking",
}
SPEEDS = {"": 1.0, "slow": 0.8, "fast": 1.25}
SPEED_WORD = {"": "", "slow": " slowly", "fast": " quickly"}

# keyframe layout: (joint, width) after [duration, root xyz]
LAYOUT = [
    ("root", 4), ("chest", 4), ("neck", 4), ("right_hip", 4), ("right_knee", 1), ("right_ankle", 4),
    ("right_shoulder", 4), ("right_elbow", 1), ("left_hip", 4), ("left_knee", 1), ("left_ankle", 4),
    ("left_shoulder", 4), ("left_elbow", 1),
]  # fmt: skip
PARENT = {
    "chest": "root", "neck": "chest", "right_hip": "root", "right_knee": "right_hip",
    "right_ankle": "right_knee", "right_shoulder": "chest", "right_elbow": "right_shoulder",
    "right_wrist": "right_elbow", "left_hip": "root", "left_knee": "left_hip",
    "left_ankle": "left_knee", "left_shoulder": "chest", "left_elbow": "left_shoulder",
    "left_wrist": "left_elbow",
}  # fmt: skip


#################################################################################
#                         DeepMimic files -> joint positions                    #
#################################################################################


def motions_dir() -> Path:
    return package_file("pybullet_data", "data/motions/humanoid3d_walk.txt", dist="pybullet").parent


def urdf_offsets() -> dict[str, np.ndarray]:
    """Joint origins (child in parent frame, metres) of the DeepMimic humanoid."""
    path = package_file("pybullet_data", "humanoid/humanoid.urdf", dist="pybullet")
    root = ET.fromstring(path.read_bytes().replace(b"\x00", b""))
    out = {}
    for joint in root.findall("joint"):
        xyz = joint.find("origin").get("xyz")
        out[joint.find("child").get("link")] = (
            np.array([float(v) for v in xyz.split()]) * URDF_SCALE
        )
    return out


def read_keyframes(path: Path) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], bool]:
    """Keyframe times (K,), root positions (K, 3), local rotations {joint: (K, 4)}, cyclic."""
    data = json.loads(path.read_text())
    frames = np.asarray(data["Frames"], dtype=np.float64)
    if frames.ndim != 2 or frames.shape[1] != 44:
        raise ValueError(
            f"{path}: expected DeepMimic keyframes of 44 values, got shape {frames.shape}"
        )
    times = np.concatenate([[0.0], np.cumsum(frames[:-1, 0])])
    rots, col = {}, 4
    for name, width in LAYOUT:
        block = frames[:, col : col + width]
        if width == 1:  # revolute about z
            half = block[:, 0] / 2
            block = np.stack([np.cos(half), 0 * half, 0 * half, np.sin(half)], -1)
        rots[name] = block / np.linalg.norm(block, axis=-1, keepdims=True)
        col += width
    return times, frames[:, 1:4], rots, data.get("Loop", "none") == "wrap"


def slerp(q0: np.ndarray, q1: np.ndarray, w: np.ndarray) -> np.ndarray:
    dot = (q0 * q1).sum(-1, keepdims=True)
    q1 = np.where(dot < 0, -q1, q1)
    dot = np.abs(dot).clip(max=1.0)
    theta = np.arccos(dot)
    small = theta < 1e-6
    s = np.where(small, 1.0, np.sin(theta))
    a = np.where(small, 1 - w, np.sin((1 - w) * theta) / s)
    b = np.where(small, w, np.sin(w * theta) / s)
    out = a * q0 + b * q1
    return out / np.linalg.norm(out, axis=-1, keepdims=True)


def resample(times, root, rots, t_new):
    """Root positions (linear) and rotations (slerp) at times ``t_new``."""
    i = np.clip(np.searchsorted(times, t_new, side="right") - 1, 0, len(times) - 2)
    w = ((t_new - times[i]) / np.maximum(times[i + 1] - times[i], 1e-9)).clip(0, 1)[:, None]
    root_new = (1 - w) * root[i] + w * root[i + 1]
    return root_new, {k: slerp(q[i], q[i + 1], w) for k, q in rots.items()}


def deepmimic_fk(
    root: np.ndarray, rots: dict[str, np.ndarray], offsets: dict[str, np.ndarray]
) -> np.ndarray:
    """(T, 22, 3) T2M-layout joints of DeepMimic poses."""
    t = lambda a: torch.from_numpy(np.asarray(a, dtype=np.float64))  # noqa: E731
    world_rot, pos = {"root": t(rots["root"])}, {"root": t(root)}
    for name in PARENT:  # parents come first in PARENT's order
        parent = PARENT[name]
        pos[name] = pos[parent] + qrot(world_rot[parent], t(offsets[name]).expand(len(root), 3))
        local = t(rots[name]) if name in rots else t([1.0, 0, 0, 0]).expand(len(root), 4)
        world_rot[name] = qmul(world_rot[parent], local)

    def at(name, local):
        return pos[name] + qrot(world_rot[name], t(local).expand(len(root), 3) * URDF_SCALE)

    lerp = lambda a, b, w: (1 - w) * a + w * b  # noqa: E731
    spine3 = lerp(pos["chest"], pos["neck"], 0.3)
    j = [None] * 22
    j[0], j[1], j[2] = pos["root"], pos["left_hip"], pos["right_hip"]
    j[3], j[6], j[9] = lerp(pos["root"], pos["chest"], 0.5), pos["chest"], spine3
    j[4], j[5], j[7], j[8] = (
        pos["left_knee"],
        pos["right_knee"],
        pos["left_ankle"],
        pos["right_ankle"],
    )
    j[10], j[11] = at("left_ankle", [0.45, -0.2, 0.0]), at("right_ankle", [0.45, -0.2, 0.0])
    j[12], j[15] = pos["neck"], at("neck", [0.0, 0.5, 0.0])
    j[16], j[17] = pos["left_shoulder"], pos["right_shoulder"]
    j[13], j[14] = lerp(spine3, j[16], 0.45), lerp(spine3, j[17], 0.45)
    j[18], j[19] = pos["left_elbow"], pos["right_elbow"]
    j[20], j[21] = pos["left_wrist"], pos["right_wrist"]
    return torch.stack(j, 1).numpy()


def facing_yaw(joints: np.ndarray) -> np.ndarray:
    """Heading angle about +Y (atan2(x, z) of the facing direction) of (T, 22, 3) poses."""
    fwd = forward_direction(T2M, torch.from_numpy(joints)).numpy()
    return np.arctan2(fwd[:, 0], fwd[:, 2])


def clip_joints(path: Path, speed: float, offsets: dict[str, np.ndarray]) -> np.ndarray:
    """A clip at 20 fps and ``speed``: looped (cyclic) or held (>= MIN_SECONDS), <= 196 frames."""
    times, root, rots, cyclic = read_keyframes(path)
    duration = times[-1] / speed
    n = int(duration * FPS) + 1
    root_s, rots_s = resample(times, root, rots, np.arange(n) / FPS * speed)
    joints = deepmimic_fk(root_s, rots_s, offsets)
    need = int(MIN_SECONDS * FPS) + 1
    if cyclic:
        # each cycle continues where the last ended: the rigid yaw + XZ move from the first
        # frame to the last one (the last keyframe repeats the first pose), applied again
        yaw = facing_yaw(joints[[0, -1]])
        c, s = np.cos(yaw[1] - yaw[0]), np.sin(yaw[1] - yaw[0])
        rot = np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])
        flat = np.array([1.0, 0.0, 1.0])
        p0, p1 = joints[0, 0] * flat, joints[-1, 0] * flat
        parts, cycle = [], joints[:-1]
        while sum(len(p) for p in parts) < need:
            parts.append(cycle)
            cycle = (cycle - p0) @ rot.T + p1
        joints = np.concatenate(parts)
    elif len(joints) < need:
        joints = np.concatenate([joints, np.repeat(joints[-1:], need - len(joints), 0)])
    return joints[: MAX_FRAMES + 1]


#################################################################################
#                           The cached HumanML3D folder                         #
#################################################################################


def records() -> list[ClipRecord]:
    base, offsets = motions_dir(), urdf_offsets()
    out = []
    for stem, caption in CAPTIONS.items():
        for tag, speed in SPEEDS.items():
            name = re.sub(r"[^a-z0-9]+", "_", stem.replace("humanoid3d_", "")) + (
                f"_{tag}" if tag else ""
            )
            joints = clip_joints(base / f"{stem}.txt", speed, offsets)
            out.append(ClipRecord(name, joints, [caption + SPEED_WORD[tag]]))
    return out


def embedded_root(rebuild: bool = False) -> Path:
    """The HumanML3D-format folder of the embedded clips (built once into the cache)."""
    final = cache_dir("motion") / VERSION
    if (final / "done").is_file() and not rebuild:
        return final
    recs = records()
    names = [r.name for r in recs]
    tmp = Path(tempfile.mkdtemp(prefix=f".{VERSION}.", dir=final.parent))
    try:
        write_dataset(tmp, recs, {"train": names, "val": names, "test": names}, T2M)
        (tmp / "done").write_text(f"{len(recs)} clips, mirrored\n")
        if final.exists():
            shutil.rmtree(final)
        try:
            tmp.rename(final)
        except OSError:  # another process (rank) finished first
            if not (final / "done").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
