"""HumanML3D loader on a generated HumanML3D-format folder (written by build.write_dataset)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from clips import synthetic_clip

from layersync_motion.build import ClipRecord, group_std, mirror_joints, mirror_text, write_dataset
from layersync_motion.data import MotionDataError, MotionDataset, load_clips, read_texts
from layersync_motion.features import canonicalize, joints_to_features
from layersync_motion.skeleton import T2M


@pytest.fixture(scope="module")
def hml(tmp_path_factory):
    root = tmp_path_factory.mktemp("hml")
    recs = [
        ClipRecord(
            "000001", synthetic_clip(T2M, 61, 0), ["a person walks to the left", "someone walks"]
        ),
        ClipRecord(
            "000002", synthetic_clip(T2M, 31, 1), ["too short"]
        ),  # 30 feature frames: dropped
        # 150 frames, and its 1 s .. 5 s sub-clip (80 frames) is a clip of its own
        ClipRecord(
            "000003", synthetic_clip(T2M, 151, 2), ["whole", "a person jumps"], [(0, 0), (1, 5)]
        ),
        ClipRecord("000004", synthetic_clip(T2M, 101, 3), ["a person turns right"]),
        # 210 frames: too long, and (as MDM) so are its sub-clips, checked only after the whole
        ClipRecord(
            "000005", synthetic_clip(T2M, 211, 4), ["long", "a person sits"], [(0, 0), (1, 5)]
        ),
    ]
    write_dataset(
        root, recs, {"train": ["000001", "000002", "000003", "000005"], "test": ["000004"]}
    )
    return root


def test_layout_and_statistics(hml):
    assert (hml / "train.txt").read_text().split()[:6] == [
        "000001",
        "M000001",
        "000002",
        "M000002",
        "000003",
        "M000003",
    ]
    assert read_texts(hml / "texts" / "M000001.txt")[0].caption == "a person walks to the right"
    assert read_texts(hml / "texts" / "000003.txt")[1].start == 1.0
    feats = np.concatenate([np.load(p) for p in sorted((hml / "new_joint_vecs").glob("*.npy"))])
    np.testing.assert_allclose(np.load(hml / "Mean.npy"), feats.mean(0), rtol=1e-5, atol=1e-6)
    std = np.load(hml / "Std.npy")
    assert std[4] == std[66] and std[67] == std[192]  # one value per feature group
    np.testing.assert_allclose(std[4], feats[:, 4:67].std(0).mean(), rtol=1e-5)


def test_length_filter_subclips_and_mirrors(hml):
    clips = load_clips(hml, "train", T2M, min_len=40)
    names = [c.name for c in clips]
    assert names == [
        "000001",
        "M000001",
        "000003#1#5",
        "M000003#1#5",
        "000003",
        "M000003",
    ]  # by length
    assert [c.length for c in clips] == [60, 60, 80, 80, 150, 150]
    assert [t.caption for t in clips[-1].texts] == ["whole"]
    whole = np.load(hml / "new_joint_vecs" / "000003.npy")
    np.testing.assert_array_equal(clips[2].motion, whole[20:100])
    assert [t.caption for t in clips[2].texts] == ["a person jumps"]


def test_items_crop_pad_mask_normalise(hml):
    ds = MotionDataset(hml, "train", seed=0)
    lengths, captions = Counter(), Counter()
    for epoch in range(12):
        ds.set_epoch(epoch)
        item = ds[0]
        x, mask, n = item["x"], item["mask"], item["length"]
        assert x.shape == (196, 263) and mask.dtype == torch.bool and n % 4 == 0
        assert int(mask.sum()) == n and (x[n:] == 0).all()
        raw = ds.denormalize(x[:n].numpy())
        full = ds.clips[0].motion
        starts = [
            s for s in range(len(full) - n + 1) if np.allclose(full[s : s + n], raw, atol=1e-4)
        ]
        assert starts, "the item is a window of the clip"
        lengths[n] += 1
        captions[item["caption"]] += 1
    assert (
        set(lengths) == {56, 60} and lengths[60] > lengths[56]
    )  # 60 frames: 'single' 60, 'double' 56
    assert set(captions) == {"a person walks to the left", "someone walks"}
    ds.set_epoch(3)
    a = ds[1]
    ds.set_epoch(3)
    assert torch.equal(ds[1]["x"], a["x"])  # (seed, epoch, index) decides every draw


def test_mirror_is_a_canonical_reflection():
    joints = synthetic_clip(T2M, 30, 5)
    np.testing.assert_allclose(mirror_joints(T2M, mirror_joints(T2M, joints)), joints)
    a = canonicalize(T2M, mirror_joints(T2M, joints)).numpy()
    b = mirror_joints(T2M, canonicalize(T2M, joints).numpy())
    np.testing.assert_allclose(a, b, atol=1e-9)
    assert (
        mirror_text("Left foot, then right hand; upright") == "Right foot, then left hand; upright"
    )


def test_group_std_guards_constant_groups():
    feats, _ = joints_to_features(T2M, synthetic_clip(T2M, 30, 6))
    feats[:, -4:] = 1.0
    assert (group_std(feats, 22)[-4:] == 1.0).all()


# -- one-line errors ---------------------------------------------------------------------------


def test_split_id_with_npy(hml, tmp_path):
    (tmp_path / "train.txt").write_text("000001\n000002.npy\n")
    with pytest.raises(
        MotionDataError, match=r"train.txt:2: split id '000002.npy' must not end with .npy"
    ):
        load_clips(tmp_path, "train", T2M, 40)


def test_wrong_feature_width(tmp_path):
    (tmp_path / "new_joint_vecs").mkdir()
    np.save(tmp_path / "new_joint_vecs" / "a.npy", np.zeros((50, 251), np.float32))
    (tmp_path / "train.txt").write_text("a\n")
    with pytest.raises(
        MotionDataError, match=r"a.npy: feature width 251 .* expected 263 for skeleton 't2m'"
    ):
        load_clips(tmp_path, "train", T2M, 40)


def test_malformed_text_line(tmp_path):
    (tmp_path / "t.txt").write_text("a person walks#a/DET#0.0#0.0\na person runs#0#0\n")
    with pytest.raises(MotionDataError, match=r"t.txt:2: malformed text line"):
        read_texts(tmp_path / "t.txt")
    (tmp_path / "u.txt").write_text("a person walks#a/DET#zero#0.0\n")
    with pytest.raises(MotionDataError, match=r"u.txt:1: start/end must be numbers"):
        read_texts(tmp_path / "u.txt")


def test_missing_mean_std(hml, tmp_path):
    with pytest.raises(MotionDataError, match=r"dataset mean \(Mean.npy\) not found: .*Mean.npy"):
        MotionDataset(tmp_path, "train")
    np.save(tmp_path / "Mean.npy", np.zeros(263, np.float32))
    np.save(tmp_path / "Std.npy", np.ones(251, np.float32))
    with pytest.raises(MotionDataError, match=r"Std.npy: shape \(251,\), expected \(263,\)"):
        MotionDataset(tmp_path, "train")


def test_kit_layout_251_dims_and_12_5_fps_subclips(tmp_path):
    from layersync_motion.skeleton import KIT

    recs = [
        ClipRecord(
            "00001", synthetic_clip(KIT, 61, 0), ["walk", "a person waves"], [(0, 0), (1.2, 4.0)]
        )
    ]
    write_dataset(tmp_path, recs, {"train": ["00001"]}, KIT, mirror=False)
    ds = MotionDataset(tmp_path, "train", skeleton="kit", seed=0)
    assert [c.name for c in ds.clips] == ["00001#1.2#4", "00001"]  # 24 <= 35 frames: KIT's minimum
    assert ds.clips[0].length == int(4.0 * 12.5) - int(1.2 * 12.5) and ds.clips[1].length == 60
    assert ds[1]["x"].shape == (196, 251)
