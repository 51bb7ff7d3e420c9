"""Sample-based metrics of finished runs, redrawn: sampling noise and the final evaluation.

A sample-based metric (FID, KID...) depends on the sampling seed; at small n that dependence can
be as large as the effect being looked for. ``sampling_noise`` re-evaluates a run's final EMA
checkpoint with a second sampling seed; ``final_eval`` evaluates every arm's final checkpoint
with given overrides (e.g. ``metric.num_samples=2000``) at two sampling seeds and reads the
paired per-seed gain against the larger of the two arms' draw-to-draw differences.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from layersync import paired
from layersync.fileio import atomic_write
from layersync.plugin import Modality, declared_metrics

NOISE_SEED_OFFSET = 20_000
"""The second sampling seed: ``run.seed + NOISE_SEED_OFFSET``."""


def is_sample_based(metric: str) -> bool:
    """Whether the metric depends on a sampling seed (everything but ``val_loss``)."""
    return not metric.startswith("val_loss")


def evaluate_checkpoint(
    plugin: Modality, run_dir: Path, seed_offset: int, overrides: Sequence[str] = ()
) -> dict[str, float]:
    """``plugin.evaluate`` of the run's last EMA checkpoint with sampling seed
    ``run.seed + seed_offset`` and config ``overrides``; cached in
    ``<run>/eval/<step>-redraw/<overrides>-seed<k>.json``."""
    import torch

    from layersync import distributed as dist
    from layersync import rundir
    from layersync.config import resolve
    from layersync.train.checkpoint import check_fits, load_weights, resolve_checkpoint

    ckpt = resolve_checkpoint(run_dir)
    cfg = resolve(plugin, file=run_dir / rundir.CONFIG, overrides=list(overrides))
    tag = "_".join(o.replace("/", "-") for o in overrides) or "config"
    out_dir = run_dir / "eval" / f"{ckpt.name}-redraw"
    cache = out_dir / f"{tag}-seed{cfg.run.seed + seed_offset}.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    model = plugin.build_model(cfg)
    state = load_weights(ckpt, "ema")
    check_fits(state, model, ckpt / "ema.safetensors")
    model.load_state_dict(state)
    info = dist.init_distributed(cfg.train.device)
    try:
        model.to(info.device).eval()
        out_dir.mkdir(parents=True, exist_ok=True)
        gen = torch.Generator(info.device).manual_seed(cfg.run.seed + seed_offset)
        with torch.no_grad():
            metrics = plugin.evaluate(model, cfg, out_dir, gen)
    finally:
        dist.shutdown()
    atomic_write(cache, json.dumps(metrics, indent=2) + "\n")
    return metrics


# --------------------------------------------------------------------------------------------
# Sampling noise of the compared metric (second draw of the first seed's final checkpoints)
# --------------------------------------------------------------------------------------------


def sampling_noise(plugin: Modality, run_dirs: Mapping[str, Path], metric: str) -> dict[str, Any]:
    """Per arm: the metric of the final evaluation (training's draw) and of a second draw."""
    from layersync.convergence import eval_curve

    out: dict[str, Any] = {"metric": metric}
    for arm, run_dir in run_dirs.items():
        curve = eval_curve(run_dir, metric)
        if not curve:
            raise ValueError(f"{run_dir}: no {metric!r} evaluation to compare a second draw with")
        step, value = curve[-1]
        second = evaluate_checkpoint(plugin, run_dir, NOISE_SEED_OFFSET)
        if metric not in second:
            raise ValueError(f"{run_dir}: the second draw did not report {metric!r}")
        out[arm] = {
            "step": step,
            "first": value,
            "second": float(second[metric]),
            "abs_diff": abs(value - float(second[metric])),
        }
    out["max_abs_diff"] = max(out[arm]["abs_diff"] for arm in run_dirs)
    return out


def noise_line(noise: Mapping[str, Any]) -> str:
    arms = ", ".join(
        f"{arm} {noise[arm]['first']:.4g} vs {noise[arm]['second']:.4g}"
        for arm in ("vanilla", "layersync")
        if arm in noise
    )
    return (
        f"sampling noise of {noise['metric']} (final checkpoints redrawn with a second sampling "
        f"seed): {arms}; |diff| up to {noise['max_abs_diff']:.4g}. A gain below twice that "
        "is not a measured effect."
    )


# --------------------------------------------------------------------------------------------
# Final evaluation at a larger n, two draws
# --------------------------------------------------------------------------------------------


def final_eval(
    plugin: Modality,
    run_dirs: Mapping[str, Mapping[Any, Path]],
    overrides: Sequence[str],
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Every arm's final checkpoint evaluated with ``overrides`` at two sampling seeds.

    Returns per metric: the values (``[arm][seed] = [draw1, draw2]``), the paired per-seed gain
    on draw 1 (positive = LayerSync better, as declared by the plugin; lower is better when
    undeclared) with its 95% interval, the sampling noise (largest |draw1 - draw2|), and
    ``exceeds_twice_noise``: |mean gain| > 2 x noise."""
    from layersync import rundir
    from layersync.config import resolve
    from layersync.train import EVAL_SEED_OFFSET  # draw 1 = training's own evaluation seed

    log = log or (lambda message: None)
    draws: dict[str, dict[str, list[dict[str, float]]]] = {}
    for arm, seeds in run_dirs.items():
        draws[arm] = {}
        for seed, run_dir in seeds.items():
            log(f"{run_dir.name}: final evaluation ({', '.join(overrides)}), two draws")
            draws[arm][str(seed)] = [
                evaluate_checkpoint(plugin, run_dir, off, overrides)
                for off in (EVAL_SEED_OFFSET, NOISE_SEED_OFFSET)
            ]
    first = next(iter(next(iter(run_dirs.values())).values()))  # the names under the overrides
    declared = declared_metrics(
        plugin, resolve(plugin, file=first / rundir.CONFIG, overrides=list(overrides))
    )
    names = sorted(
        set.intersection(*(set(d) for a in draws.values() for s in a.values() for d in s))
    )
    out: dict[str, Any] = {"overrides": list(overrides), "metrics": {}}
    for name in names:
        spec = declared.get(name)
        if spec is not None and spec.higher_is_better is None:  # no gain to score
            continue
        lower = not (spec is not None and spec.higher_is_better)
        values = {
            arm: {s: [float(d[name]) for d in ds] for s, ds in seeds.items()}
            for arm, seeds in draws.items()
        }
        seeds = [s for s in values["vanilla"] if s in values["layersync"]]
        gains = [
            paired.gain(values["vanilla"][s][0], values["layersync"][s][0], lower) for s in seeds
        ]
        noise = max(abs(v[0] - v[1]) for arm in values.values() for v in arm.values())
        est = paired.estimate(gains)
        out["metrics"][name] = {
            "lower_is_better": lower,
            "values": values,
            "gain": est.to_dict(),
            "sampling_noise": noise,
            "exceeds_twice_noise": abs(est.mean) > 2 * noise,
        }
    return out


def final_lines(final: Mapping[str, Any]) -> list[str]:
    """One line per metric of ``final_eval``'s result."""
    lines = []
    for name, m in final["metrics"].items():
        est = paired.from_dict(m["gain"])
        verdict = "exceeds" if m["exceeds_twice_noise"] else "does not exceed"
        lines.append(
            f"final {name} ({', '.join(final['overrides'])}): paired gain "
            f"{est.describe()}; sampling noise {m['sampling_noise']:.4g}, the gain {verdict} "
            "twice the noise"
        )
    return lines
