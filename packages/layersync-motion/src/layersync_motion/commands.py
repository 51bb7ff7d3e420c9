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


@app.command()
def generate(
    target: Annotated[Path, typer.Argument(help="run or checkpoint directory")],
    text: Annotated[list[str], typer.Option("--text", "-t", help="a caption; repeat for several")],
    seconds: Annotated[
        float | None, typer.Option(help="motion length (default: data.max_len frames)")
    ] = None,
    repeats: Annotated[int, typer.Option(help="generations per caption")] = 3,
    seed: int = 0,
    out: Annotated[Path | None, typer.Option(help="output directory")] = None,
    raw: Annotated[bool, typer.Option("--raw", help="use raw weights, not EMA")] = False,
    overrides: Annotated[
        list[str] | None, typer.Argument(help="key=value sampler settings: sampler.cfg_scale=4")
    ] = None,
) -> None:
    """Motions from your own captions (as MDM's --text_prompt): a stick-figure GIF (the first
    16, four per row, each caption --repeats times in a row), features, joints, captions."""
    import torch

    from layersync.cli.common import console, fail, load_model, positive
    from layersync.distributed import resolve_device

    from .plugin import caption_conditions, motion_frames

    positive(repeats, "--repeats")
    if any(not t.strip() for t in text):
        fail("--text: a caption is empty")
    plugin, cfg, model, root = load_model(target, None, None, None, None, overrides, raw)
    if plugin.name != "motion":
        fail(f"{target}: a {plugin.name} run, not a motion run")
    try:
        frames = motion_frames(cfg, seconds, key="--seconds")
    except ValueError as e:
        fail(str(e))
    model.to(resolve_device(cfg.train.device))
    captions = [t for t in text for _ in range(repeats)]
    condition = caption_conditions(captions, len(captions), frames)
    generator = torch.Generator().manual_seed(seed)
    samples = plugin.sample(model, cfg, len(captions), condition, generator)
    out = out or root.with_name(f"{root.name}-text-seed{seed}")
    paths = plugin.write_samples(samples, out, cfg, prefix="generated")
    console.print(f"wrote {', '.join(str(p) for p in paths)}")
