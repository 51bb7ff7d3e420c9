"""Convergence A/B: the interpolation and summary formulas, and ``layersync bench convergence``
on the toy-image plugin (outputs, resume of an unfinished arm, reuse of a finished one)."""

from __future__ import annotations

import csv
import importlib.util
import json
from collections.abc import Callable
from pathlib import Path

import pytest

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


def invoke(cli: Callable, out: Path, steps: int, *extra: str) -> object:
    return cli(*ARGS, "--steps", str(steps), "--out", str(out), *extra)


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_cli_convergence_outputs_resume_and_reuse(layersync_cli: Callable, tmp_path: Path) -> None:
    out = tmp_path / "conv"
    first = invoke(layersync_cli, out, 4)
    assert first.exit_code == 0, first.output
    early = {arm: lines(out / f"{arm}-seed0" / "metrics.jsonl") for arm in ("vanilla", "layersync")}

    done = invoke(layersync_cli, out, 6)  # extends every arm: resumed from step 4, not retrained
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
    # the sample-based metric's noise: each arm's final checkpoint redrawn with a second seed
    noise = result["sampling_noise"]
    assert noise["metric"] == "pattern_mse" and noise["vanilla"]["step"] == 6
    for arm in ("vanilla", "layersync"):
        assert noise[arm]["first"] == result["curves"][arm]["0"][-1][1]
        assert noise[arm]["abs_diff"] == abs(noise[arm]["first"] - noise[arm]["second"])
    assert "sampling noise of pattern_mse" in done.output
    assert "final gain (paired per seed)" in done.output and "n=2" in done.output
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

    # the arms differ only in λ (vanilla: 0, measured by the taps); same seed; both arms log
    # the pair's cosine and the block diagnostics, the term is non-zero in the LayerSync arm only
    van_cfg = read_toml(out / "vanilla-seed1" / "config.toml")
    ls_cfg = read_toml(out / "layersync-seed1" / "config.toml")
    assert van_cfg["layersync"]["weight"] == 0 and ls_cfg["layersync"].get("weight") != 0
    assert van_cfg["run"]["seed"] == ls_cfg["run"]["seed"] == 1
    for arm in ("vanilla", "layersync"):
        train = [r for r in lines(out / f"{arm}-seed1" / "metrics.jsonl") if r["kind"] == "train"]
        assert all({"cos/2<-3", "rms/2", "rms/3", "rel/2<-3"} <= set(r) for r in train)
        assert all((r["layersync"] == 0) == (arm == "vanilla") for r in train)

    before = {p: p.read_bytes() for p in out.glob("*/metrics.jsonl")}
    again = invoke(layersync_cli, out, 6)  # finished arms are reused as they are
    assert again.exit_code == 0, again.output
    assert again.output.count("reused") == 4
    assert {p: p.read_bytes() for p in out.glob("*/metrics.jsonl")} == before

    # a final evaluation with overrides, two sampling seeds per final checkpoint; with the
    # training config's own value, draw 1 reproduces training's last evaluation exactly
    final = invoke(layersync_cli, out, 6, "--final-eval", "sampler.steps=3")
    assert final.exit_code == 0, final.output
    f = json.loads((out / "convergence.json").read_text())["final_eval"]["metrics"]["pattern_mse"]
    for arm in ("vanilla", "layersync"):
        for seed in ("0", "1"):
            assert f["values"][arm][seed][0] == result["curves"][arm][seed][-1][1]
    v, ls = f["values"]["vanilla"], f["values"]["layersync"]
    gains = [v[s][0] - ls[s][0] for s in ("0", "1")]
    assert f["gain"]["mean"] == pytest.approx(sum(gains) / 2) and f["gain"]["n"] == 2
    noise = max(abs(d[0] - d[1]) for arm in (v, ls) for d in arm.values())
    assert f["sampling_noise"] == noise > 0
    assert f["exceeds_twice_noise"] == (abs(f["gain"]["mean"]) > 2 * noise)
    assert "final pattern_mse (sampler.steps=3): paired gain" in final.output


def test_cli_convergence_refuses_a_run_with_another_config(
    layersync_cli: Callable, tmp_path: Path
) -> None:
    out = tmp_path / "conv"
    assert invoke(layersync_cli, out, 2, "--seeds", "0").exit_code == 0
    other = invoke(layersync_cli, out, 2, "--seeds", "0", "model.dim=16")
    assert other.exit_code == 2
    assert "trained with another config" in other.output and "model.dim" in other.output
    # a λ study elsewhere shares the finished vanilla arm (a link): LayerSync's settings and
    # the run's location do not matter when it is off; they do for the LayerSync arm
    lam = tmp_path / "lam0.05"
    lam.mkdir()
    (lam / "vanilla-seed0").symlink_to(out / "vanilla-seed0")
    shared = invoke(layersync_cli, lam, 2, "--seeds", "0", "layersync.weight=0.05")
    assert shared.exit_code == 0, shared.output
    assert "vanilla-seed0: finished, reused" in shared.output
    assert "layersync-seed0: training" in shared.output
    changed = invoke(layersync_cli, out, 2, "--seeds", "0", "layersync.weight=0.05")
    assert changed.exit_code == 2 and "layersync.weight" in changed.output


def test_cli_convergence_stops_when_an_arm_is_signalled(
    layersync_cli: Callable, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM during an arm: training saves and returns early; bench must stop there (one
    error line), not go on to the next arm, and the same command then resumes the arm."""
    import signal

    from layersync.train.runtime import StopFlag

    enter = StopFlag.__enter__

    def signalled(self: StopFlag) -> StopFlag:  # as if SIGTERM arrived before the first step
        enter(self)
        self.signal = signal.SIGTERM
        return self

    out = tmp_path / "conv"
    monkeypatch.setattr(StopFlag, "__enter__", signalled)
    stopped = invoke(layersync_cli, out, 4, "--seeds", "0")
    assert stopped.exit_code == 2
    assert "error: vanilla-seed0 stopped before step 4 (a signal)" in stopped.output
    assert not (out / "layersync-seed0").exists()  # the next arm never started
    monkeypatch.setattr(StopFlag, "__enter__", enter)
    again = invoke(layersync_cli, out, 4, "--seeds", "0")
    assert again.exit_code == 0, again.output
    assert "vanilla-seed0: resuming from its last checkpoint" in again.output


def test_cli_convergence_names_fields_an_old_saved_config_lacks(
    layersync_cli: Callable, tmp_path: Path
) -> None:
    """A field added after a run was trained is absent from its config.toml: the run is still
    reused (read as today's default), and the warning names the field."""
    out = tmp_path / "conv"
    assert invoke(layersync_cli, out, 2, "--seeds", "0").exit_code == 0
    saved = out / "vanilla-seed0" / "config.toml"
    text = saved.read_text()
    assert "\nlr_schedule = " in text
    saved.write_text("\n".join(x for x in text.splitlines() if not x.startswith("lr_schedule =")))
    again = invoke(layersync_cli, out, 2, "--seeds", "0")
    assert again.exit_code == 0, again.output
    assert again.output.count("reused") == 2
    assert "predates train.lr_schedule: read as today's defaults" in again.output
    assert again.output.count("predates") == 1  # the untouched arm: no warning


# --------------------------------------------------------------------------------------------
# Declared metrics: the plugin's primary metric and its direction (issue 10, item 3)
# --------------------------------------------------------------------------------------------


def _accuracy_plugin():
    from types import SimpleNamespace

    from layersync.plugin import MetricSpec

    return SimpleNamespace(
        name="acc-plugin",
        metrics={
            "loss": MetricSpec(higher_is_better=False),
            "accuracy": MetricSpec(higher_is_better=True, primary=True),
        },
    )


def test_metric_direction_follows_the_declaration() -> None:
    from layersync.convergence import metric_direction

    plugin = _accuracy_plugin()
    assert metric_direction(plugin, ["loss", "accuracy"]) == ("accuracy", True)
    assert metric_direction(plugin, ["loss", "accuracy"], "loss") == ("loss", False)
    assert metric_direction(plugin, ["loss", "accuracy"], None, False) == ("accuracy", False)
    undeclared = type("P", (), {"name": "old", "metrics": {}})()
    assert metric_direction(undeclared, ["mse", "x"]) == ("mse", False)  # first, lower
    with pytest.raises(ValueError, match="metric 'fid' not reported; available: loss, accuracy"):
        metric_direction(plugin, ["loss", "accuracy"], "fid")


def test_a_metric_without_direction_is_never_scored() -> None:
    """MetricSpec(higher_is_better=None) (MDM's Diversity: closer to the real value is better):
    bench convergence refuses to compare on it unless told a direction."""
    from layersync.convergence import metric_direction
    from layersync.plugin import MetricSpec

    plugin = type(
        "P",
        (),
        {
            "name": "m",
            "metrics": {
                "fid": MetricSpec(primary=True),
                "diversity": MetricSpec(higher_is_better=None),
            },
        },
    )()
    assert metric_direction(plugin, ["fid", "diversity"]) == ("fid", False)
    with pytest.raises(ValueError, match="'diversity' has no better direction"):
        metric_direction(plugin, ["fid", "diversity"], "diversity")
    assert metric_direction(plugin, ["fid", "diversity"], "diversity", True) == ("diversity", True)


def test_higher_is_better_primary_metric_gives_the_right_speedup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Known curves: accuracy rises 0.5 -> 0.7 (vanilla) and 0.7 -> 0.8 (LayerSync), the loss
    falls. Read as lower-is-better (the old behaviour) accuracy would say LayerSync never
    reaches vanilla; read as declared, LayerSync reaches 0.7 at step 10 of 20: x2."""
    from types import SimpleNamespace

    from layersync import convergence

    curves = {
        "vanilla": [(10, 0.5, 2.0), (20, 0.7, 1.0)],
        "layersync": [(10, 0.7, 1.5), (20, 0.8, 0.5)],
    }
    dirs = {}
    for arm, points in curves.items():
        d = tmp_path / f"{arm}-seed0"
        d.mkdir()
        rows = [
            {"kind": "eval", "step": s, "time": 0.0, "loss": loss, "accuracy": acc}
            for s, acc, loss in points
        ]
        (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        dirs[arm] = d
    monkeypatch.setattr(convergence, "arm_config", lambda p, c, o, arm, *a: arm)
    monkeypatch.setattr(convergence, "ensure_run", lambda arm, plugin, log: dirs[arm])
    cfg = SimpleNamespace(
        modality="acc",
        preset="demo",
        train=SimpleNamespace(steps=20),
        log=SimpleNamespace(eval_every=10),
    )
    run = convergence.run_convergence
    result = run(_accuracy_plugin(), cfg, tmp_path / "out", plot=False, noise_check=False)
    assert result["metric"] == "accuracy" and result["lower_is_better"] is False
    s = result["summary"]
    assert s["layersync_steps_to_vanilla_final"] == 10.0
    assert s["speedup"] == pytest.approx(2.0)
    assert s["relative_final_gain"] == pytest.approx(0.1 / 0.7)
    # an explicit override still wins: the loss, lower is better
    result = convergence.run_convergence(
        _accuracy_plugin(), cfg, tmp_path / "out", metric="loss", plot=False, noise_check=False
    )
    assert result["lower_is_better"] is True
    assert result["summary"]["layersync_steps_to_vanilla_final"] == pytest.approx(15.0)


def test_declared_metrics_follow_the_config_when_given() -> None:
    """eval, bench convergence and its final evaluation read one function: a config's names
    (e.g. fvd<n>_16f under metric.num_samples=n) when given, else the static declaration."""
    from types import SimpleNamespace

    from layersync.plugin import MetricSpec, declared_metrics

    spec = MetricSpec(higher_is_better=False, primary=True)
    plugin = SimpleNamespace(
        metrics={"fvd64_16f": spec}, metrics_for=lambda cfg: {f"fvd{cfg.n}_16f": spec}
    )
    assert declared_metrics(plugin) == {"fvd64_16f": spec}
    assert declared_metrics(plugin, SimpleNamespace(n=2048)) == {"fvd2048_16f": spec}
    assert declared_metrics(SimpleNamespace(), SimpleNamespace(n=1)) == {}
