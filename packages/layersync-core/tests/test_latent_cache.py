"""layersync.latents: shape-agnostic caches ((64, L) audio, (4, F, h, w) video), per-item
fields, fresh eps per visit, resume after an interruption, and reading image-plugin caches."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from safetensors.torch import save_file

from layersync.latents import LatentCache, LatentDataset, write_latent_cache


def _posterior(n: int, shape: tuple[int, ...], seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(n, *shape, generator=g)
    std = torch.rand(n, *shape, generator=g) * 0.5 + 0.1
    return mean, std


def _encoder(mean, std, fields, calls=None):
    def encode(lo, hi):
        if calls is not None:
            calls.append((lo, hi))
        out = {"mean": mean[lo:hi], "std": std[lo:hi]}
        for k, v in fields.items():
            out[k] = v[lo:hi]
        return out

    return encode


def test_audio_cache_64_by_L_with_tags_and_lengths(tmp_path):
    n, shape = 7, (64, 40)
    mean, std = _posterior(n, shape)
    tags = (torch.rand(n, 12, generator=torch.Generator().manual_seed(1)) > 0.6).float()
    lengths = torch.tensor([40, 33, 12, 40, 25, 8, 40])
    out = write_latent_cache(
        tmp_path / "audio",
        n,
        _encoder(mean, std, {"tags": tags, "lengths": lengths}),
        scale_factor=0.5,
        dtype=torch.float32,
        shard_size=3,
        info={"vae": "toy", "sample_rate": 44100},
    )
    meta = json.loads((out / "meta.json").read_text())
    assert meta["latent_shape"] == [64, 40] and meta["count"] == n and meta["flip"] is False
    assert meta["fields"] == {
        "tags": {"kind": "tensor", "dtype": "float32", "shape": [12]},
        "lengths": {"kind": "tensor", "dtype": "int64", "shape": []},
    }
    assert meta["sample_rate"] == 44100 and [s["count"] for s in meta["shards"]] == [3, 3, 1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audio"]  # no .partial left

    ds = LatentDataset(out, seed=3)
    assert len(ds) == n and ds.latent_shape == (64, 40) and ds.field_names == ["tags", "lengths"]
    for i in range(n):
        m, s = ds.cache.moments(i)
        assert torch.equal(m, mean[i]) and torch.equal(s, std[i])  # float32: exact
        z, t, length = ds[i]
        eps = torch.randn(shape, generator=ds.generator(i))
        torch.testing.assert_close(z, (mean[i] + std[i] * eps) * 0.5)
        assert torch.equal(t, tags[i]) and int(length) == int(lengths[i])
    z0 = ds[0][0]
    ds.set_epoch(1)
    assert not torch.equal(ds[0][0], z0)  # a fresh eps per epoch
    only = LatentDataset(out, fields=["lengths"], sample=False)
    z, length = only[5]
    torch.testing.assert_close(z, mean[5] * 0.5)
    assert int(length) == 8


def test_video_cache_4_F_h_w_with_captions_and_flip(tmp_path):
    n, shape = 5, (4, 3, 6, 6)
    mean, std = _posterior(n, shape, seed=1)
    mflip, sflip = _posterior(n, shape, seed=2)
    captions = [["a red ball"], ["two", "cubes"], [], ["x"], ["y", "z", "w"]]
    labels = torch.arange(n) * 2

    def encode(lo, hi):
        return {
            "mean": mean[lo:hi],
            "std": std[lo:hi],
            "mean_flip": mflip[lo:hi],
            "std_flip": sflip[lo:hi],
            "labels": labels[lo:hi],
            "captions": captions[lo:hi],
        }

    out = write_latent_cache(tmp_path / "video", n, encode, scale_factor=1.0, shard_size=2)
    cache = LatentCache(out)
    assert cache.latent_shape == shape and cache.has_flip and cache.meta["dtype"] == "float16"
    assert cache.fields["captions"] == {"kind": "text"}
    assert cache.field("captions") == captions
    m, s = cache.moments(4, flipped=True)
    torch.testing.assert_close(m, mflip[4].half().float())
    torch.testing.assert_close(s, sflip[4].half().float())
    ds = LatentDataset(out, seed=0)
    views = []
    for i in range(n):
        g = ds.generator(i)
        flipped = ds.coin(g)  # documented order: view first, then eps
        mm, ss = cache.moments(i, flipped)
        expect = mm + ss * torch.randn(shape, generator=g)
        z, label, caps = ds[i]
        torch.testing.assert_close(z, expect)
        assert int(label) == 2 * i and caps == captions[i]
        views.append(flipped)
    assert 0 < sum(views) < n
    clone = pickle.loads(pickle.dumps(ds))
    torch.testing.assert_close(clone[3][0], ds[3][0])
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=1, collate_fn=list)
    assert torch.equal(next(iter(loader))[1][0], ds[1][0])
    with pytest.raises(ValueError, match="holds no flipped latents"):
        LatentDataset(
            write_latent_cache(tmp_path / "v2", n, _encoder(mean, std, {}), scale_factor=1.0),
            flip=True,
        )


def test_resume_keeps_finished_shards_and_errors(tmp_path):
    n, shape = 6, (2, 4)
    mean, std = _posterior(n, shape)
    calls = []
    good = _encoder(mean, std, {}, calls)

    def fails_at_4(lo, hi):
        if lo >= 4:
            raise RuntimeError("interrupted")
        return good(lo, hi)

    with pytest.raises(RuntimeError, match="interrupted"):
        write_latent_cache(tmp_path / "c", n, fails_at_4, scale_factor=1.0, shard_size=2)
    assert not (tmp_path / "c").exists() and (tmp_path / "c.partial").is_dir()
    calls.clear()
    write_latent_cache(tmp_path / "c", n, good, scale_factor=1.0, shard_size=2)
    assert calls == [(4, 6)]  # shards 0 and 1 were kept
    with pytest.raises(FileExistsError, match="already exists"):
        write_latent_cache(tmp_path / "c", n, good, scale_factor=1.0)

    def bad_rows(lo, hi):
        return {"mean": mean[lo:hi], "std": std[lo:hi], "labels": torch.zeros(1)}

    with pytest.raises(ValueError, match="field 'labels': expected 2 rows, got 1"):
        write_latent_cache(tmp_path / "d", n, bad_rows, scale_factor=1.0, shard_size=2)

    def nan(lo, hi):
        return {"mean": mean[lo:hi] * float("nan"), "std": std[lo:hi]}

    with pytest.raises(ValueError, match=r"non-finite latent mean in items 0\.\.5"):
        write_latent_cache(tmp_path / "e", n, nan, scale_factor=1.0)


def test_reads_image_plugin_cache_format(tmp_path):
    """A cache as layersync-image wrote it before this module existed (no ``fields`` entry)."""
    mean, std = _posterior(3, (4, 8, 8))
    cache = tmp_path / "img"
    cache.mkdir()
    tensors = {"mean": mean.half(), "std": std.half(), "labels": torch.tensor([3, 1, 4])}
    save_file(tensors, str(cache / "shard-00000.safetensors"))
    meta = {
        "format": "layersync-latents",
        "version": 1,
        "count": 3,
        "latent_shape": [4, 8, 8],
        "scale_factor": 0.18215,
        "vae": "/x",
        "vae_scaling_factor": 0.18215,
        "image_size": 64,
        "image_channels": 3,
        "num_classes": 10,
        "source": "X",
        "flip": False,
        "dtype": "float16",
        "shards": [{"file": "shard-00000.safetensors", "count": 3}],
    }
    (cache / "meta.json").write_text(json.dumps(meta))
    ds = LatentDataset(cache, seed=1)
    assert ds.field_names == ["labels"]
    z, y = ds[2]
    eps = torch.randn(4, 8, 8, generator=ds.generator(2))
    torch.testing.assert_close(z, (mean[2].half().float() + std[2].half().float() * eps) * 0.18215)
    assert int(y) == 4 and y.dtype == torch.int64
    (cache / "meta.json").write_text(json.dumps({**meta, "version": 2}))
    with pytest.raises(ValueError, match="not a layersync-latents v1 cache"):
        LatentCache(cache)


def test_a_cache_without_fields_yields_latents_alone(tmp_path):
    """No per-item fields (an unconditional source): items are ``(z,)``, not an old image
    cache's labels (an empty ``fields`` entry once read as "no entry")."""
    mean, std = _posterior(4, (64, 12))
    write_latent_cache(tmp_path / "c", 4, _encoder(mean, std, {}), scale_factor=1.0)
    ds = LatentDataset(tmp_path / "c", seed=0)
    assert ds.field_names == []
    (z,) = ds[1]
    eps = torch.randn(64, 12, generator=ds.generator(1))
    torch.testing.assert_close(z, mean[1].half().float() + std[1].half().float() * eps)
