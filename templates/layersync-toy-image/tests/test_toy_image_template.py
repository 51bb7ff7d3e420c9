"""The template's own test: the plugin conformance suite on a shrunk demo preset."""

from __future__ import annotations

import sys
from pathlib import Path

try:
    import layersync_toy_image  # noqa: F401  (pip-installed)
except ImportError:  # the source tree, e.g. the monorepo's test run
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from layersync_toy_image.plugin import plugin

from layersync.testing import check_plugin


def test_conforms(tmp_path):
    report = check_plugin(
        plugin,
        ["data.size=16", "model.depth=4", "train.batch_size=4", "sampler.steps=2"],
        tmp_dir=tmp_path,
    )
    assert "train_resume" in report.passed and "evaluate" in report.passed
    assert "loss_at" in report.passed  # val_loss: fixed t and noise give one exact loss
