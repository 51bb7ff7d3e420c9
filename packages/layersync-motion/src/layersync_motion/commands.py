"""Motion-only commands: ``layersync motion train-evaluator``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from layersync.cli.common import plugin_app

app = plugin_app("Motion modality commands.")


@app.command("train-evaluator")
def train_evaluator_cmd(
    overrides: Annotated[
        list[str] | None, typer.Argument(help="key=value settings (data.path=..., metric.*)")
    ] = None,
    preset: Annotated[
        str | None, typer.Option(help="preset whose data/metric sections to use")
    ] = None,
    config: Annotated[Path | None, typer.Option(help="TOML run config")] = None,
    retrain: Annotated[bool, typer.Option(help="train again even if cached")] = False,
) -> None:
    """Train (once per data config) the evaluator that `metric.evaluator=trained` uses."""
    from layersync.config import resolve

    from .evaluation import evaluator_key, trained_evaluator
    from .plugin import plugin

    cfg = resolve(plugin, file=config, preset=preset, overrides=overrides or [])
    typer.echo(f"evaluator for {evaluator_key(cfg)}")
    trained_evaluator(
        cfg, log=lambda step, loss: typer.echo(f"step {step}: loss {loss:.4f}"), retrain=retrain
    )
    typer.echo("done (cached)")
