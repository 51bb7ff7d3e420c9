"""val_loss: fixed held-out set, t grid and noise (common random numbers) for every arm and step;
and the block diagnostics (rms/, rel/) logged next to cos/ with the shortcut warning."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from layersync import config as config_lib
from layersync.registry import load
from layersync.train import train
from layersync.valloss import VAL_SEED, VAL_TIMES, held_out_batches, time_key, val_loss

pytestmark = pytest.mark.filterwarnings("ignore::layersync.loss.LayerSyncHeuristicWarning")

SMALL = [
    "train.steps=4",
    "train.batch_size=8",
    "model.depth=4",
    "checkpoint.every=100",
    "log.every=2",
    "log.progress=false",
]
FAST = {"toy-image": ["sampler.steps=2"], "toy-sequence": []}


def resolve(modality: str, out: Path, *overrides: str) -> tuple[Any, Any]:
    plugin = load(modality)
    cfg = config_lib.resolve(
        plugin, overrides=[*SMALL, *FAST[modality], f"run.out_dir={out}", *overrides]
    )
    return plugin, cfg


class Recording:
    """Wraps an objective; keeps every (t, noise) that loss_at received."""

    def __init__(self, objective: Any) -> None:
        self.objective, self.seen = objective, []

    def noise_like(self, batch, generator):
        return self.objective.noise_like(batch, generator)

    def loss_at(self, model, batch, t, noise):
        self.seen.append((t.clone(), noise.clone()))
        return self.objective.loss_at(model, batch, t, noise)


def test_same_checkpoint_twice_is_identical_and_arms_see_identical_noise(
    toy_plugins: Path, tmp_path: Path
) -> None:
    plugin, cfg = resolve("toy-image", tmp_path)
    objective = plugin.build_objective(cfg)
    batches = held_out_batches(plugin, cfg, count=20, batch_size=8)
    assert [len(b["x"]) for b in batches] == [8, 8, 4]
    torch.manual_seed(0)
    arm_a = plugin.build_model(cfg)
    torch.manual_seed(1)
    arm_b = plugin.build_model(cfg)
    arm_a.train()
    rec_a, rec_b = Recording(objective), Recording(objective)
    first = val_loss(arm_a, rec_a, batches)
    again = val_loss(arm_a, objective, batches)
    assert first == again  # bit-identical: no hidden random draw, dropout off
    assert arm_a.training  # the mode is restored
    other = val_loss(arm_b, rec_b, batches)
    assert other["val_loss"] != first["val_loss"]  # different weights, different loss...
    assert len(rec_a.seen) == len(rec_b.seen) == 3 * len(VAL_TIMES)
    for (ta, na), (tb, nb) in zip(rec_a.seen, rec_b.seen, strict=True):
        assert torch.equal(ta, tb) and torch.equal(na, nb)  # ...on identical inputs
    assert sorted({round(float(t[0]), 4) for t, _ in rec_a.seen}) == list(VAL_TIMES)
    assert set(first) == {"val_loss", *map(time_key, VAL_TIMES)}
    per_t = [first[time_key(t)] for t in VAL_TIMES]
    assert first["val_loss"] == pytest.approx(sum(per_t) / len(per_t))


def test_toy_image_val_loss_is_the_rectified_flow_formula(toy_plugins: Path, tmp_path: Path):
    """Per-t value = mean over items of ||v(t x + (1-t) n, t, y) - (x - n)||^2 / dim, with the
    noise drawn from VAL_SEED in (batch, time) order."""
    plugin, cfg = resolve("toy-image", tmp_path)
    model = plugin.build_model(cfg).eval()
    batches = held_out_batches(plugin, cfg, count=12, batch_size=5)
    got = val_loss(model, plugin.build_objective(cfg), batches, times=(0.2, 0.7))
    gen = torch.Generator().manual_seed(VAL_SEED)
    sums = {0.2: 0.0, 0.7: 0.0}
    with torch.no_grad():
        for batch in batches:
            x, y = batch["x"], batch["y"]
            for t in (0.2, 0.7):
                n = torch.randn(x.shape, generator=gen)
                pred = model(t * x + (1 - t) * n, torch.full((len(x),), t), y)
                sums[t] += float(((pred - (x - n)) ** 2).mean(dim=(1, 2, 3)).sum())
    assert got[time_key(0.2)] == pytest.approx(sums[0.2] / 12, rel=1e-6)
    assert got[time_key(0.7)] == pytest.approx(sums[0.7] / 12, rel=1e-6)


def _records(run: Path, kind: str) -> list[dict[str, Any]]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def test_val_loss_and_diagnostics_in_metrics_jsonl_for_both_arms(
    toy_plugins: Path, tmp_path: Path
) -> None:
    runs = {}
    for arm, enabled in (("vanilla", "false"), ("layersync", "true")):
        plugin, cfg = resolve(
            "toy-image",
            tmp_path,
            f"run.name={arm}",
            "log.eval_every=2",
            f"layersync.enabled={enabled}",
            "layersync.pairs=2<-3",
        )
        runs[arm] = train(cfg, plugin)
    for arm, run in runs.items():
        evals = _records(run, "eval")
        assert [r["step"] for r in evals] == [2, 4]
        assert all("val_loss" in r and time_key(0.05) in r for r in evals), arm
    # the same seed: both arms' first val_loss differ only through the weights, and the
    # diagnostics (block RMS of the tapped blocks, relative update of the pair) are logged
    train_ls = _records(runs["layersync"], "train")
    assert all({"rms/2", "rms/3", "rel/2<-3", "cos/2<-3"} <= set(r) for r in train_ls)
    assert all(r["rms/2"] > 0 and r["rel/2<-3"] > 0 for r in train_ls)


# --------------------------------------------------------------------------------------------
# Block diagnostics and the shortcut warning
# --------------------------------------------------------------------------------------------


class Scaled(torch.nn.Module):
    """Block ``h -> a * h + b``: a stand-in whose output norm and update we set by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = 1.0, 0.0

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.a * h + self.b


class Stack(torch.nn.Module):
    def __init__(self, depth: int = 3) -> None:
        super().__init__()
        self.blocks = torch.nn.ModuleList(Scaled() for _ in range(depth))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            h = block(h)
        return h


def _logged(sync, model, x) -> dict[str, float]:
    with sync:
        model(x)
    sync.loss()
    return {k: float(v) for k, v in sync.stats.items()}


def test_diagnostics_match_their_formulas() -> None:
    from layersync.loss import LayerSync

    model = Stack()
    model.blocks[1].a, model.blocks[2].b = 2.0, 0.5  # block 2 doubles, block 3 adds 0.5
    x = torch.randn(3, 5, 4, generator=torch.Generator().manual_seed(0))
    logged = _logged(LayerSync(model, pairs="2<-3", weight=0.2, warn=False), model, x)
    h2 = 2 * x
    assert logged["rms/2"] == pytest.approx(float(h2.pow(2).mean().sqrt()), rel=1e-6)
    assert logged["rms/3"] == pytest.approx(float((h2 + 0.5).pow(2).mean().sqrt()), rel=1e-6)
    want = (0.5**2 * 4 * 15 / h2.pow(2).sum()).sqrt()  # ||0.5|| / ||h2|| over all tokens
    assert logged["rel/2<-3"] == pytest.approx(float(want), rel=1e-6)


def test_shortcut_warning_fires_on_norm_growth_at_cos_one_only() -> None:
    from layersync.loss import LayerSync

    x = torch.randn(3, 5, 4, generator=torch.Generator().manual_seed(1))
    model = Stack()
    sync = LayerSync(model, pairs="2<-3", weight=0.2, warn=False)
    first = _logged(sync, model, x)  # step 0: the baseline, identity blocks, cos = 1
    assert first["cos/2<-3"] == pytest.approx(1.0) and sync.shortcut_warnings(first) == []
    model.blocks[1].a = 1.5  # cos still 1, student norm 1.5x: not yet
    assert sync.shortcut_warnings(_logged(sync, model, x)) == []
    model.blocks[1].a = 3.0  # cos 1, student norm 3x: the shortcut
    lines = sync.shortcut_warnings(_logged(sync, model, x))
    assert len(lines) == 1 and "pair 2<-3" in lines[0] and "grew 3.0x" in lines[0]
    assert sync.shortcut_warnings(_logged(sync, model, x)) == []  # once per run

    other = Stack()  # norm grows 3x but the teacher block changes the stream: cos < 0.99
    sync = LayerSync(other, pairs="2<-3", weight=0.2, warn=False)
    _logged(sync, other, x)
    other.blocks[1].a, other.blocks[2].b = 3.0, 5.0
    logged = _logged(sync, other, x)
    assert logged["cos/2<-3"] < 0.99 and sync.shortcut_warnings(logged) == []

    vanilla = Stack()  # the same shortcut with λ = 0 (a measured vanilla arm): no warning
    sync = LayerSync(vanilla, pairs="2<-3", weight=0.0, warn=False)
    _logged(sync, vanilla, x)
    vanilla.blocks[1].a = 3.0
    logged = _logged(sync, vanilla, x)
    assert logged["cos/2<-3"] > 0.99 and sync.shortcut_warnings(logged) == []


def test_probe_reads_and_plots_the_logged_diagnostics(tmp_path: Path) -> None:
    from layersync.probe import diagnostics_curves

    rows = [
        {"step": 50, "kind": "train", "rms/2": 1.0, "rms/4": 1.5, "rel/2<-4": 0.8, "cos/2<-4": 0.7},
        {"step": 50, "kind": "eval", "val_loss": 0.5},
        {
            "step": 100,
            "kind": "train",
            "rms/2": 2.5,
            "rms/4": 2.6,
            "rel/2<-4": 0.1,
            "cos/2<-4": 0.99,
        },
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    curves = diagnostics_curves(tmp_path)
    assert curves["rms"] == {"2": [(50, 1.0), (100, 2.5)], "4": [(50, 1.5), (100, 2.6)]}
    assert curves["rel"] == {"2<-4": [(50, 0.8), (100, 0.1)]}
    assert curves["cos"]["2<-4"][-1] == (100, 0.99)
    assert diagnostics_curves(tmp_path / "none") == {"rms": {}, "rel": {}, "cos": {}}
    pytest.importorskip("matplotlib")
    from layersync.plots import plot_diagnostics

    png = plot_diagnostics({"run": curves}, tmp_path / "diagnostics.png")
    assert png.stat().st_size > 5000


def test_progress_bar_status_shows_the_diagnostics() -> None:
    from layersync.train.logging import _status_line

    line = _status_line(
        {"diffusion": 0.5, "layersync": -0.19, "cos/2<-4": 0.95, "rel/2<-4": 0.125, "rms/2": 1.5}
    )
    assert line == "diffusion 0.5000  reg -0.1900  cos[2<-4] 0.950  rel[2<-4] 0.125  rms[2] 1.50"
