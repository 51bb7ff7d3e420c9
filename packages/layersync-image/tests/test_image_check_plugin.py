"""The image plugin passes core's plugin conformance suite (layersync.testing.check_plugin)."""

from __future__ import annotations

import pytest
import torch

from layersync.metrics import GaussianStats
from layersync.testing import check_plugin
from layersync_image import fid
from layersync_image.plugin import plugin

TINY = [
    "model.depth=4",
    "model.hidden_size=32",
    "model.num_heads=2",
    "train.batch_size=4",
    "sampler.steps=2",
    "sampler.batch_size=4",
    "metric.fid=on",
    "metric.num_samples=4",
    "metric.batch_size=4",
    "metric.reference_count=4",
]


def test_conforms(tmp_path, monkeypatch):
    # the contract, not the metric network, is under test: a small fixed network with
    # Inception's 2048-d output and a cheap distance stand in for Inception and the 2048-d sqrtm
    # (both tested in test_fid*.py)
    def tiny_inception(path=None, device="cpu"):
        torch.manual_seed(5)
        net = torch.nn.Sequential(
            torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(), torch.nn.Linear(48, fid.FID_DIM)
        )
        return net.to(device).eval().requires_grad_(False)

    monkeypatch.setattr(fid, "load_inception", tiny_inception)
    monkeypatch.setattr(
        GaussianStats, "frechet_distance", lambda a, b, eps=1e-6: float(((a.mu - b.mu) ** 2).sum())
    )
    monkeypatch.setenv("LAYERSYNC_CACHE", str(tmp_path / "cache"))
    report = check_plugin(plugin, TINY, tmp_dir=tmp_path)
    assert report.skipped == {"loss_at": "the objective has no loss_at (optional)"} or (
        "loss_at" in report.passed
    )
    assert {"objective", "taps", "gradient", "train_resume", "samples", "evaluate"} <= set(
        report.passed
    )
    with pytest.raises(AssertionError):  # the suite is live: an undeclared metric is caught
        monkeypatch.setattr(type(plugin), "metrics", {})
        check_plugin(plugin, TINY, tmp_dir=tmp_path / "again", skip=["train_resume"])
