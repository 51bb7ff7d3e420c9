"""MultiModality in ``evaluate`` (MDM's mm_short, ``metric.multimodality=true``).

``generate``, the evaluator and the caption encoder are replaced by fakes (``generate`` records
what it returns), so the reported value can be recomputed from the same embeddings with
``metrics.multimodality``.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("pybullet_data") is None, reason="needs pybullet (data)"
)

SMALL = [
    "data.max_len=48",
    "metric.num_samples=40",
    "metric.replications=3",
    "metric.diversity_times=10",
    "run.seed=7",
]
MM = ["metric.multimodality=true", "metric.mm_num_samples=5", "metric.mm_num_repeats=4"]
MM_TIMES = 3


@pytest.fixture(scope="module", autouse=True)
def cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LAYERSYNC_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


class FakeEvaluator:
    """Motion embedding: the first frame's first 8 (denormalised) features + 0.01 · length."""

    def motion_embedding(self, motion: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return motion[:, 0, :8] + 0.01 * lengths[:, None]

    def text_embedding(self, text: torch.Tensor) -> torch.Tensor:
        return text[:, :8]


def fake_text_encoder(name: str = "minilm", clip_path: str | None = None):
    """Captions -> 16 numbers from their characters (no MiniLM load)."""
    return lambda captions: torch.tensor(
        [[float(ord(c[i % len(c)])) for i in range(16)] for c in captions]
    )


def evaluate_with_fakes(monkeypatch, tmp_path, overrides):
    from layersync.config import resolve
    from layersync_motion import evaluation, text
    from layersync_motion.plugin import plugin

    calls = []

    def fake_generate(model, cfg, captions, lengths, generator):
        x = torch.randn(len(captions), cfg.data.max_len, 263, generator=generator)
        calls.append((list(captions), lengths.clone(), x))
        return x

    monkeypatch.setattr(evaluation, "generate", fake_generate)
    monkeypatch.setattr(evaluation, "trained_evaluator", lambda cfg, **kw: FakeEvaluator())
    monkeypatch.setattr(text, "text_encoder", fake_text_encoder)
    cfg = resolve(plugin, overrides=overrides)
    out = plugin.evaluate(torch.nn.Linear(1, 1), cfg, tmp_path, torch.Generator().manual_seed(3))
    return cfg, out, calls


def test_reported_multimodality_is_metrics_multimodality_of_the_generations(monkeypatch, tmp_path):
    from layersync_motion.metrics import mean_interval, multimodality
    from layersync_motion.plugin import plugin, stats

    cfg, out, calls = evaluate_with_fakes(
        monkeypatch, tmp_path, [*SMALL, *MM, f"metric.mm_num_times={MM_TIMES}"]
    )
    assert set(out) == set(plugin.metrics_for(cfg)) >= {"multimodality", "fid"}
    mean, std = (torch.from_numpy(a) for a in stats(cfg))

    def embed(x, lengths):
        return ((x * std + mean)[:, 0, :8] + 0.01 * lengths[:, None]).numpy()

    assert len(calls) == 3 * 4  # per replication: the main batch, then 3 more passes
    values = []
    for rep in range(3):
        (caps, lens, x), *more = calls[4 * rep : 4 * rep + 4]
        assert len(caps) == 40 and all(len(c) == 5 for c, _, _ in more)
        for c, n, _ in more:  # the first 5 prompts again, with their lengths
            assert c == caps[:5] and torch.equal(n, lens[:5])
        act = np.stack([embed(x, lens)[:5], *(embed(m, n) for _, n, m in more)], axis=1)
        assert act.shape == (5, 4, 8)
        values.append(multimodality(act, MM_TIMES, seed=7 + rep))
    expected, interval = mean_interval(values)
    assert len(set(values)) == 3 and expected > 0.1 and interval > 0
    assert out["multimodality"] == pytest.approx(expected, rel=1e-6)
    assert out["multimodality_interval"] == pytest.approx(interval, rel=1e-5)


def test_off_by_default_no_extra_generations(monkeypatch, tmp_path):
    from layersync_motion.plugin import plugin

    cfg, out, calls = evaluate_with_fakes(monkeypatch, tmp_path, SMALL)
    assert not cfg.metric.multimodality and len(calls) == 3
    assert "multimodality" not in out and set(out) == set(plugin.metrics_for(cfg))


def test_declared_direction_and_presets():
    """Declared only when on: higher is better (T2M/MDM's "↑"), never primary; the demo turns
    on at 8 x 10 with 5 pairs, the paper preset keeps MDM's 100 x 30 with 10 pairs, both off."""
    from layersync.config import resolve
    from layersync_motion.plugin import plugin

    declared = plugin.metrics_for(resolve(plugin, overrides=["metric.multimodality=true"]))
    assert declared["multimodality"].higher_is_better and not declared["multimodality"].primary
    assert not declared["multimodality_interval"].higher_is_better
    assert [k for k, v in declared.items() if v.primary] == ["fid"]
    demo, paper = resolve(plugin).metric, resolve(plugin, preset="mdm-humanml3d").metric
    assert not demo.multimodality and not paper.multimodality
    sizes = ("mm_num_samples", "mm_num_repeats", "mm_num_times")
    assert [getattr(demo, k) for k in sizes] == [8, 10, 5]
    assert [getattr(paper, k) for k in sizes] == [100, 30, 10]


@pytest.mark.parametrize(
    ("overrides", "culprit"),
    [
        (["metric.mm_num_repeats=10", "metric.mm_num_times=10"], "mm_num_repeats"),
        (["metric.num_samples=40", "metric.mm_num_samples=41"], "mm_num_samples"),
    ],
)
def test_impossible_sizes_fail_at_config_time(overrides, culprit):
    from layersync.config import ConfigError, resolve
    from layersync_motion.plugin import plugin

    with pytest.raises(ConfigError, match=culprit):
        resolve(plugin, overrides=["metric.multimodality=true", *overrides])
    resolve(plugin, overrides=overrides)  # off: not checked
