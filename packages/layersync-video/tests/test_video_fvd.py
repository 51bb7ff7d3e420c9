"""FVD: preprocessing, statistics, and a real-footage sanity check with the real I3D.

The real-footage test needs Debian's opencv-doc clips (the ``opencv_videos`` fixture).
Measured (n = 20): FVD(vtest vs other vtest clips) 486.8, FVD(vtest vs Megamind) 5147.3.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from layersync.assets import AssetError
from layersync.metrics import frechet_distance
from layersync_video.data import crop_resize, read_frames
from layersync_video.fvd import clip_stats, metric_name, preprocess, to_uint8


def test_metric_name_carries_n():
    assert metric_name(2048) == "fvd2048_16f" and metric_name(64) == "fvd64_16f"


def test_preprocess_first_16_frames_rgb_half_pixel_bilinear():
    g = torch.Generator().manual_seed(0)
    clips = torch.randint(0, 256, (2, 1, 20, 32, 24), generator=g, dtype=torch.uint8)
    x = preprocess(clips)
    assert x.shape == (2, 3, 16, 224, 224) and x.dtype == torch.float32
    frame = clips[1, :, 5].float()[None]  # (1, 1, 32, 24)
    ref = F.interpolate(frame, size=(224, 224), mode="bilinear", align_corners=False)
    ref = ref[0, 0] * 2 / 255 - 1
    for c in range(3):  # grey repeated to RGB
        torch.testing.assert_close(x[1, c, 5], ref)
    same = torch.randint(0, 256, (1, 3, 16, 224, 224), generator=g, dtype=torch.uint8)
    torch.testing.assert_close(preprocess(same), same.float() * 2 / 255 - 1)  # no resize at 224
    with pytest.raises(ValueError, match="at least 16 frames, got 8"):
        preprocess(clips[:, :, :8])
    with pytest.raises(ValueError, match="expects uint8"):
        preprocess(clips.float())


def test_to_uint8_matches_saved_pixels():
    x = torch.tensor([-1.0, -0.5, 0.0, 0.999, 1.0, 1.5])
    assert to_uint8(x).tolist() == [0, 64, 128, 255, 255, 255]


def test_clip_stats_and_fvd_equal_numpy():
    g = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, 256, (5, 3, 16, 8, 8), generator=g, dtype=torch.uint8)]
    batches.append(torch.randint(0, 256, (4, 3, 16, 8, 8), generator=g, dtype=torch.uint8))

    def feats(c):  # a cheap 6-d "feature network"
        return c.float().mean(dim=(3, 4))[:, :, :2].reshape(len(c), -1)

    stats = clip_stats(batches, feats)
    all_f = torch.cat([feats(b) for b in batches]).double().numpy()
    np.testing.assert_allclose(stats.mu, all_f.mean(0))
    np.testing.assert_allclose(stats.sigma, np.cov(all_f, rowvar=False))
    assert stats.n == 9
    assert abs(stats.frechet_distance(stats)) < 1e-6
    other = clip_stats([batches[1]], feats)
    assert stats.frechet_distance(other) == pytest.approx(
        frechet_distance(stats.mu, stats.sigma, other.mu, other.sigma)
    )


# -----------------------------------------------------------------------------
# Real footage (slow: I3D costs ~2 s per clip on 2 CPU cores)


def clips_of(path: Path, starts: list[int], size: int = 112) -> torch.Tensor:
    """uint8 (N, 3, 16, size, size): 16 consecutive frames from each start (centre crop)."""
    out = [crop_resize(read_frames(path, list(range(s, s + 16))), size) for s in starts]
    return to_uint8(torch.stack(out))


@pytest.mark.slow
@pytest.mark.weights
def test_real_footage_fvd_separates_videos(opencv_videos):
    """FVD(vtest clips vs other vtest clips) is far below FVD(vtest vs Megamind), n = 20."""
    from layersync_video.fvd import I3DFeatures
    from layersync_video.i3d import load_i3d

    root = opencv_videos
    try:
        feats = I3DFeatures(load_i3d(), batch_size=4)
    except AssetError as e:
        pytest.skip(str(e))
    n = 20
    vtest_a = clip_stats([clips_of(root / "vtest.avi", [38 * k for k in range(n)])], feats)
    vtest_b = clip_stats([clips_of(root / "vtest.avi", [38 * k + 19 for k in range(n)])], feats)
    mega = clip_stats([clips_of(root / "Megamind.avi", [12 * k for k in range(n)])], feats)
    same, different = vtest_a.frechet_distance(vtest_b), vtest_a.frechet_distance(mega)
    print(f"FVD n={n}: vtest vs vtest {same:.1f}, vtest vs Megamind {different:.1f}")
    assert same * 3 < different
