"""Convergence A/B: vanilla and LayerSync arms as ordinary runs, compared on the plugin metric.

Both arms of a seed share everything but ``layersync.enabled``: the seed (so the initial
weights, data order and noise), the steps and the evaluation points (``log.eval_every``). Each
arm is a normal run directory under ``OUT/<arm>-seed<k>``: a finished arm is reused, an
unfinished one resumes from its last checkpoint (``--resume latest``), so the command can be
interrupted and re-run, or re-run with more steps to extend the curves.

Outputs in ``OUT``: ``convergence.json`` (curves, means, summary), ``convergence.csv`` (one row
per arm, seed and evaluation step, mean rows with seed ``mean``) and ``convergence.png``.
The summary answers two questions on the mean curves: how many steps LayerSync needs to reach
the vanilla arm's final metric (linear interpolation between evaluation points), and the
relative metric gain at the final step.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from layersync.bench import with_overrides
from layersync.plugin import Modality

ARMS = ("vanilla", "layersync")
Curve = list[tuple[int, float]]

# --------------------------------------------------------------------------------------------
# Runs
# --------------------------------------------------------------------------------------------


def arm_config(
    plugin: Modality, cfg: Any, out_dir: Path, arm: str, seed: int, steps: int, eval_every: int
) -> Any:
    """The run config of one arm and seed."""
    if arm not in ARMS:
        raise ValueError(f"unknown arm {arm!r}: use one of {ARMS}")
    return with_overrides(
        plugin,
        cfg,
        [
            f"run.out_dir={out_dir}",
            f"run.name={arm}-seed{seed}",
            f"run.seed={seed}",
            f"train.steps={steps}",
            f"log.eval_every={eval_every}",
            f"layersync.enabled={'true' if arm == 'layersync' else 'false'}",
        ],
    )


def eval_records(run_dir: Path) -> list[dict[str, Any]]:
    """The ``kind == "eval"`` lines of a run's metrics.jsonl (empty when there is none)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("kind") == "eval":
            records.append(record)
    return records


def run_state(run_dir: Path, steps: int) -> str:
    """``done`` (evaluated at ``steps``), ``partial`` (has a checkpoint) or ``new``."""
    from layersync.train.checkpoint import list_checkpoints

    if any(r["step"] == steps for r in eval_records(run_dir)):
        return "done"
    if list_checkpoints(run_dir / "checkpoints"):
        return "partial"
    return "new"


def check_same_run(run_dir: Path, cfg: Any, plugin: Modality) -> None:
    """Refuse to reuse a run directory trained with another config (steps and logging aside)."""
    from layersync import config as config_lib

    saved = run_dir / "config.toml"
    if not saved.is_file():
        return
    old = config_lib.resolve(plugin, file=saved).model_dump(mode="json")
    new = cfg.model_dump(mode="json")
    for data in (old, new):
        data["train"].pop("steps")
        data.pop("log")
    if old != new:
        diff = sorted(_diff_keys(old, new))
        raise ValueError(
            f"{run_dir} was trained with another config ({', '.join(diff[:5])} differ); "
            "choose another --out or delete it"
        )


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        keys = sorted(set(a) | set(b))
        return [k for key in keys for k in _diff_keys(a.get(key), b.get(key), f"{prefix}{key}.")]
    return [] if a == b else [prefix.rstrip(".")]


def ensure_run(cfg: Any, plugin: Modality, log: Callable[[str], None]) -> Path:
    """Train the run of ``cfg`` unless it is done; resume it if it has a checkpoint."""
    from layersync.train.loop import run_dir_of, train

    run_dir = run_dir_of(cfg)
    check_same_run(run_dir, cfg, plugin)
    state = run_state(run_dir, cfg.train.steps)
    if state == "done":
        log(f"{run_dir.name}: finished, reused")
        return run_dir
    if state == "partial":
        log(f"{run_dir.name}: resuming from its last checkpoint")
        return train(cfg, plugin, resume="latest")
    log(f"{run_dir.name}: training {cfg.train.steps} steps")
    return train(cfg, plugin, overwrite=True)


# --------------------------------------------------------------------------------------------
# Curves and the summary
# --------------------------------------------------------------------------------------------


def eval_curve(run_dir: Path, metric: str, up_to: int | None = None) -> Curve:
    """``(step, value)`` of ``metric`` from the run's eval lines (sorted, last value per step)."""
    points: dict[int, float] = {}
    for record in eval_records(run_dir):
        if metric in record and (up_to is None or record["step"] <= up_to):
            points[int(record["step"])] = float(record[metric])
    return sorted(points.items())


def default_metric(run_dir: Path) -> str:
    """The first metric of the run's eval lines."""
    for record in eval_records(run_dir):
        for key, value in record.items():
            if key not in ("step", "kind", "time") and isinstance(value, (int, float)):
                return key
    raise ValueError(
        f"{run_dir}: no evaluation metric in metrics.jsonl; the plugin computed none "
        "(is its metric installed and switched on?)"
    )


def mean_curve(curves: Sequence[Curve]) -> Curve:
    """Mean over seeds at the steps every seed evaluated."""
    common = set.intersection(*(set(dict(c)) for c in curves)) if curves else set()
    tables = [dict(c) for c in curves]
    return [(s, sum(t[s] for t in tables) / len(tables)) for s in sorted(common)]


def steps_to_reach(curve: Curve, target: float, lower_is_better: bool = True) -> float | None:
    """First step at which ``curve`` reaches ``target``, linearly interpolated between
    evaluation points; the first evaluation step if it is already there; None if never."""
    sign = 1.0 if lower_is_better else -1.0
    for k, (step, value) in enumerate(curve):
        if sign * (value - target) <= 0:
            if k == 0:
                return float(step)
            s0, v0 = curve[k - 1]
            return s0 + (target - v0) * (step - s0) / (value - v0)
    return None


def relative_gain(vanilla: float, layersync: float, lower_is_better: bool = True) -> float:
    """How much better LayerSync's value is, relative to vanilla's (positive = better)."""
    gain = (vanilla - layersync) if lower_is_better else (layersync - vanilla)
    return gain / abs(vanilla) if vanilla else float("nan")


def summarize(
    curves: dict[str, dict[int, Curve]], lower_is_better: bool = True
) -> tuple[dict[str, Curve], dict[str, Any]]:
    """Mean curves per arm and the speed-up / gain summary (on means and per seed)."""
    means = {arm: mean_curve(list(curves[arm].values())) for arm in ARMS}
    van, ls = means["vanilla"], means["layersync"]
    if not van or not ls:
        raise ValueError("an arm has no common evaluation step across seeds")
    final_step = van[-1][0]
    target = van[-1][1]
    need = steps_to_reach(ls, target, lower_is_better)
    summary: dict[str, Any] = {
        "final_step": final_step,
        "vanilla_final": target,
        "layersync_final": ls[-1][1],
        "layersync_steps_to_vanilla_final": need,
        "speedup": final_step / need if need else None,
        "relative_final_gain": relative_gain(target, ls[-1][1], lower_is_better),
        "per_seed": {},
    }
    for seed in curves["vanilla"]:
        v, lsc = curves["vanilla"][seed], curves["layersync"].get(seed)
        if not v or not lsc:
            continue
        need_s = steps_to_reach(lsc, v[-1][1], lower_is_better)
        summary["per_seed"][str(seed)] = {
            "vanilla_final": v[-1][1],
            "layersync_final": lsc[-1][1],
            "layersync_steps_to_vanilla_final": need_s,
            "relative_final_gain": relative_gain(v[-1][1], lsc[-1][1], lower_is_better),
        }
    return means, summary


# --------------------------------------------------------------------------------------------
# The whole experiment
# --------------------------------------------------------------------------------------------


def run_convergence(
    plugin: Modality,
    cfg: Any,
    out_dir: Path,
    *,
    seeds: Sequence[int] = (0,),
    steps: int | None = None,
    eval_every: int | None = None,
    metric: str | None = None,
    lower_is_better: bool = True,
    plot: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train (or reuse / resume) both arms for every seed, then write the three outputs."""
    log = log or (lambda message: None)
    steps = steps or cfg.train.steps
    eval_every = eval_every or cfg.log.eval_every or max(1, steps // 10)
    if eval_every > steps:
        raise ValueError(f"--eval-every {eval_every} exceeds --steps {steps}")
    out_dir.mkdir(parents=True, exist_ok=True)
    run_dirs: dict[str, dict[int, Path]] = {arm: {} for arm in ARMS}
    for seed in seeds:
        for arm in ARMS:
            arm_cfg = arm_config(plugin, cfg, out_dir, arm, seed, steps, eval_every)
            run_dirs[arm][seed] = ensure_run(arm_cfg, plugin, log)
    metric = metric or default_metric(run_dirs["vanilla"][seeds[0]])
    curves = {
        arm: {seed: eval_curve(d, metric, up_to=steps) for seed, d in dirs.items()}
        for arm, dirs in run_dirs.items()
    }
    means, summary = summarize(curves, lower_is_better)
    result = {
        "modality": cfg.modality,
        "preset": cfg.preset,
        "metric": metric,
        "lower_is_better": lower_is_better,
        "steps": steps,
        "eval_every": eval_every,
        "seeds": list(seeds),
        "runs": {arm: {str(s): str(d) for s, d in dirs.items()} for arm, dirs in run_dirs.items()},
        "curves": {arm: {str(s): c for s, c in cs.items()} for arm, cs in curves.items()},
        "mean": means,
        "summary": summary,
    }
    (out_dir / "convergence.json").write_text(json.dumps(result, indent=2) + "\n")
    write_csv(out_dir / "convergence.csv", curves, means)
    if plot:
        try:
            from layersync.plots import plot_convergence

            result["plot"] = str(
                plot_convergence(
                    curves, out_dir / "convergence.png", metric, means, lower_is_better
                )
            )
        except ImportError as e:
            log(f"no plot: {e}")
    return result


def write_csv(path: Path, curves: dict[str, dict[int, Curve]], means: dict[str, Curve]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["arm", "seed", "step", "value"])
        for arm in ARMS:
            for seed, curve in curves[arm].items():
                writer.writerows([arm, seed, step, value] for step, value in curve)
            writer.writerows([arm, "mean", step, value] for step, value in means[arm])
