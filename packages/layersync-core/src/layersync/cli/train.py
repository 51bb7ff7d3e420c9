"""``layersync train``: one run (or its resume), or its plan with ``--dry-run``."""

from __future__ import annotations

import os
from typing import Annotated

import typer
from rich.table import Table

from layersync.cli.common import (
    ConfigOpt,
    ModalityOpt,
    Overrides,
    PresetOpt,
    app,
    console,
    err,
    resolve_config,
)


@app.command()
def train(
    modality: ModalityOpt = None,
    config: ConfigOpt = None,
    preset: PresetOpt = None,
    resume: Annotated[
        str | None, typer.Option(help="'latest' (this run's last checkpoint) or a path")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing run directory")] = False,
    dry_run: Annotated[bool, typer.Option(help="print the plan and exit")] = False,
    overrides: Overrides = None,
) -> None:
    """Train a backbone with LayerSync (use torchrun for several processes)."""
    from layersync import rundir
    from layersync.config import resolve

    plugin, cfg = resolve_config(modality, config, preset, overrides)  # before torch: fast hints
    saved = rundir.run_dir_of(cfg) / rundir.CONFIG
    if resume and config is None and saved.is_file():
        # continue with the run's own config (+ any overrides given now)
        cfg = resolve(plugin, file=saved, preset=preset, overrides=overrides or [])
    from layersync.train import train as run_training
    from layersync.train.plan import plan

    if dry_run:
        table = Table(
            title=f"layersync train plan: {plugin.name} / {cfg.preset}", show_header=False
        )
        for key, value in plan(cfg, plugin):
            table.add_row(key, value)
        console.print(table)
        return
    run_dir = run_training(cfg, plugin, resume=resume, overwrite=overwrite)
    if os.environ.get("RANK", "0") == "0":
        err.print(f"run directory: {run_dir}")
