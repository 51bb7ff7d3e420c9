"""Skeleton pipeline: joints -> HumanML3D features -> recover_from_ric, against the official code.

``fixtures/humanml3d_process_file.npz`` was made once with HumanML3D's own code
(EricGuo5513/HumanML3D: ``motion_representation.ipynb`` cells ``uniform_skeleton``,
``process_file``, ``recover_from_ric``, with ``common/skeleton.py``, ``common/quaternion.py``,
``paramUtil.py`` unchanged; numpy 2 needs ``np.float = float`` and
``sys.modules["scipy.ndimage.filters"] = scipy.ndimage``):

    clip = clips.synthetic_clip(T2M, 60, seed=0)
    ref = clips.synthetic_clip(T2M, 2, seed=5, lengths=[l * (1.08 + 0.02 * (i % 3)) for i, l
                               in enumerate(T2M_LENGTHS)])
    tgt_offsets = Skeleton(t2m_raw_offsets, t2m_kinematic_chain).get_offsets_joints(ref[0])
    data, global_positions, _, _ = process_file(clip, 0.002)   # with the T2M globals of the notebook
    new_joints = recover_from_ric(data[None].float(), 22)[0]
    saved: joints=clip, target_offsets, features=data, new_joints, global_positions
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from clips import synthetic_clip

from layersync_motion.features import (
    canonicalize,
    feature_dim,
    joints_to_features,
    recover_from_ric,
)
from layersync_motion.skeleton import (
    KIT,
    T2M,
    cont6d_to_matrix,
    forward_kinematics,
    inverse_kinematics,
    qbetween,
    qrot,
    quat_to_cont6d,
    quat_to_matrix,
    uniform_skeleton,
)

REF = np.load(Path(__file__).parent / "fixtures" / "humanml3d_process_file.npz")


def test_feature_widths():
    assert T2M.feature_dim == feature_dim(22) == 263
    assert KIT.feature_dim == feature_dim(21) == 251
    assert T2M.parents[:5] == [-1, 0, 0, 0, 1] and KIT.parents[11] == 0


def test_features_equal_official_process_file():
    feats, pos = joints_to_features(T2M, REF["joints"], torch.from_numpy(REF["target_offsets"]))
    assert feats.shape == (59, 263) and feats.dtype == np.float32
    np.testing.assert_allclose(pos, REF["global_positions"], atol=1e-5)
    # the official code computes in float32
    np.testing.assert_allclose(feats, REF["features"], atol=2e-5)
    rec = recover_from_ric(torch.from_numpy(feats), 22).numpy()
    np.testing.assert_allclose(rec, REF["new_joints"], atol=1e-5)


@pytest.mark.parametrize("spec", [T2M, KIT], ids=["t2m", "kit"])
@pytest.mark.parametrize("seed", [0, 1])
def test_recover_from_ric_inverts_features(spec, seed):
    """recover_from_ric(features(joints)) = the canonicalised joints (all but the last frame)."""
    joints = synthetic_clip(spec, 80, seed)
    feats, pos = joints_to_features(spec, joints)
    assert feats.shape == (79, spec.feature_dim)
    rec = recover_from_ric(torch.from_numpy(feats).double(), spec.num_joints).numpy()
    np.testing.assert_allclose(rec, pos[:-1], atol=1e-5)
    # batched decoding equals per-clip decoding
    both = recover_from_ric(torch.from_numpy(np.stack([feats, feats])), spec.num_joints)
    torch.testing.assert_close(both[1], torch.from_numpy(rec).float(), atol=1e-5, rtol=0)


def test_turning_past_the_opposite_direction_still_inverts():
    """A clip that turns by more than 180° (the official encoding flips the sign there)."""
    joints = synthetic_clip(T2M, 200, seed=2)  # yaw turns by 8 rad
    feats, pos = joints_to_features(T2M, joints)
    rec = recover_from_ric(torch.from_numpy(feats).double(), 22).numpy()
    np.testing.assert_allclose(rec, pos[:-1], atol=1e-5)


def test_canonical_pose_floor_origin_facing():
    joints = synthetic_clip(T2M, 40, seed=3)
    pos = canonicalize(T2M, joints).numpy()
    assert pos[..., 1].min() == pytest.approx(0.0, abs=1e-12)
    assert np.abs(pos[0, 0, [0, 2]]).max() < 1e-12
    r_hip, l_hip, r_sdr, l_sdr = T2M.face_joints
    across = pos[0, r_hip] - pos[0, l_hip] + pos[0, r_sdr] - pos[0, l_sdr]
    forward = np.cross([0.0, 1.0, 0.0], across)
    assert forward[0] == pytest.approx(0.0, abs=1e-9) and forward[2] > 0
    # distances are preserved: only a rigid motion and a vertical shift
    d0 = np.linalg.norm(joints[:, 1:] - joints[:, :-1], axis=-1)
    d1 = np.linalg.norm(pos[:, 1:] - pos[:, :-1], axis=-1)
    np.testing.assert_allclose(d0, d1, atol=1e-9)


def test_foot_contacts_threshold():
    joints = synthetic_clip(T2M, 40, seed=4)
    joints[:, [7, 8, 10, 11]] = joints[:1, [7, 8, 10, 11]]  # feet planted
    feats, _ = joints_to_features(T2M, joints)
    assert (feats[:, -4:] == 1).all()
    joints[:, 10, 0] += np.arange(40) * 0.05  # left foot slides 5 cm / frame: 0.0025 > 0.002
    feats, _ = joints_to_features(T2M, joints)
    assert (feats[:, -4] == 1).all() and (feats[:, -3] == 0).all() and (feats[:, -2:] == 1).all()


def test_ik_fk_round_trip_and_uniform_skeleton():
    joints = torch.from_numpy(synthetic_clip(T2M, 20, seed=5))
    quats = inverse_kinematics(T2M, joints)
    offsets = T2M.offsets_from(joints[0])
    torch.testing.assert_close(forward_kinematics(T2M, quats, joints[:, 0], offsets), joints)
    target = offsets * 1.2
    moved = uniform_skeleton(T2M, joints, target)
    bones = (moved[:, 1:] - moved[:, T2M.parents[1:]]).norm(dim=-1)
    torch.testing.assert_close(bones, target[1:].norm(dim=-1).expand_as(bones))
    torch.testing.assert_close(moved[:, 0], joints[:, 0] * 1.2)


def test_rotation_helpers():
    g = torch.Generator().manual_seed(0)
    v0, v1 = (
        torch.randn(6, 3, generator=g, dtype=torch.float64),
        torch.randn(6, 3, generator=g, dtype=torch.float64),
    )
    q = qbetween(v0, v1)
    rotated = qrot(q, v0)
    torch.testing.assert_close(
        rotated / rotated.norm(dim=-1, keepdim=True), v1 / v1.norm(dim=-1, keepdim=True)
    )
    m = quat_to_matrix(q)
    torch.testing.assert_close(m @ v0[..., None], rotated[..., None])
    torch.testing.assert_close(cont6d_to_matrix(quat_to_cont6d(q)), m)


def test_bad_joint_shape():
    with pytest.raises(
        ValueError, match=r"joints must be \(T, 22, 3\) for skeleton 't2m', got \(10, 21, 3\)"
    ):
        joints_to_features(T2M, np.zeros((10, 21, 3)))
