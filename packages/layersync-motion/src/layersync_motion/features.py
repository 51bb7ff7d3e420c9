"""HumanML3D's redundant motion features: joints (T, J, 3) -> (T-1, 4 + 9(J-1) + 3J + 4) and back.

Per frame: root angular velocity about Y (1, the half-angle increment), root linear velocity
in XZ in the root's frame (2), root height (1), root-relative joint positions in the root's
frame (3(J-1)), joint rotations in 6-D from inverse kinematics (6(J-1)), joint velocities in the
root's frame (3J), foot contacts (4). T2M: 263 dims, KIT: 251.

``canonicalize`` puts a clip on the floor, its first root at the XZ origin, facing +Z at frame
0; ``joints_to_features`` encodes that; ``recover_from_ric`` decodes positions from the
root and position channels only (as the official code and every T2M evaluator do).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .skeleton import (
    T2M,
    SkeletonSpec,
    as_tensor64,
    forward_direction,
    inverse_kinematics,
    qbetween,
    qinv,
    qmul,
    qrot,
    quat_to_cont6d,
    uniform_skeleton,
)


def canonicalize(
    spec: SkeletonSpec, joints: np.ndarray | Tensor, target_offsets: Tensor | None = None
) -> Tensor:
    """(T, J, 3) y-up joints -> float64 joints on the floor, root at XZ origin, facing +Z at 0.

    With ``target_offsets`` the clip is first re-targeted to those bone vectors
    (``uniform_skeleton``), as HumanML3D does with its reference subject."""
    joints = as_tensor64(joints)
    if joints.ndim != 3 or joints.shape[1:] != (spec.num_joints, 3):
        raise ValueError(
            f"joints must be (T, {spec.num_joints}, 3) for skeleton {spec.name!r}, got {tuple(joints.shape)}"
        )
    if target_offsets is not None:
        joints = uniform_skeleton(spec, joints, as_tensor64(target_offsets))
    joints = joints.clone()
    joints[..., 1] -= joints[..., 1].min()
    joints = joints - joints[0, 0] * joints.new_tensor([1.0, 0.0, 1.0])
    forward = forward_direction(spec, joints[:1])
    q = qbetween(forward, joints.new_tensor([[0.0, 0.0, 1.0]]))
    return qrot(q, joints)


def foot_contacts(spec: SkeletonSpec, joints: Tensor) -> tuple[Tensor, Tensor]:
    """(T-1, 2) left and right contact flags: squared frame displacement < threshold."""
    disp = (joints[1:] - joints[:-1]).pow(2).sum(-1)
    left = (disp[:, list(spec.feet_left)] < spec.foot_threshold).to(joints.dtype)
    right = (disp[:, list(spec.feet_right)] < spec.foot_threshold).to(joints.dtype)
    return left, right


def joints_to_features(
    spec: SkeletonSpec, joints: np.ndarray | Tensor, target_offsets: Tensor | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """HumanML3D's ``process_file``: (T, J, 3) -> features (T-1, D) float32 and the
    canonicalised joints (T, J, 3) float32 they encode."""
    pos = canonicalize(spec, joints, target_offsets)
    if len(pos) < 2:
        raise ValueError(f"a clip needs at least 2 frames, got {len(pos)}")
    left, right = foot_contacts(spec, pos)

    quats = inverse_kinematics(spec, pos, smooth_forward=True)
    cont6d = quat_to_cont6d(quats)
    r_rot = quats[:, 0]  # pure Y rotations taking the facing direction onto +Z
    velocity = qrot(r_rot[1:], pos[1:, 0] - pos[:-1, 0])
    r_velocity = qmul(r_rot[1:], qinv(r_rot[:-1]))
    # q and -q are one rotation: keep w >= 0 so asin(y) is the signed half-angle increment.
    # (The official code skips this and mis-encodes the frames where the facing crosses the
    # direction opposite to frame 0; elsewhere the two agree.)
    r_velocity = r_velocity * torch.where(r_velocity[:, :1] < 0, -1.0, 1.0)

    # root-relative positions in the root's frame (XZ only; heights stay absolute)
    ric = qrot(r_rot[:, None], pos - pos[:, :1] * pos.new_tensor([1.0, 0.0, 1.0]))

    n = len(pos) - 1
    root = torch.cat([torch.asin(r_velocity[:, 2:3]), velocity[:, [0, 2]], ric[:-1, 0, 1:2]], -1)
    local_vel = qrot(r_rot[:-1, None], pos[1:] - pos[:-1])
    feats = torch.cat(
        [
            root,
            ric[:-1, 1:].reshape(n, -1),
            cont6d[:-1, 1:].reshape(n, -1),
            local_vel.reshape(n, -1),
            left,
            right,
        ],
        -1,
    )
    return feats.float().numpy(), pos.float().numpy()


def recover_root_rot_pos(data: Tensor) -> tuple[Tensor, Tensor]:
    """Root rotation quaternions (..., T, 4) and positions (..., T, 3) from the root channels."""
    rot_vel = data[..., 0]
    ang = torch.zeros_like(rot_vel)
    ang[..., 1:] = rot_vel[..., :-1]
    ang = torch.cumsum(ang, -1)
    zeros = torch.zeros_like(ang)
    r_rot = torch.stack([torch.cos(ang), zeros, torch.sin(ang), zeros], -1)
    r_pos = torch.zeros(*data.shape[:-1], 3, dtype=data.dtype, device=data.device)
    r_pos[..., 1:, 0] = data[..., :-1, 1]
    r_pos[..., 1:, 2] = data[..., :-1, 2]
    r_pos = torch.cumsum(qrot(qinv(r_rot), r_pos), -2)
    r_pos[..., 1] = data[..., 3]
    return r_rot, r_pos


def recover_from_ric(data: Tensor | np.ndarray, joints_num: int) -> Tensor:
    """Global joint positions (..., T, J, 3) from features (..., T, D), as HumanML3D."""
    data = torch.as_tensor(data)
    r_rot, r_pos = recover_root_rot_pos(data)
    pos = data[..., 4 : (joints_num - 1) * 3 + 4].reshape(*data.shape[:-1], joints_num - 1, 3)
    pos = qrot(qinv(r_rot[..., None, :]), pos)
    pos = torch.cat(
        [
            pos[..., :1] + r_pos[..., None, 0:1],
            pos[..., 1:2],
            pos[..., 2:3] + r_pos[..., None, 2:3],
        ],
        -1,
    )
    return torch.cat([r_pos[..., None, :], pos], -2)


def feature_dim(joints_num: int) -> int:
    return 4 + (joints_num - 1) * 9 + joints_num * 3 + 4


__all__ = [
    "T2M",
    "canonicalize",
    "feature_dim",
    "foot_contacts",
    "joints_to_features",
    "recover_from_ric",
]
