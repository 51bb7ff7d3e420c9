"""``layersync bench step|sample|convergence``: what LayerSync costs and what it buys."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from layersync.cli.common import (
    ConfigOpt,
    JsonOpt,
    ModalityOpt,
    Overrides,
    PresetOpt,
    app,
    console,
    err,
    fail,
    load_model,
    positive,
    resolve_config,
)

bench_app = typer.Typer(
    help="Measure LayerSync on your hardware: step cost, sampler speed, convergence.",
    no_args_is_help=True,
)
app.add_typer(bench_app, name="bench")


def _write_json(path: Path | None, data: object) -> None:
    import json

    from layersync.fileio import atomic_write

    if path is not None:
        atomic_write(path, json.dumps(data, indent=2) + "\n")
        err.print(f"wrote {path}")


def _csv(text: str, kind: type, option: str) -> list:
    try:
        return [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        fail(f"{option} {text!r}: expected a comma-separated list of {kind.__name__} values")
        raise


@bench_app.command("step")
def bench_step_command(
    modality: ModalityOpt = None,
    config: ConfigOpt = None,
    preset: PresetOpt = None,
    steps: Annotated[int, typer.Option(help="timed steps per arm")] = 20,
    warmup: Annotated[int, typer.Option(help="untimed steps per arm first")] = 3,
    json_out: JsonOpt = None,
    overrides: Overrides = None,
) -> None:
    """Vanilla vs LayerSync training steps, interleaved: time, memory, FLOPs, MFU."""
    from layersync.bench import bench_step, step_report

    positive(steps, "--steps")
    plugin, cfg = resolve_config(modality, config, preset, overrides)
    result = bench_step(cfg, plugin, steps=steps, warmup=warmup, log=err.print)
    table, line = step_report(result, steps)
    console.print(table)
    console.print(line)
    _write_json(json_out, result)


@bench_app.command("sample")
def bench_sample_command(
    run: Annotated[Path | None, typer.Option(help="run/checkpoint directory (EMA weights)")] = None,
    modality: ModalityOpt = None,
    config: ConfigOpt = None,
    preset: PresetOpt = None,
    n: Annotated[int, typer.Option("--num-samples", "-n", help="samples per configuration")] = 64,
    samplers: Annotated[
        str, typer.Option(help="mode:method list, or 'config' for the configured sampler only")
    ] = "ode:euler,ode:heun,sde:euler,sde:heun",
    steps: Annotated[str, typer.Option(help="comma-separated step counts (default: config)")] = "",
    cfg_scale: Annotated[
        str, typer.Option(help="comma-separated CFG scales (default: config)")
    ] = "",
    repeats: Annotated[int, typer.Option(help="timed repeats (median)")] = 1,
    seed: int = 0,
    json_out: JsonOpt = None,
    overrides: Overrides = None,
) -> None:
    """Samples/s and function evaluations of each sampler (random weights without --run)."""
    import torch

    from layersync.bench_sample import bench_sample, sample_report, sampler_variants

    positive(n, "--num-samples")
    positive(repeats, "--repeats")
    if run is not None:
        plugin, cfg, model, _ = load_model(run, None, None, None, None, overrides)
    else:
        from layersync.backends import configure_backends

        plugin, cfg = resolve_config(modality, config, preset, overrides)
        configure_backends(cfg)  # as `train` and `sample` would run it
        torch.manual_seed(cfg.run.seed)
        model = plugin.build_model(cfg)  # the cost does not depend on the weights
    pairs = []
    for item in samplers.split(",") if samplers.strip() != "config" else []:
        mode, _, method = item.strip().partition(":")
        if not method:
            fail(f"--samplers {item!r}: expected mode:method (e.g. ode:heun) or 'config'")
        pairs.append((mode, method))
    variants = sampler_variants(
        pairs, _csv(steps, int, "--steps"), _csv(cfg_scale, float, "--cfg-scale")
    )
    result = bench_sample(
        plugin, cfg, model, n=n, variants=variants, repeats=repeats, seed=seed, log=err.print
    )
    console.print(sample_report(result, n))
    _write_json(json_out, result)


@bench_app.command("convergence")
def bench_convergence_command(
    modality: ModalityOpt = None,
    config: ConfigOpt = None,
    preset: PresetOpt = None,
    steps: Annotated[
        int | None, typer.Option(help="training steps per arm (default: config)")
    ] = None,
    eval_every: Annotated[
        int | None, typer.Option(help="steps between evaluations (default: log.eval_every)")
    ] = None,
    seeds: Annotated[str, typer.Option(help="comma-separated seeds")] = "0",
    out: Annotated[Path | None, typer.Option(help="output directory of the arms' runs")] = None,
    metric: Annotated[
        str | None, typer.Option(help="eval metric (default: the plugin's primary metric)")
    ] = None,
    higher_is_better: Annotated[
        bool | None,
        typer.Option(
            "--higher-is-better/--lower-is-better",
            help="the metric's direction (default: as the plugin declares it)",
        ),
    ] = None,
    noise_check: Annotated[
        bool,
        typer.Option(
            "--noise-check/--no-noise-check",
            help="redraw a sample-based metric with a second sampling seed on the final "
            "checkpoints to print its sampling noise (not for val_loss)",
        ),
    ] = True,
    final_eval: Annotated[
        str | None,
        typer.Option(
            help="comma-separated config overrides (e.g. metric.fid=on,metric.num_samples=2000)"
            ": evaluate every arm's final checkpoint with them at two sampling seeds",
        ),
    ] = None,
    overrides: Overrides = None,
) -> None:
    """Vanilla vs LayerSync runs (resumable), the plugin metric vs steps, and the paired
    per-seed gain and speed-up with 95% confidence intervals."""
    from layersync.convergence import report, run_convergence

    for value, option in ((steps, "--steps"), (eval_every, "--eval-every")):
        if value is not None:
            positive(value, option)
    seed_list = _csv(seeds, int, "--seeds")
    if not seed_list:
        fail(f"--seeds {seeds!r}: give at least one seed")
    plugin, cfg = resolve_config(modality, config, preset, overrides)
    out = out or Path(cfg.run.out_dir) / f"convergence-{cfg.modality}-{cfg.preset}"
    result = run_convergence(
        plugin,
        cfg,
        out,
        seeds=seed_list,
        steps=steps,
        eval_every=eval_every,
        metric=metric,
        higher_is_better=higher_is_better,
        noise_check=noise_check,
        final_eval=[o.strip() for o in (final_eval or "").split(",") if o.strip()],
        log=err.print,
    )
    table, lines = report(result, out)
    console.print(table)
    for line in lines:
        console.print(line)
