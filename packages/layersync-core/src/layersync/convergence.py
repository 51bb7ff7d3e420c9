"""Convergence A/B: vanilla and LayerSync arms as ordinary runs, compared on the plugin metric.

Both arms of a seed share everything but λ: the seed (so the initial weights, data order and
noise), the pairs, the steps and the evaluation points (``log.eval_every``). The vanilla arm
runs with ``layersync.weight=0``: the taps measure its blocks (``cos/``, ``rms/``, ``rel/`` in
metrics.jsonl, so both arms' diagnostics compare) while its training is bit-identical to
``layersync.enabled=false`` (a zero-weight term adds exactly zero gradient; tested). Each
arm is a normal run directory under ``OUT/<arm>-seed<k>``: a finished arm is reused, an
unfinished one resumes from its last checkpoint (``--resume latest``), so the command can be
interrupted and re-run, or re-run with more steps to extend the curves.

Outputs in ``OUT``: ``convergence.json`` (curves, means, summary), ``convergence.csv`` (one row
per arm, seed and evaluation step, mean rows with seed ``mean``) and ``convergence.png``.
The summary answers two questions: how many steps LayerSync needs to reach the vanilla arm's
final metric (linear interpolation between evaluation points), and the relative metric gain at
the final step. Claims are made on paired per-seed differences (``layersync.paired``): mean and
95% t-interval, "no detectable difference" when the interval includes no-change (or n = 1).
A sample-based metric also gets its sampling noise (a second sampling seed on the final
checkpoints); ``val_loss`` (``layersync.valloss``) has none by construction.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from layersync import finaleval, paired
from layersync.config import with_overrides
from layersync.fileio import atomic_write
from layersync.plugin import Modality, declared_metrics

ARMS = ("vanilla", "layersync")
Curve = list[tuple[int, float]]

# --------------------------------------------------------------------------------------------
# Runs
# --------------------------------------------------------------------------------------------


class RunStopped(RuntimeError):
    """An arm's training returned before its last step (it was signalled and saved)."""


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
            "layersync.enabled=true",
            *([] if arm == "layersync" else ["layersync.weight=0"]),  # measured, not trained
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


def check_same_run(
    run_dir: Path, cfg: Any, plugin: Modality, log: Callable[[str], None] | None = None
) -> None:
    """Refuse to reuse a run directory trained with another config.

    Ignored: the steps and logging, where the run lives (``run.out_dir``/``run.name``: a moved
    or linked run is the same run) and, when both are vanilla (LayerSync off or λ = 0), the
    LayerSync settings (one vanilla arm can then be shared by several λ studies). Fields the
    saved config does not hold (added to LayerSync after the run was trained) are read as
    today's defaults and named through ``log``: the run may have been trained otherwise."""
    from layersync import config as config_lib

    saved = run_dir / "config.toml"
    if not saved.is_file():
        return
    written = config_lib.read_toml(saved)
    old = config_lib.resolve(plugin, file=saved).model_dump(mode="json")
    new = cfg.model_dump(mode="json")
    vanilla = all(
        not d["layersync"]["enabled"] or d["layersync"]["weight"] == 0 for d in (old, new)
    )
    for data in (old, new):
        data["train"].pop("steps")
        data.pop("log")
        data["run"].pop("out_dir", None)
        data["run"].pop("name", None)
        if vanilla:
            data.pop("layersync")
    if old != new:
        diff = sorted(_diff_keys(old, new))
        raise ValueError(
            f"{run_dir} was trained with another config ({', '.join(diff[:5])} differ); "
            "choose another --out or delete it"
        )
    absent = _absent_keys(new, written)
    if absent and log is not None:
        log(
            f"warning: {saved} predates {', '.join(absent[:5])}"
            f"{' ...' if len(absent) > 5 else ''}: read as today's defaults"
        )


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        keys = sorted(set(a) | set(b))
        return [k for key in keys for k in _diff_keys(a.get(key), b.get(key), f"{prefix}{key}.")]
    return [] if a == b else [prefix.rstrip(".")]


def _absent_keys(data: Any, written: Any, prefix: str = "") -> list[str]:
    """Leaves of ``data`` that ``written`` (a saved TOML, None values omitted) does not hold."""
    if isinstance(data, dict):
        held = written if isinstance(written, dict) else {}
        return [
            k
            for key, value in data.items()
            for k in _absent_keys(value, held.get(key), f"{prefix}{key}.")
        ]
    return [prefix.rstrip(".")] if written is None and data is not None else []


def ensure_run(cfg: Any, plugin: Modality, log: Callable[[str], None]) -> Path:
    """Train the run of ``cfg`` unless it is done; resume it if it has a checkpoint."""
    from layersync.rundir import run_dir_of
    from layersync.train import train

    run_dir = run_dir_of(cfg)
    check_same_run(run_dir, cfg, plugin, log)
    state = run_state(run_dir, cfg.train.steps)
    if state == "done":
        log(f"{run_dir.name}: finished, reused")
        return run_dir
    if state == "partial":
        log(f"{run_dir.name}: resuming from its last checkpoint")
        run_dir = train(cfg, plugin, resume="latest")
    else:
        log(f"{run_dir.name}: training {cfg.train.steps} steps")
        run_dir = train(cfg, plugin, overwrite=True)
    if run_state(run_dir, cfg.train.steps) != "done":  # SIGINT/SIGTERM: saved, then returned
        raise RunStopped(
            f"{run_dir.name} stopped before step {cfg.train.steps} (a signal); its checkpoint "
            "is saved: run the same command again to resume"
        )
    return run_dir


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
    """The first metric of the run's eval lines (for plugins that declare none)."""
    for record in eval_records(run_dir):
        for key, value in record.items():
            if key not in ("step", "kind", "time") and isinstance(value, (int, float)):
                return key
    raise ValueError(
        f"{run_dir}: no evaluation metric in metrics.jsonl; the plugin computed none "
        "(is its metric installed and switched on?)"
    )


def metric_direction(
    plugin: Modality,
    available: Sequence[str],
    metric: str | None = None,
    higher_is_better: bool | None = None,
    cfg: Any = None,
) -> tuple[str, bool]:
    """The metric to compare on and whether higher is better.

    Default: the plugin's primary metric (``Modality.metrics_for(cfg)``, or ``Modality.metrics``
    without a config) and its declared direction;
    ``metric`` picks another (its declared direction, else lower is better); an explicit
    ``higher_is_better`` overrides the direction. Plugins declaring nothing: the first of
    ``available``, lower is better.
    """
    declared = declared_metrics(plugin, cfg)
    if metric is None:
        primary = [name for name, spec in declared.items() if spec.primary and name in available]
        if primary:
            metric = primary[0]
        elif available:
            metric = available[0]
        else:
            raise ValueError(f"modality {plugin.name!r} reported no metric to compare")
    elif available and metric not in available:
        raise ValueError(f"metric {metric!r} not reported; available: {', '.join(available)}")
    if higher_is_better is None:
        spec = declared.get(metric)
        if spec is not None and spec.higher_is_better is None:
            raise ValueError(
                f"metric {metric!r} has no better direction (closer to the real data's value "
                "is better): compare on another metric"
            )
        higher_is_better = bool(spec.higher_is_better) if spec is not None else False
    return metric, higher_is_better


def reported_metrics(run_dir: Path) -> list[str]:
    """Names of the numeric metrics in a run's eval lines, in first-seen order."""
    names: list[str] = []
    for record in eval_records(run_dir):
        for key, value in record.items():
            if key in ("step", "kind", "time") or not isinstance(value, (int, float)):
                continue
            if key not in names:
                names.append(key)
    if not names:
        default_metric(run_dir)  # raises the explanation
    return names


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
    # paired per-seed differences with 95% t-intervals: what the report states as a claim
    summary["paired"] = paired.paired_summary(curves, lower_is_better, steps_to_reach)
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
    higher_is_better: bool | None = None,
    plot: bool = True,
    noise_check: bool = True,
    final_eval: Sequence[str] = (),
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train (or reuse / resume) both arms for every seed, then write the three outputs.

    The metric and its direction: the plugin's primary metric (``Modality.metrics``) unless
    ``metric`` / ``higher_is_better`` say otherwise (see ``metric_direction``). For a
    sample-based metric (not ``val_loss``) and ``noise_check``, the first seed's final
    checkpoints are re-evaluated with a second sampling seed (``sampling_noise``).
    ``final_eval`` (config overrides, e.g. ``metric.num_samples=2000``): every arm's final
    checkpoint is evaluated with those overrides at two sampling seeds (``finaleval``)."""
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
    available = reported_metrics(run_dirs["vanilla"][seeds[0]])
    metric, higher = metric_direction(plugin, available, metric, higher_is_better, cfg)
    lower_is_better = not higher
    curves = {
        arm: {seed: eval_curve(d, metric, up_to=steps) for seed, d in dirs.items()}
        for arm, dirs in run_dirs.items()
    }
    means, summary = summarize(curves, lower_is_better)
    noise = None
    if noise_check and finaleval.is_sample_based(metric):
        first = {arm: run_dirs[arm][seeds[0]] for arm in ARMS}
        noise = finaleval.sampling_noise(plugin, first, metric)
    final = None
    if final_eval:
        final = finaleval.final_eval(plugin, run_dirs, final_eval, log)
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
    if noise is not None:
        result["sampling_noise"] = noise
    if final is not None:
        result["final_eval"] = final
    atomic_write(out_dir / "convergence.json", json.dumps(result, indent=2) + "\n")
    atomic_write(out_dir / "convergence.csv", lambda p: write_csv(p, curves, means))
    if plot:
        try:
            from layersync.plots import plot_convergence

            bands = {arm: paired.arm_band(curves[arm]) for arm in ARMS}
            result["plot"] = str(
                plot_convergence(
                    curves, out_dir / "convergence.png", metric, means, lower_is_better, bands
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


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def report(result: dict[str, Any], out_dir: Path) -> tuple[Any, list[str]]:
    """The curve table (rich) and the summary lines ``layersync bench convergence`` prints."""
    from rich.table import Table

    s = result["summary"]
    p = s["paired"]
    table = Table(title=f"bench convergence: {result['metric']} ({out_dir})")
    for column in ("step", "vanilla", "layersync", "paired gain (95% CI)"):
        table.add_column(column, justify="right")
    ls_mean = dict(result["mean"]["layersync"])
    gains = {row["step"]: paired.from_dict(row["relative_gain"]) for row in p["per_step"]}
    for step, value in result["mean"]["vanilla"]:
        g = gains.get(step)
        cell = "" if g is None else _short(g)
        table.add_row(str(step), f"{value:.4f}", f"{ls_mean.get(step, float('nan')):.4f}", cell)
    better = "lower" if result["lower_is_better"] else "higher"
    final = paired.from_dict(p["final_relative_gain"])
    lines = [
        f"seeds {result['seeds']}, {result['metric']} ({better} is better), step "
        f"{p['final_step']}: vanilla {s['vanilla_final']:.4f}, LayerSync "
        f"{s['layersync_final']:.4f}",
        f"final gain (paired per seed): {final.describe(100, '%')}",
        f"LayerSync better at the last two evaluations {p['last_two_steps']} in every seed: "
        f"{'yes' if p['better_at_last_two_in_every_seed'] else 'no'}",
    ]
    if p.get("speedup") is not None:
        speed = paired.from_dict(p["speedup"])
        lines.append(
            "speed-up to the vanilla final value (per seed, interpolated): x"
            + speed.describe(signed=False)
        )
    else:
        missed = ", ".join(p.get("speedup_not_reached_seeds", []))
        lines.append(
            f"speed-up: none; LayerSync did not reach vanilla's final value (seed {missed})"
        )
    noise = result.get("sampling_noise")
    if noise:
        lines.append(finaleval.noise_line(noise))
    if result.get("final_eval"):
        lines += finaleval.final_lines(result["final_eval"])
    png = ", convergence.png" if "plot" in result else ""
    lines.append(f"wrote {out_dir / 'convergence.json'}, convergence.csv{png}")
    return table, lines


def _short(e: paired.Estimate) -> str:
    if e.n < 2:
        return f"{100 * e.mean:+.2f}% (n=1)"
    mark = "" if e.detectable else " ns"
    return f"{100 * e.mean:+.2f}% [{100 * e.lo:+.2f}, {100 * e.hi:+.2f}]{mark}"
