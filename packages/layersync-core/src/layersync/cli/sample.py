"""``layersync sample`` and ``layersync eval``: a run's EMA weights (or external ``--weights``)
-> samples on disk, or the plugin's metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from layersync.cli.common import (
    ConfigOpt,
    ModalityOpt,
    Overrides,
    PresetOpt,
    TargetArg,
    WeightsOpt,
    app,
    console,
    fail,
    load_model,
    positive,
)


@app.command()
def sample(
    target: TargetArg = None,
    n: Annotated[int, typer.Option("--num-samples", "-n", help="number of samples")] = 16,
    out: Annotated[Path | None, typer.Option(help="output directory")] = None,
    seed: int = 0,
    batch_size: Annotated[int, typer.Option(help="samples per batch (and per part)")] = 64,
    raw: Annotated[bool, typer.Option("--raw", help="use raw weights, not EMA")] = False,
    weights: WeightsOpt = None,
    modality: ModalityOpt = None,
    config: ConfigOpt = None,
    preset: PresetOpt = None,
    overrides: Overrides = None,
) -> None:
    """Generate samples (EMA weights of a run, or external --weights).

    Under torchrun the batches are shared across processes; an interrupted job resumes where it
    stopped (finished batches are kept in OUT/parts/).
    """
    from layersync import distributed as dist
    from layersync.sampling import sample_to_dir

    positive(n, "--num-samples")
    positive(batch_size, "--batch-size")
    if out is not None and out.exists() and not out.is_dir():
        fail(f"--out {out}: exists and is not a directory")
    plugin, cfg, model, root = load_model(target, weights, modality, config, preset, overrides, raw)
    info = dist.init_distributed(cfg.train.device)
    model.to(info.device)
    out = out or root.with_name(f"{root.name}-seed{seed}")
    try:
        paths = sample_to_dir(
            plugin, model, cfg, n, out, seed=seed, batch_size=batch_size, info=info
        )
    finally:
        dist.shutdown()
    if info.is_main:
        console.print(f"wrote {len(paths)} file(s) to {out}")


@app.command("eval")
def evaluate(
    target: TargetArg = None,
    seed: Annotated[
        int | None, typer.Option(help="default: the seed training evaluates with")
    ] = None,
    metric: Annotated[
        str | None, typer.Option(help="headline metric (default: the plugin's primary one)")
    ] = None,
    weights: WeightsOpt = None,
    modality: ModalityOpt = None,
    config: ConfigOpt = None,
    preset: PresetOpt = None,
    overrides: Overrides = None,
) -> None:
    """Compute the modality's metric(s) (EMA weights of a run, or external --weights).

    Under torchrun every process joins the group and the plugin splits the work by rank (as in
    training's own evaluation); rank 0 writes metrics.json and prints the table. An earlier
    metrics.json with other keys or values is kept as metrics.<k>.json.
    """
    import torch

    from layersync import distributed as dist
    from layersync import rundir
    from layersync.backends import backends_record
    from layersync.convergence import metric_direction
    from layersync.train import EVAL_SEED_OFFSET
    from layersync.valloss import ValLoss

    plugin, cfg, model, root = load_model(target, weights, modality, config, preset, overrides)
    if seed is None:  # reproduce the run's eval/<step>/metrics.json rather than redraw it
        seed = cfg.run.seed + EVAL_SEED_OFFSET
    info = dist.init_distributed(cfg.train.device)
    try:
        model.to(info.device)
        out_dir = (
            rundir.eval_dir(root.parent.parent, root.name) if target else Path("eval") / root.name
        )
        if info.is_main:
            out_dir.mkdir(parents=True, exist_ok=True)
        dist.barrier()
        with torch.no_grad():
            gen = torch.Generator(info.device).manual_seed(seed)
            metrics = plugin.evaluate(model, cfg, out_dir, gen)
            # as training's evaluation does (layersync.valloss): the same metrics.json
            held_out = ValLoss.for_run(plugin, cfg, plugin.build_objective(cfg))
            if held_out is not None:
                metrics = {**(metrics or {}), **held_out(model, info.device)}
        dist.barrier()
    finally:
        dist.shutdown()
    if not metrics:
        fail(f"modality {plugin.name!r} computed no metric (is its metric switched off?)")
    if not info.is_main:
        return
    kept = rundir.set_aside(out_dir / "metrics.json", metrics)
    if kept is not None:
        console.print(f"kept the earlier metrics.json (other values) as {kept}")
    rundir.write_json(out_dir / "metrics.json", metrics)
    rundir.write_json(out_dir / rundir.BACKENDS, backends_record())
    name, higher = metric_direction(plugin, list(metrics), metric, cfg=cfg)
    table = Table(title=f"{plugin.name} metrics ({out_dir})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        label = f"{key} ({'higher' if higher else 'lower'} is better)" if key == name else key
        table.add_row(label, f"{value:.4f}")
    console.print(table)
