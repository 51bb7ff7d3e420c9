"""Skeletons (HumanML3D's 22-joint T2M layout, KIT-ML's 21 joints), quaternions, IK and FK.

Quaternions are (w, x, y, z), float64 torch tensors. The kinematic facts (raw offset
directions, chains, face/foot joints) are HumanML3D's ``paramUtil.py``; the IK/FK follow its
``common/skeleton.py`` semantics: a joint's local rotation takes its raw offset direction onto
the observed bone, accumulated along each chain from the root rotation, which turns the body's
forward direction (from hips and shoulders, horizontal) onto +Z.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .config import frame_rate

#################################################################################
#                                 Quaternions                                   #
#################################################################################


def qmul(q: Tensor, r: Tensor) -> Tensor:
    """Hamilton product q ⊗ r."""
    w1, x1, y1, z1 = q.unbind(-1)
    w2, x2, y2, z2 = r.unbind(-1)
    return torch.stack(
        (
            w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2,
            w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
            w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2,
            w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2,
        ),
        -1,
    )


def qinv(q: Tensor) -> Tensor:
    """Conjugate (the inverse of a unit quaternion)."""
    return q * q.new_tensor([1.0, -1.0, -1.0, -1.0])


def qrot(q: Tensor, v: Tensor) -> Tensor:
    """Rotate vectors v (..., 3) by unit quaternions q (..., 4) (broadcasting)."""
    q, v = torch.broadcast_tensors(q, torch.cat([v, v[..., :1]], -1))
    v = v[..., :3]
    u = q[..., 1:]
    uv = torch.linalg.cross(u, v, dim=-1)
    return v + 2 * (q[..., :1] * uv + torch.linalg.cross(u, uv, dim=-1))


def qbetween(v0: Tensor, v1: Tensor) -> Tensor:
    """The shortest-arc unit quaternion rotating direction v0 onto v1."""
    w = (v0.pow(2).sum(-1, keepdim=True) * v1.pow(2).sum(-1, keepdim=True)).sqrt() + (v0 * v1).sum(
        -1, keepdim=True
    )
    q = torch.cat([w, torch.linalg.cross(v0, v1, dim=-1)], -1)
    return q / q.norm(dim=-1, keepdim=True)


def quat_to_matrix(q: Tensor) -> Tensor:
    """(..., 4) -> (..., 3, 3)."""
    r, i, j, k = q.unbind(-1)
    s = 2.0 / q.pow(2).sum(-1)
    m = torch.stack(
        (
            1 - s * (j * j + k * k),
            s * (i * j - k * r),
            s * (i * k + j * r),
            s * (i * j + k * r),
            1 - s * (i * i + k * k),
            s * (j * k - i * r),
            s * (i * k - j * r),
            s * (j * k + i * r),
            1 - s * (i * i + j * j),
        ),
        -1,
    )
    return m.reshape(*q.shape[:-1], 3, 3)


def quat_to_cont6d(q: Tensor) -> Tensor:
    """The continuous 6-D rotation: the first two columns of the rotation matrix."""
    m = quat_to_matrix(q)
    return torch.cat([m[..., 0], m[..., 1]], -1)


def cont6d_to_matrix(d6: Tensor) -> Tensor:
    """Gram-Schmidt back to a rotation matrix (columns x, y, z)."""
    x = d6[..., :3] / d6[..., :3].norm(dim=-1, keepdim=True)
    z = torch.linalg.cross(x, d6[..., 3:], dim=-1)
    z = z / z.norm(dim=-1, keepdim=True)
    y = torch.linalg.cross(z, x, dim=-1)
    return torch.stack([x, y, z], -1)


#################################################################################
#                                   Skeletons                                   #
#################################################################################


@dataclass(frozen=True)
class SkeletonSpec:
    """A joint layout: raw offset directions, kinematic chains and the special joints."""

    name: str
    raw_offsets: tuple[tuple[int, int, int], ...]
    chains: tuple[tuple[int, ...], ...]
    face_joints: tuple[int, int, int, int]  # right hip, left hip, right shoulder, left shoulder
    feet_right: tuple[int, int]
    feet_left: tuple[int, int]
    lower_legs: tuple[int, int]  # for the leg-length scale of uniform_skeleton
    fps: float
    foot_threshold: float  # squared per-frame displacement below which a foot is in contact

    @property
    def num_joints(self) -> int:
        return len(self.raw_offsets)

    @property
    def feature_dim(self) -> int:
        """4 root + (J-1)·3 positions + (J-1)·6 rotations + J·3 velocities + 4 contacts."""
        j = self.num_joints
        return 4 + (j - 1) * 9 + j * 3 + 4

    @property
    def parents(self) -> list[int]:
        parents = [-1] * self.num_joints
        for chain in self.chains:
            for a, b in itertools.pairwise(chain):
                parents[b] = a
        return parents

    def offsets_from(self, joints: Tensor) -> Tensor:
        """Bone vectors of one pose (J, 3): raw direction x observed bone length."""
        raw = torch.tensor(self.raw_offsets, dtype=joints.dtype)
        parents = self.parents
        lengths = torch.stack(
            [joints.new_zeros(())]
            + [(joints[i] - joints[parents[i]]).norm() for i in range(1, self.num_joints)]
        )
        return raw * lengths[:, None]


T2M = SkeletonSpec(
    name="t2m",
    raw_offsets=(
        (0, 0, 0),
        (1, 0, 0),
        (-1, 0, 0),
        (0, 1, 0),
        (0, -1, 0),
        (0, -1, 0),
        (0, 1, 0),
        (0, -1, 0),
        (0, -1, 0),
        (0, 1, 0),
        (0, 0, 1),
        (0, 0, 1),
        (0, 1, 0),
        (1, 0, 0),
        (-1, 0, 0),
        (0, 0, 1),
        (0, -1, 0),
        (0, -1, 0),
        (0, -1, 0),
        (0, -1, 0),
        (0, -1, 0),
        (0, -1, 0),
    ),
    chains=(
        (0, 2, 5, 8, 11),
        (0, 1, 4, 7, 10),
        (0, 3, 6, 9, 12, 15),
        (9, 14, 17, 19, 21),
        (9, 13, 16, 18, 20),
    ),
    face_joints=(2, 1, 17, 16),
    feet_right=(8, 11),
    feet_left=(7, 10),
    lower_legs=(5, 8),
    fps=frame_rate("humanml3d"),
    foot_threshold=0.002,
)
"""HumanML3D: pelvis 0, L/R hip 1/2, spine 3/6/9, knees 4/5, ankles 7/8, feet 10/11, neck 12,
collars 13/14, head 15, shoulders 16/17, elbows 18/19, wrists 20/21."""

KIT = SkeletonSpec(
    name="kit",
    raw_offsets=(
        (0, 0, 0),
        (0, 1, 0),
        (0, 1, 0),
        (0, 1, 0),
        (0, 1, 0),
        (1, 0, 0),
        (0, -1, 0),
        (0, -1, 0),
        (-1, 0, 0),
        (0, -1, 0),
        (0, -1, 0),
        (1, 0, 0),
        (0, -1, 0),
        (0, -1, 0),
        (0, 0, 1),
        (0, 0, 1),
        (-1, 0, 0),
        (0, -1, 0),
        (0, -1, 0),
        (0, 0, 1),
        (0, 0, 1),
    ),
    chains=(
        (0, 11, 12, 13, 14, 15),
        (0, 16, 17, 18, 19, 20),
        (0, 1, 2, 3, 4),
        (3, 5, 6, 7),
        (3, 8, 9, 10),
    ),
    face_joints=(11, 16, 5, 8),
    feet_right=(14, 15),
    feet_left=(19, 20),
    lower_legs=(17, 18),
    fps=frame_rate("kit"),
    foot_threshold=0.05,
)
"""KIT-ML (21 joints, 12.5 fps; positions in the dataset's millimetre-derived units)."""

SKELETONS = {"t2m": T2M, "kit": KIT}


#################################################################################
#                         Inverse and forward kinematics                        #
#################################################################################


def _gaussian_smooth(x: Tensor, sigma: float) -> Tensor:
    """scipy.ndimage.gaussian_filter1d(x, sigma, axis=0, mode="nearest") (truncate 4)."""
    from scipy.ndimage import gaussian_filter1d

    return torch.from_numpy(gaussian_filter1d(x.numpy(), sigma, axis=0, mode="nearest")).to(x.dtype)


def forward_direction(
    spec: SkeletonSpec, joints: Tensor, smooth: bool = False, ik: bool = False
) -> Tensor:
    """The horizontal facing direction (T, 3) from hips and shoulders (y-up).

    ``ik=True`` reproduces HumanML3D's ``inverse_kinematics_np``, which unpacks the face joints
    as (l_hip, r_hip, ...) and so takes (left - right hip) + (right - left shoulder); the
    canonicalisation uses (right - left) for both. Its features depend on that root rotation."""
    r_hip, l_hip, r_sdr, l_sdr = spec.face_joints
    if ik:
        r_hip, l_hip = l_hip, r_hip
    across = (joints[:, r_hip] - joints[:, l_hip]) + (joints[:, r_sdr] - joints[:, l_sdr])
    across = across / across.norm(dim=-1, keepdim=True)
    forward = torch.linalg.cross(
        torch.tensor([[0.0, 1.0, 0.0]], dtype=joints.dtype).expand_as(across), across, dim=-1
    )
    if smooth:
        forward = _gaussian_smooth(forward, 20)
    return forward / forward.norm(dim=-1, keepdim=True)


def inverse_kinematics(spec: SkeletonSpec, joints: Tensor, smooth_forward: bool = False) -> Tensor:
    """Per-joint local rotations (T, J, 4) of positions (T, J, 3); the root's takes the body's
    forward onto +Z, except at frame 0 where it is the identity (as HumanML3D)."""
    target = torch.tensor([0.0, 0.0, 1.0], dtype=joints.dtype)
    root = qbetween(
        forward_direction(spec, joints, smooth_forward, ik=True), target.expand(len(joints), 3)
    ).clone()
    root[0] = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=joints.dtype)
    quats = joints.new_zeros(*joints.shape[:-1], 4)
    quats[..., 0] = 1.0
    quats[:, 0] = root
    raw = torch.tensor(spec.raw_offsets, dtype=joints.dtype)
    for chain in spec.chains:
        rot = root
        for a, b in itertools.pairwise(chain):
            bone = joints[:, b] - joints[:, a]
            world = qbetween(raw[b].expand_as(bone), bone / bone.norm(dim=-1, keepdim=True))
            local = qmul(qinv(rot), world)
            quats[:, b] = local
            rot = qmul(rot, local)
    return quats


def forward_kinematics(
    spec: SkeletonSpec, quats: Tensor, root_pos: Tensor, offsets: Tensor
) -> Tensor:
    """Joint positions (T, J, 3) from local rotations (T, J, 4), root positions (T, 3) and
    bone vectors ``offsets`` (J, 3)."""
    joints = quats.new_zeros(*quats.shape[:-1], 3)
    joints[:, 0] = root_pos
    for chain in spec.chains:
        rot = quats[:, 0]
        for a, b in itertools.pairwise(chain):
            rot = qmul(rot, quats[:, b])
            joints[:, b] = qrot(rot, offsets[b].expand(len(quats), 3)) + joints[:, a]
    return joints


def uniform_skeleton(spec: SkeletonSpec, joints: Tensor, target_offsets: Tensor) -> Tensor:
    """Re-target a clip onto fixed bone vectors (HumanML3D's uniform_skeleton): root path
    scaled by the ratio of lower-leg lengths, joint rotations by IK then FK on the target."""
    src = spec.offsets_from(joints[0])
    i1, i2 = spec.lower_legs
    scale = (target_offsets[i1].abs().max() + target_offsets[i2].abs().max()) / (
        src[i1].abs().max() + src[i2].abs().max()
    )
    quats = inverse_kinematics(spec, joints)
    return forward_kinematics(spec, quats, joints[:, 0] * scale, target_offsets)


def as_tensor64(x: np.ndarray | Tensor) -> Tensor:
    return torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x, dtype=torch.float64)
