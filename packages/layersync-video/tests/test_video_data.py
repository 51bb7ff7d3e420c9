"""Video data: PyAV files (generated in the test), frame folders, arrays, moving digits, errors.

Frame t of every generated video is a uniform grey of value 10*t, so the decoded mean tells
which source frame a clip frame came from (lossy codecs move it by a few levels only).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from layersync.media import save_mp4
from layersync_video.data import (
    ArrayVideoDataset,
    FrameFolderDataset,
    VideoDataError,
    VideoFileDataset,
    clevrer,
    count_frames,
    crop_resize,
)
from layersync_video.digits import MovingDigits, bounce


def grey_video(n: int, h: int = 32, w: int = 48) -> np.ndarray:
    """(n, h, w, 3) uint8, frame t = 10 * t, with a bright bar in the right half (flip marker)."""
    x = np.repeat((10 * np.arange(n, dtype=np.uint8))[:, None, None, None], 3, axis=3)
    x = np.broadcast_to(x, (n, h, w, 3)).copy()
    return x


def frame_ids(clip: torch.Tensor) -> list[int]:
    """Source frame index of each frame of a (C, T, H, W) clip in [-1, 1] of a grey video."""
    values = (clip + 1) * 127.5
    return [round(v / 10) for v in values.mean(dim=(0, 2, 3)).tolist()]


@pytest.fixture
def mp4(tmp_path) -> Path:
    return save_mp4(tmp_path / "clips" / "a.mp4", grey_video(24), fps=10)


# -----------------------------------------------------------------------------
# Video files


def test_mp4_clip_frames_stride_and_seeded_start(mp4):
    assert count_frames(mp4) == 24 and count_frames(mp4, exact=True) == 24
    ds = VideoFileDataset(mp4.parent, frames=4, stride=3, size=16, seed=7)
    assert len(ds) == 1 and ds.lengths == [24] and ds.span == 10
    clip, label = ds[0]
    assert clip.shape == (3, 4, 16, 16) and clip.dtype == torch.float32 and label.item() == 0
    ids = frame_ids(clip)
    assert np.diff(ids).tolist() == [3, 3, 3]
    starts = set()
    for epoch in range(8):
        ds.set_epoch(epoch)
        starts.add(frame_ids(ds[0][0])[0])
        assert frame_ids(ds[0][0]) == frame_ids(ds[0][0])  # same (seed, epoch, index): same clip
    assert len(starts) > 1 and all(0 <= s <= 24 - 10 for s in starts)
    fixed = VideoFileDataset(mp4.parent, frames=4, stride=3, size=16, random_start=False)
    assert frame_ids(fixed[0][0]) == [0, 3, 6, 9]


def test_crop_is_centre_square_then_resize():
    clip = np.zeros((1, 4, 6, 3), np.uint8)
    clip[:, :, 1:5] = 255  # the centre 4x4 square is white, the side columns black
    out = crop_resize(clip, None)
    assert out.shape == (3, 1, 4, 4) and torch.all(out == 1)
    half = crop_resize(clip, 2)
    assert half.shape == (3, 1, 2, 2) and torch.allclose(half, torch.ones(3, 1, 2, 2))


def test_hflip_is_drawn_per_item(tmp_path):
    x = np.zeros((12, 16, 16, 3), np.uint8)
    x[:, :, 8:] = 200  # right half bright
    path = save_mp4(tmp_path / "v" / "f.mp4", x, fps=10)
    ds = VideoFileDataset(path, frames=2, size=16, hflip=True, seed=0)
    sides = set()
    for epoch in range(10):
        ds.set_epoch(epoch)
        clip = ds[0][0]
        sides.add(bool(clip[..., 8:].mean() > clip[..., :8].mean()))
    assert sides == {True, False}


def test_truncated_mp4_is_one_line_error_or_skipped(mp4, tmp_path):
    bad = mp4.parent / "b.mp4"
    raw = mp4.read_bytes()
    bad.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(VideoDataError, match=r"b\.mp4: cannot decode video \(") as e:
        VideoFileDataset(mp4.parent, frames=4, size=16)
    assert "\n" not in str(e.value)
    ds = VideoFileDataset(mp4.parent, frames=4, size=16, on_error="skip")
    assert len(ds) == 1 and list(ds.skipped) == [str(bad)]
    (mp4.parent / "c.mp4").write_bytes(b"\x00" * 100)  # not a video at all
    ds = VideoFileDataset(mp4.parent, frames=4, size=16, on_error="skip")
    assert len(ds) == 1 and len(ds.skipped) == 2


def test_too_short_video_names_its_frame_count(mp4):
    with pytest.raises(VideoDataError, match=r"a\.mp4: 24 frames, shorter than one clip \(16 fra"):
        VideoFileDataset(mp4.parent, frames=16, stride=2, size=16)
    ds = VideoFileDataset([mp4, mp4], frames=16, stride=1, size=16)
    assert len(ds) == 2
    with pytest.raises(VideoDataError, match="no usable video"):
        VideoFileDataset(mp4.parent, frames=16, stride=2, size=16, on_error="skip")


def test_missing_path_and_empty_folder(tmp_path):
    with pytest.raises(VideoDataError, match=r"data.path = .*nope: no such file"):
        VideoFileDataset(tmp_path / "nope")
    with pytest.raises(VideoDataError, match=r"no video files"):
        VideoFileDataset(tmp_path)


def test_clevrer_layout(tmp_path):
    folder = tmp_path / "video_validation" / "video_10000-11000"
    x = np.zeros((20, 32, 48, 3), np.uint8)
    x[:, :, 8:40] = 255  # the centre 32x32 square white
    save_mp4(folder / "video_10000.mp4", x, fps=25)
    ds = clevrer(tmp_path, "eval", frames=8, stride=2, size=16, seed=0)
    clip, _ = ds[0]
    assert clip.shape == (3, 8, 16, 16) and clip.mean() > 0.95
    with pytest.raises(VideoDataError, match="no video_train/ folder"):
        clevrer(tmp_path, "train")


# -----------------------------------------------------------------------------
# Frame folders and arrays


def test_frame_folders(tmp_path):
    video = grey_video(12, 16, 16)
    for name in ("v1", "v2"):
        (tmp_path / name).mkdir()
        for t, frame in enumerate(video):
            Image.fromarray(frame).save(tmp_path / name / f"{t}.png")
    ds = FrameFolderDataset(tmp_path, frames=5, stride=2, size=8, random_start=False)
    assert len(ds) == 2
    clip, _ = ds[1]
    assert clip.shape == (3, 5, 8, 8)
    assert frame_ids(clip) == [0, 2, 4, 6, 8]  # natural order: 10.png after 9.png


def test_frame_folder_mixed_sizes(tmp_path):
    folder = tmp_path / "v"
    folder.mkdir()
    Image.new("RGB", (16, 16)).save(folder / "0.png")
    Image.new("RGB", (16, 12)).save(folder / "1.jpg")
    with pytest.raises(VideoDataError, match=r"v: mixed frame sizes 16x16 \(0.png\) and 16x12"):
        FrameFolderDataset(tmp_path, frames=2)


def test_npz_arrays_with_labels(tmp_path):
    videos = np.stack([grey_video(8, 8, 8), grey_video(8, 8, 8)])
    path = tmp_path / "v.npz"
    np.savez(path, videos=videos, labels=np.array([0, 2]))
    ds = ArrayVideoDataset(path, frames=4, stride=2, random_start=False)
    clip, label = ds[1]
    assert clip.shape == (3, 4, 8, 8) and label.item() == 2 and ds.num_classes == 3
    assert frame_ids(clip) == [0, 2, 4, 6]
    np.save(tmp_path / "bad.npy", videos.astype(np.float32))
    with pytest.raises(VideoDataError, match=r"bad.npy: expected uint8 \(N, T, H, W, C\)"):
        ArrayVideoDataset(tmp_path / "bad.npy")
    with pytest.raises(VideoDataError, match=r"v.npz: 8 frames, shorter than one clip"):
        ArrayVideoDataset(path, frames=16)


# -----------------------------------------------------------------------------
# Moving digits


def test_bounce_reflects_off_both_walls():
    p = bounce(1.0, 2.0, 8, 4.0)
    assert p.tolist() == [1.0, 3.0, 3.0, 1.0, 1.0, 3.0, 3.0, 1.0]


def test_moving_digits_clip_is_the_digit_moving():
    ds = MovingDigits("train", frames=16, size=16, seed=3)
    clip, label = ds[5]
    assert clip.shape == (1, 16, 16, 16) and 0 <= label.item() < 10
    ys, xs = ds.trajectory(5)
    assert ys.min() >= 0 and ys.max() <= 8 and xs.min() >= 0 and xs.max() <= 8
    digit = torch.from_numpy(ds.images[5]).float() / 255 * 2 - 1
    for t in (0, 7, 15):
        y, x = ys[t], xs[t]
        torch.testing.assert_close(clip[0, t, y : y + 8, x : x + 8], digit)
        outside = clip[0, t].clone()
        outside[y : y + 8, x : x + 8] = -1
        assert torch.all(outside == -1)
    assert len(set(zip(ys.tolist(), xs.tolist(), strict=True))) > 1  # it moves
    ds.set_epoch(1)  # a new trajectory every epoch
    ys1, xs1 = ds.trajectory(5)
    assert not (np.array_equal(ys1, ys) and np.array_equal(xs1, xs))


def test_moving_digits_start_spread_centres_the_first_frame():
    """start_spread = fraction of the free room (centred) the first position is drawn from: 0 is
    the centre; 1 is anywhere, the same trajectories as before the option existed."""
    starts = {}
    for spread in (0.0, 0.25, 1.0):
        ds = MovingDigits("train", size=16, seed=3, start_spread=spread)
        starts[spread] = np.array([[ys[0], xs[0]] for ys, xs in map(ds.trajectory, range(200))])
    assert (starts[0.0] == 4).all()  # room 8: the centre
    assert starts[0.25].min() >= 3 and starts[0.25].max() <= 5  # 4 +- 1
    assert starts[1.0].min() == 0 and starts[1.0].max() == 8
    ds = MovingDigits("train", size=16, seed=3)
    g = ds.generator(7)  # the old formula: room * u for the start
    u = torch.rand(4, generator=g).double().tolist()
    assert ds.trajectory(7)[0][0] == round(8 * u[0]) and ds.trajectory(7)[1][0] == round(8 * u[1])
    with pytest.raises(ValueError, match=r"data\.start_spread = 1\.5"):
        MovingDigits("train", start_spread=1.5)


def test_moving_digits_splits_are_disjoint():
    train, test = MovingDigits("train"), MovingDigits("eval")
    assert len(train) + len(test) == 1797
    a = {img.tobytes() for img in train.images}
    overlap = sum(img.tobytes() in a for img in test.images)
    assert overlap <= 5  # sklearn's digits hold a few exact duplicates, no shared items otherwise


def test_truncated_avi_fails_when_read(tmp_path):
    """An AVI cut short keeps its header (frame count) but loses frames: the read names it."""
    import av

    path = tmp_path / "v.avi"
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mjpeg", rate=10)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuvj420p"
        for frame in grey_video(30, 32, 32):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    ds = VideoFileDataset(path, frames=16, stride=1, size=16, random_start=False)
    assert ds.lengths[0] > 16  # the header's count
    with pytest.raises(VideoDataError, match=r"v\.avi: cannot decode video \(") as e:
        ds[0]  # cut mid-packet: FFmpeg's "invalid data"; cut between frames: "truncated: ..."
    assert "\n" not in str(e.value)
    with pytest.raises(VideoDataError, match=r"v\.avi: cannot decode video \("):
        VideoFileDataset(path, frames=16, size=16, count=lambda p: count_frames(p, exact=True))
    ok = VideoFileDataset(path, frames=4, size=16, random_start=False)
    assert ok[0][0].shape == (3, 4, 16, 16)  # the frames before the cut still decode


# -----------------------------------------------------------------------------
# Real footage (Debian opencv-doc clips)


def test_real_avi_decoding_stride_and_crop(opencv_videos):
    from layersync_video.data import read_frames

    path = opencv_videos / "vtest.avi"
    assert count_frames(path) == 795
    frames = read_frames(path, [0, 3, 6, 9])
    assert frames.shape == (4, 576, 768, 3) and frames.dtype == np.uint8
    ds = VideoFileDataset(path, frames=4, stride=3, size=None, random_start=False)
    clip, _ = ds[0]
    assert clip.shape == (3, 4, 576, 576)  # centre square of 768x576
    centre = frames[:, :, 96:672].astype(np.float32) / 127.5 - 1
    np.testing.assert_allclose(clip.permute(1, 2, 3, 0).numpy(), centre, atol=1e-6)
    assert not np.array_equal(frames[0], frames[1])  # people walk: frames differ
    small = VideoFileDataset(path, frames=4, stride=3, size=64, random_start=False)[0][0]
    ref = torch.nn.functional.interpolate(
        torch.from_numpy(centre).permute(0, 3, 1, 2), size=(64, 64), mode="bilinear",
        antialias=True,
    )  # fmt: skip
    torch.testing.assert_close(small.permute(1, 0, 2, 3), ref, atol=2e-5, rtol=0)
