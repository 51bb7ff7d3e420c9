"""The template's own tests: the conformance suite, and the demo actually learns its motions."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

try:
    import layersync_toy_sequence  # noqa: F401  (pip-installed)
except ImportError:  # the source tree, e.g. the monorepo's test run
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from layersync_toy_sequence.plugin import MAX_LEN, ToyMotions, plugin

from layersync import config
from layersync.testing import check_plugin

SMALL = ["data.size=16", "model.depth=4", "train.batch_size=4", "diffusion.sample_steps=2"]


def test_conforms(tmp_path):
    report = check_plugin(plugin, SMALL, tmp_dir=tmp_path)
    assert set(report.passed) >= {"objective", "loss_at", "taps", "gradient", "train_resume"}


def test_items_are_seeded_per_epoch_and_masked():
    data = ToyMotions(8, jitter=0.3, seed=0)
    first = data[3]["x"]
    assert torch.equal(data[3]["x"], first)  # same (seed, epoch, index): same draw
    data.set_epoch(1)
    assert not torch.equal(data[3]["x"], first)
    length = int(data[3]["mask"].sum())
    assert 6 <= length <= MAX_LEN and data[3]["x"][length:].abs().sum() == 0


def test_demo_learns(tmp_path):
    """300 steps of the demo preset bring samples close to their class motion."""
    from layersync.train.loop import EVAL_SEED_OFFSET, train

    cfg = config.resolve(
        plugin,
        overrides=[
            f"run.out_dir={tmp_path}",
            "run.name=demo",
            "log.progress=false",
            "train.device=cpu",
            "train.steps=150",
            "train.lr=3e-3",
        ],
    )
    untrained = plugin.evaluate(
        plugin.build_model(cfg), cfg, None, torch.Generator().manual_seed(EVAL_SEED_OFFSET)
    )["motion_mse"]
    run = train(cfg, plugin)
    import json

    trained = json.loads((run / "eval" / "0000150" / "metrics.json").read_text())["motion_mse"]
    print(f"motion_mse: untrained {untrained:.3f}, after 150 steps {trained:.3f}")
    assert trained < 0.5 * untrained
    assert trained == pytest.approx(trained)  # a number
