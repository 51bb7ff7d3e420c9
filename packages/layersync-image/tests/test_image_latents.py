"""Tests for layersync_image.latents: encoding a dataset with a tiny VAE and reading the cache."""

import json
import pickle
import re
import sys

import numpy as np
import pytest
import torch

from layersync.assets import AssetError
from layersync_image.data import ArrayDataset, InMemoryDataset
from layersync_image.latents import LatentDataset, encode_dataset, load_vae

N, SIZE = 10, 16


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory, tiny_vae):
    return tiny_vae(tmp_path_factory.mktemp("vae"), sample_size=SIZE, scaling_factor=0.5)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).integers(0, 256, (N, SIZE, SIZE, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def labels():
    return np.array([3, 1, 4, 1, 5, 9, 2, 6, 5, 3])


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, images, labels):
    path = tmp_path_factory.mktemp("arrays") / "images.npz"
    np.savez(path, images=images, labels=labels)
    return ArrayDataset(path, num_classes=10)


@pytest.fixture(scope="module")
def reference(vae_dir, dataset):
    """The VAE posterior on all images at once, straight from diffusers."""
    vae = load_vae(vae_dir).eval()
    x = torch.stack([dataset[i][0] for i in range(N)])
    with torch.no_grad():
        d = vae.encode(x).latent_dist
        f = vae.encode(x.flip(-1)).latent_dist
    return {"mean": d.mean, "std": d.std, "mean_flip": f.mean, "std_flip": f.std}


@pytest.fixture(scope="module")
def cache(vae_dir, dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("caches") / "flat"
    return encode_dataset(dataset, vae_dir, out, batch_size=3, shard_size=4)


@pytest.fixture(scope="module")
def flip_cache(vae_dir, dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("caches") / "flip"
    return encode_dataset(dataset, vae_dir, out, batch_size=4, flip=True, scale_factor=None)


def test_cache_layout_and_moments(cache, reference, labels):
    meta = json.loads((cache / "meta.json").read_text())
    assert meta["count"] == N and meta["latent_shape"] == [4, 8, 8]
    assert meta["scale_factor"] == 0.18215 and meta["vae_scaling_factor"] == 0.5
    assert (meta["image_size"], meta["image_channels"], meta["num_classes"]) == (SIZE, 3, 10)
    assert meta["flip"] is False and meta["dtype"] == "float16"
    assert [s["count"] for s in meta["shards"]] == [4, 4, 2]
    assert sorted(p.name for p in cache.parent.iterdir()) == ["flat"]  # no .partial left
    ds = LatentDataset(cache)
    assert (len(ds), ds.channels, ds.image_size, ds.num_classes) == (N, 4, 8, 10)
    assert ds.source_image_size == SIZE and ds.flip is False
    mean = torch.stack([ds.moments(i)[0] for i in range(N)])
    std = torch.stack([ds.moments(i)[1] for i in range(N)])
    assert mean.shape == (N, 4, 8, 8)
    torch.testing.assert_close(mean, reference["mean"], atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(std, reference["std"], atol=1e-3, rtol=1e-3)
    assert ds.labels.tolist() == labels.tolist() and ds.labels.dtype == torch.int64


def test_items_sample_the_posterior(cache, labels):
    ds = LatentDataset(cache, seed=5)
    for i in (0, 4, 9):  # one item in each shard
        mean, std = ds.moments(i)
        eps = torch.randn(mean.shape, generator=ds.generator(i))  # no flip view: eps only
        z, y = ds[i]
        torch.testing.assert_close(z, (mean + std * eps) * 0.18215)
        assert y.dtype == torch.int64 and y.shape == () and int(y) == labels[i]
        torch.testing.assert_close(ds[i][0], z)  # same seed and epoch: same draw
    z0 = ds[0][0]
    ds.set_epoch(1)
    assert not torch.equal(ds[0][0], z0)  # a new epoch draws new noise
    ds.set_epoch(0)
    mean_only = LatentDataset(cache, sample=False)
    torch.testing.assert_close(mean_only[3][0], mean_only.moments(3)[0] * 0.18215)
    # the noise has unit variance: z / scale - mean over all items and positions is N(0, std^2)
    many = torch.stack(
        [(ds[i][0] / 0.18215 - ds.moments(i)[0]) / ds.moments(i)[1] for i in range(N)]
    )
    assert abs(float(many.mean())) < 0.1 and abs(float(many.std()) - 1) < 0.1


def test_flipped_views(flip_cache, reference):
    ds = LatentDataset(flip_cache, seed=2)
    assert ds.flip is True and ds.scale_factor == 0.5  # scale_factor=None: the VAE's config
    for suffix, flipped in (("", False), ("_flip", True)):
        mean = torch.stack([ds.moments(i, flipped)[0] for i in range(N)])
        std = torch.stack([ds.moments(i, flipped)[1] for i in range(N)])
        torch.testing.assert_close(mean, reference["mean" + suffix], atol=1e-3, rtol=1e-3)
        torch.testing.assert_close(std, reference["std" + suffix], atol=1e-3, rtol=1e-3)
    views = []
    for i in range(N):
        g = ds.generator(i)
        flipped = ds.coin(g)  # documented order: view first, then eps
        mean, std = ds.moments(i, flipped)
        expect = (mean + std * torch.randn(mean.shape, generator=g)) * 0.5
        torch.testing.assert_close(ds[i][0], expect)
        views.append(flipped)
    assert 0 < sum(views) < N
    never = LatentDataset(flip_cache, flip=False, sample=False)
    torch.testing.assert_close(never[1][0], never.moments(1)[0] * 0.5)


def test_pickles_for_dataloader_workers(cache):
    ds = LatentDataset(cache, seed=1)
    first = ds[7][0]
    clone = pickle.loads(pickle.dumps(ds))
    torch.testing.assert_close(clone[7][0], first)
    loader = torch.utils.data.DataLoader(ds, batch_size=5, num_workers=1)
    z, y = next(iter(loader))
    assert z.shape == (5, 4, 8, 8) and y.tolist() == ds.labels[:5].tolist()
    torch.testing.assert_close(z[0], ds[0][0])


def test_grayscale_to_rgb_vae(vae_dir, images, tmp_path):
    gray = InMemoryDataset(images[..., :1])
    rgb = InMemoryDataset(np.repeat(images[..., :1], 3, axis=-1))
    a = LatentDataset(encode_dataset(gray, vae_dir, tmp_path / "g"), sample=False)
    b = LatentDataset(encode_dataset(rgb, vae_dir, tmp_path / "c"), sample=False)
    torch.testing.assert_close(a[2][0], b[2][0])
    assert a.num_classes == 1 and int(a[2][1]) == 0


class Flaky(torch.utils.data.Dataset):
    """Counts reads; fails at index ``fail_at`` (simulating an interrupted run)."""

    def __init__(self, base, fail_at=None):
        self.base, self.fail_at, self.reads = base, fail_at, []
        self.image_size, self.channels, self.num_classes = 16, 3, 10

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        if i == self.fail_at:
            raise RuntimeError("interrupted")
        self.reads.append(i)
        return self.base[i]

    def __repr__(self):
        return "Flaky(images.npz)"


def test_resume_keeps_finished_shards(vae_dir, dataset, cache, tmp_path):
    out = tmp_path / "resumed"
    with pytest.raises(RuntimeError, match="interrupted"):
        encode_dataset(Flaky(dataset, fail_at=9), vae_dir, out, batch_size=2, shard_size=4)
    partial = tmp_path / "resumed.partial"
    assert sorted(p.name for p in partial.glob("*.safetensors")) == [
        "shard-00000.safetensors",
        "shard-00001.safetensors",
    ]
    again = Flaky(dataset)
    seen = []
    encode_dataset(
        again, vae_dir, out, batch_size=2, shard_size=4, progress=lambda d, t: seen.append((d, t))
    )
    assert again.reads == [8, 9]  # only the unfinished shard is encoded again
    assert seen == [(4, 10), (8, 10), (10, 10)]
    assert not partial.exists()
    got, ref = LatentDataset(out), LatentDataset(cache)
    for i in range(N):
        torch.testing.assert_close(got.moments(i), ref.moments(i), atol=1e-3, rtol=1e-3)
    # a different plan (here: the flip option) starts afresh
    with pytest.raises(RuntimeError):
        encode_dataset(Flaky(dataset, fail_at=5), vae_dir, tmp_path / "x", shard_size=4)
    fresh = Flaky(dataset)
    encode_dataset(fresh, vae_dir, tmp_path / "x", shard_size=4, flip=True)
    assert fresh.reads == list(range(N))


def test_errors(vae_dir, dataset, cache, tmp_path, monkeypatch):
    with pytest.raises(AssetError, match=re.escape(f"--vae: no such folder: {tmp_path / 'novae'}")):
        encode_dataset(dataset, tmp_path / "novae", tmp_path / "out")
    with pytest.raises(FileExistsError, match=re.escape(f"{cache} already exists")):
        encode_dataset(dataset, vae_dir, cache)
    flips = ArrayDataset(dataset.name, hflip=True)
    with pytest.raises(ValueError, match="hflip=True"):
        encode_dataset(flips, vae_dir, tmp_path / "out")
    four = InMemoryDataset(np.zeros((2, 4, 16, 16), np.float32))
    with pytest.raises(ValueError, match=r"takes 3 channels, the dataset gives 4"):
        encode_dataset(four, vae_dir, tmp_path / "out4")
    with pytest.raises(FileNotFoundError, match=re.escape(f"no meta.json): {tmp_path}")):
        LatentDataset(tmp_path)
    with pytest.raises(ValueError, match="no flipped latents"):
        LatentDataset(cache, flip=True)
    monkeypatch.setitem(sys.modules, "diffusers", None)  # as if not installed
    with pytest.raises(AssetError, match=r"needs diffusers: pip install 'layersync-image\[vae\]'"):
        load_vae(vae_dir)


def test_overwrite_replaces_cache(vae_dir, images, tmp_path):
    out = tmp_path / "c"
    encode_dataset(InMemoryDataset(images[:3]), vae_dir, out)
    encode_dataset(InMemoryDataset(images[3:8]), vae_dir, out, overwrite=True)
    assert len(LatentDataset(out)) == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]
