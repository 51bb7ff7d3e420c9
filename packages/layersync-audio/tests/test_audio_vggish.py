"""VGGish equals torchvggish's network under the same random weights; its front end equals
AudioSet's numpy ``mel_features``.

Fixture ``data/vggish_random.npz``, made once in the project venv from the torchvggish 0.2 sdist
(``pip download --no-deps torchvggish==0.2``, unpacked; its ``torchvggish.py``,
``mel_features.py`` and ``vggish_params.py`` loaded by file path, so resampy is not needed)::

    net = torchvggish._vgg(postprocess=False).eval()
    net.load_state_dict(vggish_ref.random_state({k: v.shape for k, v in net.state_dict().items()}))
    x = torch.randn(2, 1, 96, 64, generator=torch.Generator().manual_seed(1)) * 2 - 3
    out = net(x)                    # with the final ReLU
    pre_relu = embeddings[:-1](...)  # the same without it (checked: relu(pre_relu) == out)
    examples = mel_features.frame(mel_features.log_mel_spectrogram(musicnn_clips.clips()[0][:32000]
        (float64), 16000, log_offset=0.01, window 0.025 s, hop 0.010 s, 64 bins, 125..7500 Hz),
        96, 96)                     # vggish_input.waveform_to_examples at 16 kHz
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from musicnn_clips import clips
from vggish_ref import random_state

FIXTURE = Path(__file__).parent / "data" / "vggish_random.npz"


@pytest.fixture(scope="module")
def reference():
    with np.load(FIXTURE) as f:
        return {k: f[k] for k in f.files}


def test_network_equals_torchvggish_random_weights(reference, tmp_path):
    from layersync_audio.vggish import VGGish, load_vggish

    shapes = {k: tuple(v.shape) for k, v in VGGish().state_dict().items()}
    path = tmp_path / "vggish.pth"
    torch.save(random_state(shapes), path)
    model = load_vggish(path)  # torchvggish key names load strictly
    with torch.no_grad():
        pre = model(torch.from_numpy(reference["x"]))
    np.testing.assert_allclose(pre.numpy(), reference["pre_relu"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(pre.relu().numpy(), reference["out"], rtol=1e-4, atol=1e-5)


def test_frontend_equals_mel_features():
    from layersync_audio.vggish import VGGishFrontEnd

    with np.load(FIXTURE) as f:
        ref = f["examples"]
    got = VGGishFrontEnd()(torch.from_numpy(clips()[0][:32000]))
    assert got.shape == (2, 1, 96, 64)
    np.testing.assert_allclose(got[:, 0].numpy(), ref, rtol=1e-5, atol=1e-5)


def test_bad_weights_file(tmp_path):
    from layersync.assets import AssetError
    from layersync_audio.vggish import load_vggish

    path = tmp_path / "other.pth"
    torch.save({"features.0.weight": torch.zeros(3)}, path)
    with pytest.raises(AssetError, match=r"other\.pth: not a torchvggish state dict"):
        load_vggish(path)


def test_fad_embedding_registry(tmp_path):
    from layersync.assets import AssetError
    from layersync_audio.fad import load_embedding, metric_name
    from layersync_audio.vggish import VGGish

    assert metric_name("vggish") == "fad_vggish"
    with pytest.raises(AssetError, match=r"metric\.weights: VGGish weights do not install offline"):
        load_embedding("vggish")
    path = tmp_path / "vggish.pth"
    torch.save(random_state({k: tuple(v.shape) for k, v in VGGish().state_dict().items()}), path)
    embed = load_embedding("vggish", str(path))
    waves = [torch.from_numpy(c) for c in clips()]  # 3.0, 3.6 and 6.0 s: 3 + 3 + 6 examples
    assert embed(waves).shape == (12, 128)
    assert embed([waves[0][:8000]]).shape == (1, 128)  # 0.5 s: repeat-padded to one example
