"""``layersync probe``: per-block linear probes and CKA of a run (vs ``--compare``), and a pair
suggestion. The analysis and the report live in ``layersync.probe``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from layersync.cli.common import Overrides, app, console, err, load_model


@app.command()
def probe(
    run: Annotated[Path, typer.Option(help="run or checkpoint directory (EMA weights)")],
    compare: Annotated[
        Path | None, typer.Option(help="a second run, analysed on the same samples")
    ] = None,
    t: Annotated[
        float, typer.Option("--t", help="time of the forward (t=1 clean data, t=0 noise)")
    ] = 0.5,
    samples: Annotated[int | None, typer.Option(help="probe set size (default: all)")] = None,
    split: Annotated[str, typer.Option(help="dataset split: eval or train")] = "eval",
    folds: Annotated[int, typer.Option(help="cross-validation folds of the probe")] = 5,
    seed: int = 0,
    suggest_pairs: Annotated[
        bool, typer.Option("--suggest-pairs", help="propose student<-teacher with reasoning")
    ] = False,
    out: Annotated[Path | None, typer.Option(help="output directory (default: RUN/probe)")] = None,
    overrides: Overrides = None,
) -> None:
    """Per-block linear-probe accuracy and linear CKA of a run (vs --compare); JSON + PNG."""
    from layersync import rundir
    from layersync.distributed import resolve_device
    from layersync.probe import LoadedRun, notes, probe_report, report_table
    from layersync.train.checkpoint import resolve_checkpoint

    if split not in ("eval", "train"):
        raise ValueError(f"--split {split!r}: use eval or train")
    loaded = []
    for target in (run, compare):
        if target is None:
            continue
        plugin, cfg, model, root = load_model(target, None, None, None, None, overrides)
        model.to(resolve_device(cfg.train.device))
        loaded.append(
            LoadedRun(str(target), str(root.parent.parent), root.name, plugin, cfg, model)
        )
    report = probe_report(
        loaded,
        t=t,
        samples=samples,
        split=split,
        folds=folds,
        seed=seed,
        suggest_pairs=suggest_pairs,
    )
    out = out or rundir.run_of_checkpoint(resolve_checkpoint(run)) / rundir.PROBE
    console.print(report_table(report))
    for line in notes(report):
        console.print(line)
    console.print(f"wrote {rundir.write_json(out / 'probe.json', report)}")
    try:
        from layersync.plots import plot_probe

        console.print(f"wrote {plot_probe(report['runs'], out / 'probe.png')}")
    except ImportError as e:
        err.print(Text("no PNG: ", style="yellow") + Text(str(e)))
    _plot_diagnostics(loaded, out)
    if suggest_pairs:
        console.print(Text("suggested pair: ") + Text(report["suggestion"]["pair"], style="bold"))
        for line in report["suggestion"]["reasoning"]:
            console.print(f"  - {line}")


def _plot_diagnostics(loaded: list, out: Path) -> None:
    """diagnostics.png: the block RMS / relative update / cosine each run logged in training."""
    from layersync.probe import diagnostics_curves

    runs = {Path(r.run_dir).name: diagnostics_curves(r.run_dir) for r in loaded}
    runs = {k: v for k, v in runs.items() if any(v.values())}
    if not runs:
        return
    try:
        from layersync.plots import plot_diagnostics

        console.print(f"wrote {plot_diagnostics(runs, out / 'diagnostics.png')}")
    except ImportError as e:
        err.print(Text("no diagnostics PNG: ", style="yellow") + Text(str(e)))
