"""Frame-wise VAE latents end to end on a tiny random AutoencoderKL: `layersync video encode`
(npz and mp4 sources) -> the cache equals a direct ``vae.encode`` of the same frames -> training
on ``data.source=latents`` through the CLI -> `layersync sample` decodes frame by frame into
GIF / frames / samples.npz; FVD compares with the source videos. Bad VAE folders fail at start.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from layersync import config as config_lib
from layersync.assets import AssetError
from layersync.cli import app as core_app
from layersync.latents import LatentCache
from layersync.media import save_mp4
from layersync.testing import save_tiny_autoencoder_kl
from layersync_video.commands import app as video_app
from layersync_video.data import crop_resize
from layersync_video.latents import LatentVideoDataset
from layersync_video.plugin import input_shape, plugin

diffusers = pytest.importorskip("diffusers")

N, T, H, W = 4, 34, 20, 24  # videos of the npz fixture; encoded at --size 16 --stride 2
LABELS = [0, 1, 2, 0]
SMALL = (
    "model.depth=2",
    "layersync.pairs=1<-2",  # the demo preset's 2<-3 needs 3 blocks
    "model.hidden_size=32",
    "model.num_heads=2",
    "model.patch_size=[2,2,2]",
    "sampler.steps=2",
)


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAYERSYNC_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The core's tiny random AutoencoderKL: 4 latent channels, 2x downsampling."""
    return save_tiny_autoencoder_kl(tmp_path_factory.mktemp("vae"))


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """(N, T, H, W, 3) uint8 with labels: smooth moving gradients plus a little noise."""
    rng = np.random.default_rng(0)
    t, _, x = np.meshgrid(np.arange(T), np.arange(H), np.arange(W), indexing="ij")
    clips = [
        np.stack([(x * 9 + t * (3 + i) + 40 * c) % 256 for c in range(3)], -1) for i in range(N)
    ]
    array = (np.stack(clips) + rng.integers(0, 20, (N, T, H, W, 3))).clip(0, 255)
    path = tmp_path_factory.mktemp("src") / "clips.npz"
    np.savez(path, videos=array.astype(np.uint8), labels=np.array(LABELS))
    return path


def encode_args(source: Path, vae: Path, out: Path, *extra: str) -> list[str]:
    common = ["--size", "16", "--stride", "2", "--num-workers", "0", "--batch-size", "5"]
    return ["encode", str(source), "--vae", str(vae), "--out", str(out), *common, *extra]


@pytest.fixture(scope="module")
def cache(videos: Path, vae_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The npz encoded through the CLI (float32 moments, flipped views too)."""
    out = tmp_path_factory.mktemp("lat") / "latents"
    result = CliRunner().invoke(
        video_app, encode_args(videos, vae_dir, out, "--flip", "--dtype", "float32")
    )
    assert result.exit_code == 0, result.output
    return out


def run_cli(app, *args: str | Path):
    result = CliRunner().invoke(app, [str(a) for a in args])
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    return result, errors


# -----------------------------------------------------------------------------
# Encoding


def test_encode_cli_equals_a_direct_vae_encode(cache: Path, videos: Path, vae_dir: Path):
    meta = json.loads((cache / "meta.json").read_text())
    # one item per video: (34 - 1) // 2 + 1 = 17 frames at stride 2 (the default window)
    assert meta["latent_shape"] == [4, 17, 8, 8] and meta["count"] == N and meta["flip"]
    assert meta["source"]["kind"] == "array" and meta["source"]["frames"] == 17
    vae = diffusers.AutoencoderKL.from_pretrained(vae_dir).eval()
    assert meta["scale_factor"] == pytest.approx(vae.config.scaling_factor)
    store = LatentCache(cache)
    assert store.field("labels").tolist() == LABELS
    assert store.field("video") == [f"clips.npz[{i}]" for i in range(N)]
    with np.load(videos) as f:
        array = f["videos"]
    for i in (0, 3):
        frames = crop_resize(array[i, 0:33:2], 16).transpose(0, 1)  # (17, 3, 16, 16)
        with torch.no_grad():
            direct = vae.encode(frames).latent_dist
            flipped = vae.encode(frames.flip(-1)).latent_dist
        mean, std = store.moments(i)
        torch.testing.assert_close(mean, direct.mean.transpose(0, 1), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(std, direct.std.transpose(0, 1), atol=1e-5, rtol=1e-4)
        mean_f, _ = store.moments(i, flipped=True)
        torch.testing.assert_close(mean_f, flipped.mean.transpose(0, 1), atol=1e-5, rtol=1e-4)

    again, errors = run_cli(video_app, *encode_args(videos, vae_dir, cache, "--flip"))
    assert again.exit_code == 0 and not errors and "kept: already encoded" in again.stdout


def test_encode_mp4_folder_splits_window_and_skip(vae_dir: Path, tmp_path: Path):
    """train/ and val/ folders give OUT/train and OUT/eval; the default window is the shortest
    video's; with --frames a shorter video is skipped (and counted) under --on-error skip."""
    rng = np.random.default_rng(1)
    for name, n in (("train/a.mp4", 14), ("train/b.mp4", 10), ("val/c.mp4", 12)):
        save_mp4(tmp_path / "clips" / name, rng.integers(0, 256, (n, 18, 24, 3), np.uint8), 8)
    out = tmp_path / "lat"
    result, errors = run_cli(video_app, *encode_args(tmp_path / "clips", vae_dir, out))
    assert result.exit_code == 0 and not errors, result.output
    train, val = LatentCache(out / "train"), LatentCache(out / "eval")
    assert train.latent_shape == (4, 5, 8, 8) and len(train) == 2  # min(7, 5) frames
    assert val.latent_shape == (4, 6, 8, 8) and val.field("video") == ["c.mp4"]
    assert "labels" not in train.fields and train.meta["num_classes"] == 1

    args = encode_args(tmp_path / "clips", vae_dir, tmp_path / "l6", "--frames", "6")
    failed, errors = run_cli(video_app, *args)
    assert failed.exit_code == 2 and len(errors) == 1 and "b.mp4: 10 frames" in errors[0]
    assert not (tmp_path / "l6").exists()
    done, errors = run_cli(video_app, *args, "--on-error", "skip")
    assert done.exit_code == 0 and "1 videos skipped" in done.stdout, done.output
    assert LatentCache(tmp_path / "l6" / "train").field("video") == ["a.mp4"]


def test_latent_windows_follow_the_item_generator(cache: Path):
    """A window of data.frames latent frames at a start drawn per (seed, epoch, index)."""
    mean, _ = LatentCache(cache).moments(2)
    ds = LatentVideoDataset(cache, 16, sample=False, seed=3)
    assert (ds.channels, ds.window, ds.latent_size, ds.num_classes) == (4, 17, 8, 3)
    starts = set()
    for epoch in range(6):
        ds.set_epoch(epoch)
        z, label = ds[2]
        assert z.shape == (4, 16, 8, 8) and label.item() == LABELS[2]
        start = next(s for s in (0, 1) if torch.allclose(z, mean[:, s : s + 16] * ds.scale_factor))
        starts.add(start)
        torch.testing.assert_close(ds[2][0], z)  # same draw again: exact resume
    assert starts == {0, 1}
    noisy = LatentVideoDataset(cache, 16, seed=3)
    assert not torch.allclose(noisy[2][0], ds[2][0])  # a posterior sample, not the mean
    with pytest.raises(ValueError, match=r"data.frames = 18: the cache .* holds 17 latent frames"):
        LatentVideoDataset(cache, 18)


# -----------------------------------------------------------------------------
# Training, sampling, FVD


def test_train_on_latents_then_sample_decodes_frames(cache: Path, vae_dir: Path, tmp_path: Path):
    from test_video_plugin import tiny_detector

    detector = tiny_detector(tmp_path / "i3d.pt")
    overrides = [
        *SMALL,
        "data.source=latents",
        f"data.path={cache}",
        "data.frames=16",
        "data.size=16",
        "data.stride=2",
        "data.hflip=true",
        f"vae.path={vae_dir}",
        f"run.out_dir={tmp_path}",
        "run.name=lat",
        "train.steps=10",
        "train.batch_size=4",
        "log.every=5",
        "log.progress=false",
        "log.sample_count=3",
        "checkpoint.every=10",
        "metric.fvd=on",
        f"metric.i3d={detector}",
        "metric.num_samples=4",
    ]
    result, errors = run_cli(core_app, "train", "-m", "video", *overrides)
    assert result.exit_code == 0 and not errors, result.output
    run = tmp_path / "lat"
    assert Image.open(run / "samples" / "0000010.gif").n_frames == 16
    metrics = json.loads((run / "eval" / "0000010" / "metrics.json").read_text())
    assert np.isfinite(metrics["fvd4_16f"]) and np.isfinite(metrics["val_loss"])
    fvd = json.loads((run / "eval" / "0000010" / "fvd.json").read_text())
    assert fvd["encoded_from"]["kind"] == "array" and fvd["reference"] == 4

    out = tmp_path / "export"
    result, errors = run_cli(core_app, "sample", run, "-n", "3", "--out", out)
    assert result.exit_code == 0 and not errors, result.output
    with np.load(out / "samples.npz") as f:
        clips = f["arr_0"]
    # (N, T, H, W, C): H = latent h 8 x the VAE's 2x downsampling; RGB from the decoder
    assert clips.shape == (3, 16, 16, 16, 3) and clips.dtype == np.uint8
    assert Image.open(out / "grid.gif").n_frames == 16
    png = np.asarray(Image.open(out / "frames" / "000002" / "015.png"))
    assert np.array_equal(png, clips[2, 15])


def test_missing_or_wrong_vae_fails_before_the_run_dir(cache: Path, tmp_path: Path):
    (tmp_path / "novae").mkdir()
    (tmp_path / "novae" / "notes.txt").write_text("not a VAE")
    base = [*SMALL, "data.source=latents", f"data.path={cache}", "data.frames=16"]
    base += ["data.size=16", "data.stride=2", f"run.out_dir={tmp_path}", "run.name=bad"]
    for vae, named in (
        (tmp_path / "gone", f"vae.path: no such folder: {tmp_path / 'gone'}"),
        (tmp_path / "novae", f"vae.path: {tmp_path / 'novae'}: not a diffusers AutoencoderKL"),
    ):
        result, errors = run_cli(core_app, "train", "-m", "video", *base, f"vae.path={vae}")
        assert result.exit_code == 2 and len(errors) == 1, result.output
        assert named in errors[0]
        assert not (tmp_path / "bad").exists()
    result, errors = run_cli(core_app, "train", "-m", "video", *base)
    assert result.exit_code == 2 and errors == [
        "error: data.source = 'latents' needs vae.path (the VAE that encoded the cache)"
    ]
    assert not (tmp_path / "bad").exists()

    out = tmp_path / "never"
    result, errors = run_cli(video_app, "encode", cache, "--vae", tmp_path / "gone", "--out", out)
    assert result.exit_code == 2 and len(errors) == 1 and str(tmp_path / "gone") in errors[0]
    assert "--vae" in errors[0] and not out.exists()


def test_latent_config_must_match_the_cache(cache: Path, vae_dir: Path):
    """data.size / data.stride describe the cache's pixels: another value is named."""
    base = [*SMALL, "data.source=latents", f"data.path={cache}", f"vae.path={vae_dir}"]
    cfg = config_lib.resolve(plugin, overrides=base)  # the demo's stride 1
    with pytest.raises(ValueError, match=r"data.stride = 1: .* encoded at --stride 2"):
        plugin.build_dataset(cfg, "train")
    cfg = config_lib.resolve(plugin, overrides=[*base, "data.stride=2", "data.size=32"])
    with pytest.raises(ValueError, match=r"data.size = 32: .* encoded at --size 16"):
        plugin.build_dataset(cfg, "eval")


def test_clevrer_preset_is_the_latent_proposal(tmp_path: Path):
    """128x128, 16 frames at stride 2, SD-VAE latents 4x16x16, tubelets 2x2x2: 512 tokens."""
    from layersync.latents import write_latent_cache

    cache = tmp_path / "clevrer-latents"
    for split in ("train", "eval"):
        write_latent_cache(
            cache / split,
            1,
            lambda lo, hi: {
                "mean": torch.zeros(1, 4, 64, 16, 16),
                "std": torch.ones(1, 4, 64, 16, 16),
                "video": ["video_00000.mp4"],  # as `video encode` writes (a cache with no
            },  # field at all would read as a legacy image cache with `labels`)
            scale_factor=0.18215,
            info={"source": {"kind": "clevrer", "root": str(tmp_path), "size": 128, "stride": 2}},
        )
    cfg = config_lib.resolve(plugin, preset="sit-xl-clevrer", overrides=[f"data.path={cache}"])
    assert cfg.data.source == "latents" and cfg.model.size == "XL"
    shape, patch = input_shape(cfg), cfg.model.patch_size
    assert shape == (16, 16, 16) and patch == (2, 2, 2)
    assert np.prod([s // p for s, p in zip(shape, patch, strict=True)]) == 512
    assert (cfg.train.batch_size, cfg.train.lr, cfg.ema.decay) == (256, 1e-4, 0.9999)
    assert (cfg.layersync.pairs, cfg.layersync.weight) == ("8<-16", 0.2)
    assert (cfg.sampler.method, cfg.sampler.steps, cfg.metric.num_samples) == ("heun", 250, 2048)
    assert plugin.build_dataset(cfg, "eval")[0][0].shape == (4, 16, 16, 16)
    with pytest.raises(AssetError, match=r"needs vae\.path"):
        plugin.check_assets(cfg)


def test_decode_is_frame_by_frame_with_the_cache_scale(cache: Path, vae_dir: Path):
    from layersync_video.latent_run import decode_latents

    overrides = [f"data.path={cache}", f"vae.path={vae_dir}", "vae.batch_size=5"]
    cfg = config_lib.resolve(plugin, overrides=["data.source=latents", *overrides])
    z = torch.randn(2, 4, 7, 8, 8, generator=torch.Generator().manual_seed(0))
    clips = decode_latents(z, cfg)
    assert clips.shape == (2, 3, 7, 16, 16) and clips.abs().max() <= 1
    vae = diffusers.AutoencoderKL.from_pretrained(vae_dir).eval()
    scale = LatentCache(cache).scale_factor
    with torch.no_grad():
        frame = vae.decode(z[1, :, 4][None] / scale).sample[0].clamp(-1, 1)
    torch.testing.assert_close(clips[1, :, 4], frame, atol=1e-5, rtol=1e-4)
