"""The plugin template, really pip-installed, trains through the CLI and learns its patterns."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
TEMPLATE = REPO / "templates" / "layersync-toy-image"
CORE_SRC = REPO / "packages" / "layersync-core" / "src"

# Evaluates the run's EMA weights and the untrained model (the engine's init: seeded with
# run.seed right before build_model) with the engine's evaluation generator.
MEASURE = """
import json, sys
import torch
from layersync import config
from layersync.registry import installed, load
from layersync.train.checkpoint import load_weights, resolve_checkpoint
from layersync.train.loop import EVAL_SEED_OFFSET, seed_everything

run = sys.argv[1]
plugin = load("toy-image")
cfg = config.resolve(plugin, file=f"{run}/config.toml")

def metric(model):
    gen = torch.Generator().manual_seed(cfg.run.seed + EVAL_SEED_OFFSET)
    return plugin.evaluate(model.eval(), cfg, None, gen)["pattern_mse"]

seed_everything(cfg.run.seed)
untrained = metric(plugin.build_model(cfg))
model = plugin.build_model(cfg)
model.load_state_dict(load_weights(resolve_checkpoint(run), "ema"))
info = installed()["toy-image"]
print(json.dumps({"untrained": untrained, "trained": metric(model),
                  "distribution": info.distribution, "module": type(plugin).__module__,
                  "file": sys.modules[type(plugin).__module__].__file__}))
"""


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``pip install --no-deps --no-build-isolation --target <tmp> templates/layersync-toy-image``."""
    site = tmp_path_factory.mktemp("template-site")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--disable-pip-version-check",
            "--target",
            str(site),
            str(TEMPLATE),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return site


def test_pip_install_layout(target: Path) -> None:
    assert (target / "layersync_toy_image" / "plugin.py").is_file()
    (info,) = target.glob("layersync_toy_image-0.1.0.dist-info")
    entry_points = (info / "entry_points.txt").read_text()
    assert "[layersync.modalities]" in entry_points
    assert "toy-image = layersync_toy_image.plugin:plugin" in entry_points


def test_installed_template_trains_and_learns(target: Path, tmp_path: Path) -> None:
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(target), str(CORE_SRC)]),
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
    )
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(var, None)
    steps = 150
    # the demo preset (batch 32, lr 1e-3) with a higher lr, and EMA warmup: with the default
    # EMA decay of 0.9999 the EMA weights of a 150-step run are still the initial weights
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "layersync",
            "train",
            "--modality",
            "toy-image",
            f"train.steps={steps}",
            "train.lr=3e-3",
            "ema.warmup=true",
            "log.progress=false",
            f"run.out_dir={tmp_path}",
            "run.name=t",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    run = tmp_path / "t"
    assert (run / "checkpoints" / "last").read_text() == f"{steps:07d}"
    logged = json.loads((run / "eval" / f"{steps:07d}" / "metrics.json").read_text())

    measured = subprocess.run(
        [sys.executable, "-c", MEASURE, str(run)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert measured.returncode == 0, measured.stderr
    result = json.loads(measured.stdout.splitlines()[-1])
    # the plugin really came from the pip-installed copy
    assert result["distribution"] == "layersync-toy-image"
    assert Path(result["file"]).is_relative_to(target)
    assert result["trained"] == pytest.approx(logged["pattern_mse"], rel=1e-5)
    print(
        f"pattern_mse after {steps} steps: {result['trained']:.4f} "
        f"(untrained {result['untrained']:.4f})"
    )
    assert result["untrained"] > 1.0  # noise-like samples, far from every pattern
    assert result["trained"] < 0.5 * result["untrained"]
