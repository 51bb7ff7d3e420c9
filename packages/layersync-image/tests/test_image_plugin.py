"""The image plugin through the core: config/presets, model sizing, objective, sampling, writers,
official-weights sampling through the CLI, and a short end-to-end run with FID."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from layersync import config as config_lib
from layersync.train.loop import Trainer
from layersync.valloss import VAL_TIMES, time_key
from layersync_image.fid import InceptionV3Pool3
from layersync_image.plugin import ImageModality, plugin
from layersync_image.sizes import default_pair

VAL_KEYS = {time_key(t) for t in VAL_TIMES}  # val_loss per t, next to the plugin's metrics

SRC = [
    Path(__file__).resolve().parents[2] / p / "src" for p in ("layersync-core", "layersync-image")
]


@pytest.fixture(autouse=True)
def _fid_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAYERSYNC_CACHE", str(tmp_path / "cache"))


def resolve(*overrides: str, preset: str = "demo"):
    return config_lib.resolve(plugin, preset=preset, overrides=list(overrides))


# --------------------------------------------------------------------------------------------
# Config and presets
# --------------------------------------------------------------------------------------------


def test_plugin_contract() -> None:
    from layersync.plugin import missing_members

    assert isinstance(plugin, ImageModality) and missing_members(plugin) == []
    assert "demo" in plugin.presets


@pytest.mark.parametrize(
    ("preset", "arch", "pairs", "weight"),
    [
        ("sit-xl2-imagenet256", "SiT-XL/2", "8<-16", 0.2),
        ("sit-l2-imagenet256", "SiT-L/2", "8<-18", 0.2),
        ("sit-b2-imagenet256", "SiT-B/2", "4<-8", 0.3),
    ],
)
def test_paper_presets(preset: str, arch: str, pairs: str, weight: float) -> None:
    cfg = resolve("data.path=/data/latents", preset=preset)
    assert cfg.model.arch == arch and cfg.model.learn_sigma
    assert (cfg.train.batch_size, cfg.train.lr, cfg.ema.decay) == (256, 1e-4, 0.9999)
    assert (cfg.layersync.pairs, cfg.layersync.weight) == (pairs, weight)
    assert cfg.data.source == "latents" and cfg.data.hflip
    assert default_pair(arch, 0) == (plugin.default_layersync(cfg))


def _fake_fashion_mnist(root: Path, n: int = 4) -> Path:
    """Four 28x28 items in Fashion-MNIST's idx layout (so the test needs no apt package)."""
    import gzip
    import struct

    root.mkdir(parents=True, exist_ok=True)
    images = np.arange(n * 28 * 28, dtype=np.uint8).reshape(n, 28, 28)
    labels = np.arange(n, dtype=np.uint8)
    for prefix in ("train", "t10k"):
        for arr, kind in ((images, "images-idx3"), (labels, "labels-idx1")):
            head = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
            (root / f"{prefix}-{kind}-ubyte.gz").write_bytes(gzip.compress(head + arr.tobytes()))
    return root


def test_fashion_mnist_preset_is_the_measured_setting(tmp_path: Path) -> None:
    cfg = resolve(preset="fashion-mnist")
    assert (cfg.data.source, cfg.data.image_size, cfg.model.patch_size) == ("fashion-mnist", 28, 4)
    assert (cfg.train.steps, cfg.train.batch_size, cfg.log.eval_every) == (2400, 64, 600)
    # the model is sized from the data: stand-in idx files where the apt package is absent
    root = _fake_fashion_mnist(tmp_path / "fashion")
    model = plugin.build_model(resolve(f"data.path={root}", preset="fashion-mnist"))
    assert model.x_embedder.num_patches == 49 and len(model.blocks) == 6
    assert plugin.default_layersync(cfg).pairs == "2<-4"


def test_default_pairs_follow_the_paper_and_the_heuristic() -> None:
    assert (default_pair("SiT-XL/2", 28).pairs, default_pair("SiT-XL/2", 28).weight) == (
        "8<-16",
        0.2,
    )
    assert default_pair("SiT-L/4", 24).pairs == "8<-18"
    assert default_pair("SiT-B/2", 12).weight == 0.3
    # custom depths keep XL's ratio 8/28 <- 16/28
    assert default_pair("custom", 28).pairs == "8<-16"
    assert default_pair("custom", 6).pairs == "2<-4"
    assert default_pair("custom", 2).pairs == "1<-2"  # the only pair a 2-block model has


def test_config_errors_name_key_and_value() -> None:
    with pytest.raises(config_lib.ConfigError, match=r"data\.source.*'pictures'"):
        resolve("data.source=pictures")
    with pytest.raises(config_lib.ConfigError, match=r"sampler\.stpes: unknown key.*'steps'"):
        resolve("sampler.stpes=3")


def test_bad_arch_and_missing_path_are_clear() -> None:
    with pytest.raises(ValueError, match=r"SiT-XXL/2.*use 'custom'"):
        plugin.build_model(resolve("model.arch=SiT-XXL/2"))
    with pytest.raises(ValueError, match=r"data\.path is required"):
        plugin.build_dataset(resolve("data.source=folder"), "train")
    with pytest.raises(ValueError, match="patch_size = 3"):
        plugin.build_model(resolve("model.patch_size=3"))


# --------------------------------------------------------------------------------------------
# Model, objective, sampling
# --------------------------------------------------------------------------------------------


def test_demo_model_is_sized_from_the_data() -> None:
    cfg = resolve()
    model = plugin.build_model(cfg)
    assert (model.in_channels, model.input_size, model.num_classes) == (1, 8, 10)
    assert plugin.block_names(cfg, model) == [f"blocks.{i}" for i in range(6)]
    x, y = plugin.build_dataset(cfg, "train")[0]
    assert x.shape == (1, 8, 8) and x.min() >= -1 and x.max() <= 1 and 0 <= int(y) < 10


def test_objective_calls_the_model_once_and_reports_t() -> None:
    cfg = resolve()
    model = plugin.build_model(cfg)
    calls = []
    model.register_forward_hook(lambda *a: calls.append(1))
    x = torch.randn(5, 1, 8, 8)
    y = torch.arange(5)
    out = plugin.build_objective(cfg)(model, (x, y), torch.Generator().manual_seed(0))
    assert len(calls) == 1
    assert out.loss.shape == (5,) and out.t.shape == (5,) and out.token_mask is None
    assert ((out.t >= 0) & (out.t <= 1)).all()
    # the per-sample loss is the velocity MSE of the linear path (hand-computed)
    g = torch.Generator().manual_seed(0)
    model.eval()  # no label dropout, so the same prediction can be recomputed
    out = plugin.build_objective(cfg)(model, (x, y), g)
    g = torch.Generator().manual_seed(0)
    t = torch.rand(5, generator=g)
    noise = torch.randn(x.shape, generator=g)
    if not torch.allclose(out.t, t):  # the transport draws noise first
        g = torch.Generator().manual_seed(0)
        noise = torch.randn(x.shape, generator=g)
        t = torch.rand(5, generator=g)
    tt = t.view(-1, 1, 1, 1)
    pred = model(tt * x + (1 - tt) * noise, t, y)
    expected = ((pred - (x - noise)) ** 2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(out.t, t)
    torch.testing.assert_close(out.loss, expected, rtol=1e-5, atol=1e-6)


def test_sampling_with_cfg_runs_one_doubled_forward_per_step() -> None:
    cfg = resolve("sampler.cfg_scale=4.0", "sampler.method=euler", "sampler.steps=5")
    model = plugin.build_model(cfg)
    sizes = []
    model.register_forward_hook(lambda m, args, out: sizes.append(args[0].shape[0]))
    x = plugin.sample(model, cfg, 6, torch.arange(6), torch.Generator().manual_seed(1))
    assert x.shape == (6, 1, 8, 8) and x.abs().max() <= 1
    assert sizes == [12] * 5
    # same generator seed -> the same samples (fixed-noise grids are comparable)
    y = plugin.sample(model, cfg, 6, torch.arange(6), torch.Generator().manual_seed(1))
    torch.testing.assert_close(x, y)


def test_write_samples_grid_pngs_and_adm_npz(tmp_path: Path) -> None:
    cfg = resolve()
    samples = torch.rand(12, 1, 8, 8) * 2 - 1
    paths = plugin.write_samples(samples, tmp_path, cfg)
    grid = np.asarray(Image.open(tmp_path / "grid.png"))
    assert grid.shape[0] > 64 and grid.shape[2] == 3  # upscaled for a person to see
    with np.load(tmp_path / "samples.npz") as f:
        arr = f["arr_0"]
    assert arr.shape == (12, 8, 8, 1) and arr.dtype == np.uint8
    expected = np.clip(127.5 * samples.numpy() + 128, 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(arr, expected.transpose(0, 2, 3, 1))
    assert len([p for p in paths if p.parent.name == "images"]) == 12
    preview = plugin.write_samples(samples, tmp_path / "p", cfg, prefix="0000100")
    assert [p.name for p in preview] == ["0000100.png"]


# --------------------------------------------------------------------------------------------
# Official weights through `layersync sample --weights`
# --------------------------------------------------------------------------------------------


def _env(tmp_path: Path) -> dict[str, str]:
    site = tmp_path / "site"
    info = site / "layersync_image-0.1.0.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: layersync-image\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text(
        "[layersync.modalities]\nimage = layersync_image.plugin:plugin\n"
    )
    path = os.pathsep.join([str(site), *map(str, SRC)])
    return {
        **os.environ,
        "PYTHONPATH": path,
        "OMP_NUM_THREADS": "1",
        "LAYERSYNC_CACHE": str(tmp_path / "cache"),
    }


def test_sample_from_an_official_checkpoint_file(tmp_path: Path) -> None:
    from layersync_image.model import SiT

    tiny = SiT(
        input_size=8,
        patch_size=2,
        in_channels=4,
        hidden_size=64,
        depth=3,
        num_heads=4,
        num_classes=10,
        learn_sigma=True,
    )
    state = {k: v for k, v in tiny.state_dict().items()}
    for key in state:  # weights as the official training script saves them: {"ema": ...}
        state[key] = torch.randn_like(state[key]) * 0.05
    state["pos_embed"] = tiny.pos_embed.detach().clone()
    pt = tmp_path / "official.pt"
    torch.save({"model": state, "ema": state}, pt)
    data = tmp_path / "latents.npz"  # 4-channel 8x8 "latents" with 10 classes sizes the model
    np.savez(data, images=np.zeros((10, 4, 8, 8), np.float32), labels=np.arange(10))
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "layersync",
        "sample",
        "--weights",
        str(pt),
        "--modality",
        "image",
        "-n",
        "4",
        "--out",
        str(out),
        "data.source=array",
        f"data.path={data}",
        "model.arch=custom",
        "model.depth=3",
        "model.hidden_size=64",
        "model.num_heads=4",
        "model.patch_size=2",
        "model.learn_sigma=true",
        "sampler.steps=3",
        "sampler.method=euler",
    ]
    res = subprocess.run(cmd, env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    samples = np.load(out / "samples.npy")  # 4-channel latents: written raw, not as images
    assert samples.shape == (4, 4, 8, 8) and np.isfinite(samples).all()
    assert not (out / "parts").exists()
    # a checkpoint of another shape is refused in one line naming the file
    bad = [c.replace("model.depth=3", "model.depth=2") for c in cmd]
    res = subprocess.run(bad, env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert res.returncode == 2
    assert "official.pt" in res.stderr and "unexpected keys" in res.stderr
    assert "Traceback" not in res.stderr


# --------------------------------------------------------------------------------------------
# End to end: a short run on the embedded digits with FID (random-weight Inception: fast)
# --------------------------------------------------------------------------------------------


def test_short_training_run_writes_samples_and_fid(tmp_path: Path) -> None:
    torch.manual_seed(0)
    weights = tmp_path / "inception.pth"
    torch.save(InceptionV3Pool3().state_dict(), weights)
    cfg = resolve(
        f"run.out_dir={tmp_path}",
        "train.steps=4",
        "train.batch_size=16",
        "log.every=2",
        "log.progress=false",
        "log.sample_count=20",
        "checkpoint.every=2",
        "model.depth=4",
        "model.hidden_size=32",
        "sampler.steps=2",
        "metric.num_samples=6",
        "metric.reference_count=8",
        "metric.batch_size=8",
        f"metric.inception_weights={weights}",
        "metric.fid=on",
    )
    run_dir = Trainer.create(cfg, plugin).fit()
    grid = Image.open(run_dir / "samples" / "0000004.png")
    assert grid.size[0] >= 10 * 64  # ten classes per row, upscaled
    metrics = json.loads((run_dir / "eval" / "0000004" / "metrics.json").read_text())
    protocol = json.loads((run_dir / "eval" / "0000004" / "fid.json").read_text())
    assert metrics.keys() == {"fid", "kid", "kid_std", "val_loss", *VAL_KEYS}
    assert protocol["samples"] == 6 and protocol["reference"] == 8
    assert np.isfinite(metrics["fid"]) and metrics["fid"] >= 0
    assert np.isfinite(metrics["kid"]) and metrics["kid_std"] >= 0
    assert protocol["kid"] == metrics["kid"] and protocol["kid_subset_size"] == 6
    # the reference statistics and features were cached once (a second evaluation reuses them)
    cached = list((tmp_path / "cache" / "stats").glob("*.npz"))  # layersync cached_stats
    assert len(cached) == 1
    features = list((tmp_path / "cache" / "stats").glob("*.npy"))  # cached_array, for KID
    assert len(features) == 1 and np.load(features[0]).shape == (8, 2048)

    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train_lines = [x for x in lines if x["kind"] == "train"]
    assert [x["step"] for x in train_lines] == [2, 4]
    pair = plugin.default_layersync(cfg).pairs  # depth 4 -> 1<-3
    assert pair == "1<-3" and all(f"cos/{pair}" in x for x in train_lines)


def test_sample_command_is_parallel_resumable_and_world_size_independent(tmp_path: Path) -> None:
    """`layersync sample` under torchrun (2 gloo ranks) equals a 1-process run, and a rerun after
    an interruption keeps the finished parts."""
    cfg = resolve(
        f"run.out_dir={tmp_path}",
        "train.steps=2",
        "train.batch_size=8",
        "log.progress=false",
        "model.depth=2",
        "model.hidden_size=32",
        "sampler.steps=2",
        "metric.fid=off",
    )
    run_dir = Trainer.create(cfg, plugin).fit()
    env = _env(tmp_path)
    base = [
        sys.executable,
        "-m",
        "layersync",
        "sample",
        str(run_dir),
        "--num-samples",
        "10",
        "--batch-size",
        "3",
    ]
    one = subprocess.run(
        [*base, "--out", str(tmp_path / "one")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert one.returncode == 0, one.stderr
    torchrun = Path(sys.executable).with_name("torchrun")
    two = subprocess.run(
        [
            str(torchrun),
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "layersync",
            *base[3:],
            "--out",
            str(tmp_path / "two"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert two.returncode == 0, two.stderr
    with (
        np.load(tmp_path / "one" / "samples.npz") as a,
        np.load(tmp_path / "two" / "samples.npz") as b,
    ):
        assert a["arr_0"].shape == (10, 8, 8, 1)
        np.testing.assert_array_equal(a["arr_0"], b["arr_0"])
    assert len(list((tmp_path / "two" / "images").glob("*.png"))) == 10
    # resumable: a finished part is not regenerated (mark one with a sentinel file)
    part = tmp_path / "three" / "parts" / "000001"
    part.mkdir(parents=True)
    np.savez(part / "samples.npz", arr_0=np.full((3, 8, 8, 1), 7, np.uint8))
    res = subprocess.run(
        [*base, "--out", str(tmp_path / "three")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    with (
        np.load(tmp_path / "three" / "samples.npz") as c,
        np.load(tmp_path / "one" / "samples.npz") as a,
    ):
        assert (c["arr_0"][3:6] == 7).all()  # the existing part was kept
        np.testing.assert_array_equal(c["arr_0"][:3], a["arr_0"][:3])
        np.testing.assert_array_equal(c["arr_0"][6:], a["arr_0"][6:])


def test_fid_reference_from_stats_file_or_adm_images(tmp_path: Path) -> None:
    from layersync.metrics import GaussianStats
    from layersync_image.refstats import reference_stats

    stats_file = tmp_path / "ref_stats.npz"
    GaussianStats(np.arange(3.0), np.eye(3), 10).save(stats_file)
    cfg = resolve(f"metric.reference={stats_file}")
    got = reference_stats(cfg, None, 8)  # a stats file needs no network
    np.testing.assert_array_equal(got.mu, np.arange(3.0))

    torch.manual_seed(0)
    inception = InceptionV3Pool3(num_classes=None).eval()
    images = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    adm = tmp_path / "ref_batch.npz"
    np.savez(adm, arr_0=images)
    cfg = resolve(f"metric.reference={adm}")
    first = reference_stats(cfg, inception, 8)
    assert first.n == 3 and first.mu.shape == (2048,)
    again = reference_stats(cfg, None, 8)  # cached: no network needed the second time
    np.testing.assert_array_equal(again.mu, first.mu)

    with pytest.raises(ValueError, match=r"metric\.reference"):
        reference_stats(resolve("data.source=latents", "data.path=/nowhere"), None, 8)


# --------------------------------------------------------------------------------------------
# Honest pair provenance (issue 14): the dry run and config show say where a pair comes from
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arch", "depth", "pairs", "weight", "want"),
    [
        ("SiT-XL/2", 28, "8<-16", 0.2, "pair 8<-16 and λ 0.2: the paper's for SiT-XL"),
        ("SiT-L/2", 24, "8<-18", 0.2, "pair 8<-18 and λ 0.2: the paper's for SiT-L"),
        (
            "SiT-B/2",
            12,
            "4<-8",
            0.3,
            "pair 4<-8: derived by the depth-ratio rule, not from the paper; "
            "λ 0.3: the paper's for SiT-B",
        ),
        (
            "SiT-S/2",
            12,
            "4<-8",
            0.3,
            "pair 4<-8: derived by the depth-ratio rule, not from the paper; "
            "λ 0.3: not the paper's for SiT-S",
        ),
        (
            "custom",
            6,
            "2<-4",
            0.2,
            "pair 2<-4: derived by the depth-ratio rule, not from the paper; "
            "λ 0.2: not the paper's for custom SiT (6 blocks)",
        ),
        (
            "SiT-XL/2",
            28,
            "4<-12",
            0.2,
            "pair 4<-12: set in the config, not from the paper; λ 0.2: the paper's for SiT-XL",
        ),
    ],
)
def test_pair_source_says_what_is_the_papers(arch, depth, pairs, weight, want) -> None:
    from layersync_image.sizes import pair_source

    assert pair_source(arch, depth, pairs, weight) == want


def test_dry_run_and_config_show_state_the_pair_source_and_the_shallow_warning() -> None:
    from typer.testing import CliRunner

    from layersync.cli import app
    from layersync.train.plan import plan

    rows = dict(plan(resolve(), plugin))  # the demo: 6 blocks, pair 2<-4
    assert "derived by the depth-ratio rule, not from the paper" in rows["pair source"]
    assert rows["warning"].startswith("6 blocks: the paper reports nothing for models shallower")
    deep = dict(plan(resolve("model.depth=12"), plugin))
    assert "warning" not in deep and "pair 3<-7" in deep["pair source"]
    shown = CliRunner().invoke(app, ["config", "show", "-m", "image", "--preset", "demo"])
    assert shown.exit_code == 0, shown.output
    assert "# pair source: pair 2<-4: derived by the depth-ratio rule" in shown.output
    assert "# warning: 6 blocks: the paper reports nothing" in shown.output
    xl = CliRunner().invoke(
        app, ["config", "show", "-m", "image", "--preset", "sit-xl2-imagenet256"]
    )
    assert "# pair source: pair 8<-16 and λ 0.2: the paper's for SiT-XL" in xl.output
