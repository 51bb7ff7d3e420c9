"""The embedded DeepMimic dataset: read from the pybullet wheel, written as HumanML3D, loaded back."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from layersync_motion.data import MotionDataset, read_texts
from layersync_motion.features import recover_from_ric
from layersync_motion.render import render_clip, write_grid_gif
from layersync_motion.skeleton import T2M

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("pybullet_data") is None,
    reason="pip install pybullet (its data files)",
)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    from layersync_motion import embedded

    mp = pytest.MonkeyPatch()
    mp.setenv("LAYERSYNC_CACHE", str(tmp_path_factory.mktemp("cache")))
    try:
        yield embedded.embedded_root()
    finally:
        mp.undo()


def joints(root, name):
    return recover_from_ric(
        torch.from_numpy(np.load(root / "new_joint_vecs" / f"{name}.npy")), 22
    ).numpy()


def test_all_clips_load_through_the_real_loader(root):
    ds = MotionDataset(root, "train", seed=0)
    assert len(ds) == 20 * 3 * 2  # clips x speeds x mirror
    lengths = [c.length for c in ds.clips]
    assert min(lengths) >= 48 and max(lengths) <= 196
    item = ds[0]
    assert item["x"].shape == (196, 263) and item["length"] % 4 == 0
    assert (
        read_texts(root / "texts" / "cartwheel_slow.txt")[0].caption
        == "a person does a cartwheel slowly"
    )
    assert (
        read_texts(root / "texts" / "Mwalker_turn_left0.txt")[0].caption
        == "a person walks and turns right"
    )
    # a mirror shares its source's caption unless left/right swap it (turn_left0 <-> turn_right)
    assert len({c.texts[0].caption for c in ds.clips}) == 60


def test_motions_are_what_their_captions_say(root):
    walk = joints(root, "walk")
    speed = np.linalg.norm(walk[-1, 0, [0, 2]] - walk[0, 0, [0, 2]]) / (len(walk) / 20)
    assert 0.8 < speed < 2.0  # m/s, a walk
    assert walk[0, 0, 2] < walk[-1, 0, 2]  # forward is +Z after canonicalisation
    fast, slow = joints(root, "walk_fast"), joints(root, "walk_slow")
    v = lambda j: np.linalg.norm(j[-1, 0, [0, 2]] - j[0, 0, [0, 2]]) / len(j)  # noqa: E731
    assert v(fast) / v(walk) == pytest.approx(1.25, rel=0.1) and v(slow) / v(walk) == pytest.approx(
        0.8, rel=0.1
    )
    # a cartwheel puts the head below the pelvis; a jump leaves the floor with both feet
    cart = joints(root, "cartwheel")
    assert (cart[:, 15, 1] < cart[:, 0, 1]).any()
    jump = joints(root, "jump")
    assert jump[:, [10, 11], 1].min(axis=1).max() > 0.2

    def turn(j):
        a = j[0, 2] - j[0, 1] + j[0, 17] - j[0, 16]
        b = j[-1, 2] - j[-1, 1] + j[-1, 17] - j[-1, 16]
        return np.arctan2(np.cross(a, b)[1], (a * b).sum())

    left, mirrored = (
        turn(joints(root, "walker_turn_left0")),
        turn(joints(root, "Mwalker_turn_left0")),
    )
    assert left > 0.5 and mirrored == pytest.approx(
        -left, abs=1e-3
    )  # left = counter-clockwise seen from above


def test_stick_figure_gif(root, tmp_path):
    clip = joints(root, "walk")
    frames = render_clip(T2M, clip, size=64)
    assert frames.shape == (len(clip), 64, 64, 3) and frames.dtype == np.uint8
    assert (
        (frames.reshape(len(clip), -1, 3) == [200, 40, 40]).all(-1).any(-1).all()
    )  # right limbs drawn
    from PIL import Image

    path = write_grid_gif(
        tmp_path / "g.gif", T2M, [clip, joints(root, "jump")], fps=20, nrow=2, size=64
    )
    with Image.open(path) as im:
        assert im.n_frames == max(len(clip), len(joints(root, "jump"))) and im.size == (
            2 * 64 + 6,
            64 + 4,
        )
