"""Convergence A/B: the interpolation and summary formulas, and ``layersync bench convergence``
on the toy-image plugin (outputs, resume of an unfinished arm, reuse of a finished one)."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from layersync.config import read_toml
from layersync.convergence import (
    mean_curve,
    relative_gain,
    steps_to_reach,
    summarize,
)

pytestmark = pytest.mark.filterwarnings("ignore::layersync.loss.LayerSyncHeuristicWarning")


# --------------------------------------------------------------------------------------------
# Formulas
# --------------------------------------------------------------------------------------------


def test_steps_to_reach_interpolates_between_evaluations() -> None:
    curve = [(100, 10.0), (200, 6.0), (300, 4.0)]
    assert steps_to_reach(curve, 8.0) == pytest.approx(150.0)
    assert steps_to_reach(curve, 5.0) == pytest.approx(250.0)
    assert steps_to_reach(curve, 6.0) == pytest.approx(200.0)
    assert steps_to_reach(curve, 12.0) == 100.0  # already there at the first evaluation
    assert steps_to_reach(curve, 3.0) is None
    rising = [(10, 0.2), (20, 0.6)]
    assert steps_to_reach(rising, 0.5, lower_is_better=False) == pytest.approx(17.5)


def test_relative_gain_sign_follows_the_metric_direction() -> None:
    assert relative_gain(10.0, 8.0) == pytest.approx(0.2)  # FID 10 -> 8: 20% better
    assert relative_gain(10.0, 12.0) == pytest.approx(-0.2)
    assert relative_gain(0.5, 0.6, lower_is_better=False) == pytest.approx(0.2)


def test_mean_curve_uses_common_steps() -> None:
    assert mean_curve([[(1, 2.0), (2, 4.0)], [(1, 4.0), (2, 8.0), (3, 1.0)]]) == [
        (1, 3.0),
        (2, 6.0),
    ]


def test_summarize_on_synthetic_curves() -> None:
    curves = {
        "vanilla": {0: [(10, 8.0), (20, 6.0)], 1: [(10, 10.0), (20, 8.0)]},
        "layersync": {0: [(10, 6.0), (20, 4.0)], 1: [(10, 8.0), (20, 6.0)]},
    }
    means, s = summarize(curves)
    assert means["vanilla"] == [(10, 9.0), (20, 7.0)]
    assert means["layersync"] == [(10, 7.0), (20, 5.0)]
    assert s["vanilla_final"] == 7.0 and s["layersync_final"] == 5.0
    assert s["layersync_steps_to_vanilla_final"] == 10.0  # 7.0 at the first evaluation
    assert s["speedup"] == pytest.approx(2.0)
    assert s["relative_final_gain"] == pytest.approx(2.0 / 7.0)
    assert s["per_seed"]["1"]["relative_final_gain"] == pytest.approx(0.25)


# --------------------------------------------------------------------------------------------
# layersync bench convergence on toy-image
# --------------------------------------------------------------------------------------------

ARGS = [
    "bench",
    "convergence",
    "-m",
    "toy-image",
    "--eval-every",
    "2",
    "--seeds",
    "0,1",
    "train.batch_size=8",
    "model.depth=4",
    "sampler.steps=3",
    "ema.decay=0.5",
    "checkpoint.every=2",
    "log.every=1",
    "log.progress=false",
]


def invoke(out: Path, steps: int, *extra: str) -> object:
    from layersync.cli import app

    return CliRunner().invoke(app, [*ARGS, "--steps", str(steps), "--out", str(out), *extra])


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_cli_convergence_outputs_resume_and_reuse(toy_plugins: Path, tmp_path: Path) -> None:
    out = tmp_path / "conv"
    first = invoke(out, 4)
    assert first.exit_code == 0, first.output
    early = {arm: lines(out / f"{arm}-seed0" / "metrics.jsonl") for arm in ("vanilla", "layersync")}

    done = invoke(out, 6)  # extends every arm: resumed from step 4, not retrained
    assert done.exit_code == 0, done.output
    assert "resuming" in done.output and "training" not in done.output
    for arm, old in early.items():
        now = lines(out / f"{arm}-seed0" / "metrics.jsonl")
        assert now[: len(old)] == old  # the first 4 steps' lines, timestamps included
        assert [r["step"] for r in now if r["kind"] == "eval"] == [2, 4, 6]

    result = json.loads((out / "convergence.json").read_text())
    assert result["metric"] == "pattern_mse" and result["lower_is_better"] is True
    assert result["steps"] == 6 and result["seeds"] == [0, 1]
    for arm in ("vanilla", "layersync"):
        for seed in ("0", "1"):
            assert [s for s, _ in result["curves"][arm][seed]] == [2, 4, 6]
    # the csv holds the same numbers; the summary follows from the mean curves
    rows = list(csv.DictReader((out / "convergence.csv").open()))
    assert len(rows) == 2 * (2 + 1) * 3
    ls_mean = [
        (int(r["step"]), float(r["value"]))
        for r in rows
        if r["arm"] == "layersync" and r["seed"] == "mean"
    ]
    assert ls_mean == [tuple(p) for p in result["mean"]["layersync"]]  # repr round-trips
    s = result["summary"]
    van_final = result["mean"]["vanilla"][-1][1]
    assert s["vanilla_final"] == van_final
    assert s["layersync_steps_to_vanilla_final"] == steps_to_reach(
        [tuple(p) for p in result["mean"]["layersync"]], van_final
    )
    assert s["relative_final_gain"] == pytest.approx((van_final - s["layersync_final"]) / van_final)
    if importlib.util.find_spec("matplotlib") is not None:
        assert (out / "convergence.png").stat().st_size > 1000
    else:  # layersync-core without the plots extra: the data is still written, no figure
        assert not (out / "convergence.png").exists() and (out / "convergence.csv").is_file()

    # the arms differ only in LayerSync: same seed, pair term logged in the LayerSync run only
    van_cfg = read_toml(out / "vanilla-seed1" / "config.toml")
    ls_cfg = read_toml(out / "layersync-seed1" / "config.toml")
    assert van_cfg["layersync"]["enabled"] is False and ls_cfg["layersync"]["enabled"] is True
    assert van_cfg["run"]["seed"] == ls_cfg["run"]["seed"] == 1
    train_ls = [r for r in lines(out / "layersync-seed1" / "metrics.jsonl") if r["kind"] == "train"]
    assert all("cos/2<-3" in r for r in train_ls)

    before = {p: p.read_bytes() for p in out.glob("*/metrics.jsonl")}
    again = invoke(out, 6)  # finished arms are reused as they are
    assert again.exit_code == 0, again.output
    assert again.output.count("reused") == 4
    assert {p: p.read_bytes() for p in out.glob("*/metrics.jsonl")} == before


def test_cli_convergence_refuses_a_run_with_another_config(
    toy_plugins: Path, tmp_path: Path
) -> None:
    out = tmp_path / "conv"
    assert invoke(out, 2, "--seeds", "0").exit_code == 0
    other = invoke(out, 2, "--seeds", "0", "model.dim=16")
    assert other.exit_code == 2
    assert "trained with another config" in other.output and "model.dim" in other.output
