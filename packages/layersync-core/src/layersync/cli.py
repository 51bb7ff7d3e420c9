"""The ``layersync`` command line (typer + rich).

Heavy imports (torch, plugins) happen inside the commands, so ``layersync --help`` stays fast.
Every user error is printed as one red line and exits with status 2.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from layersync.plugin import Modality

app = typer.Typer(
    name="layersync",
    help="LayerSync: self-aligning intermediate layers for diffusion and flow models.\n\n"
    "Plugins may add commands: `layersync <modality> --help` (e.g. `layersync image encode`).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Show or validate run configs.", no_args_is_help=True)
app.add_typer(config_app, name="config")
console = Console()
err = Console(stderr=True)

ModalityOpt = Annotated[str, typer.Option("--modality", "-m", help="installed modality plugin")]
ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="TOML run config")]
PresetOpt = Annotated[str | None, typer.Option("--preset", "-p", help="named preset")]
Overrides = Annotated[list[str] | None, typer.Argument(help="dotted overrides: train.steps=100")]


def fail(message: str) -> None:
    err.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def load_plugin(name: str) -> Modality:
    from layersync.registry import PluginError, load

    try:
        return load(name)
    except PluginError as e:
        fail(str(e))
        raise  # unreachable: fail() exits


def resolve_config(
    modality: str | None, config: Path | None, preset: str | None, overrides: list[str] | None
) -> tuple[Modality, object]:
    from layersync.config import ConfigError, read_toml, resolve

    try:
        if modality is None:
            if config is None:
                fail("give --modality NAME or --config FILE (with a `modality = ...` line)")
            modality = read_toml(config).get("modality")
            if not modality:
                fail(f"{config}: no `modality = ...` line; pass --modality")
        plugin = load_plugin(modality)
        return plugin, resolve(plugin, file=config, preset=preset, overrides=overrides or [])
    except ConfigError as e:
        fail(str(e))
        raise


# --------------------------------------------------------------------------------------------
# plugins, config
# --------------------------------------------------------------------------------------------


@app.command()
def plugins() -> None:
    """List installed modality plugins and whether they load."""
    from layersync.registry import PluginError, installed, status

    try:
        found = installed()
    except PluginError as e:
        fail(str(e))
    table = Table(title="LayerSync modality plugins")
    for column in ("name", "distribution", "version", "status"):
        table.add_column(column)
    for name, info in found.items():
        ok, message = status(name)
        shown = f"[green]ok[/green] {message}" if ok else f"[red]broken[/red] {message}"
        table.add_row(name, info.distribution, info.version, shown)
    if not found:
        console.print("no modality plugin installed: pip install layersync-image (or -audio, ...)")
        return
    console.print(table)


@config_app.command("show")
def config_show(
    modality: Annotated[str | None, typer.Option("--modality", "-m")] = None,
    config: ConfigOpt = None,
    preset: PresetOpt = None,
    overrides: Overrides = None,
) -> None:
    """Print the resolved config as TOML."""
    from layersync.config import to_toml

    _, cfg = resolve_config(modality, config, preset, overrides)
    sys.stdout.write(to_toml(cfg))  # type: ignore[arg-type]


@config_app.command("validate")
def config_validate(file: Path, overrides: Overrides = None) -> None:
    """Check a TOML run config; prints the first problems, one per line."""
    _, cfg = resolve_config(None, file, None, overrides)
    console.print(f"[green]ok[/green] {file} ({cfg.modality}, preset {cfg.preset})")  # type: ignore[attr-defined]


# --------------------------------------------------------------------------------------------
# train
# --------------------------------------------------------------------------------------------


@app.command()
def train(
    modality: Annotated[str | None, typer.Option("--modality", "-m")] = None,
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
    from layersync.config import ConfigError, resolve
    from layersync.train.loop import NonFiniteLossError, RunDirExistsError, run_dir_of

    plugin, cfg = resolve_config(modality, config, preset, overrides)
    saved = run_dir_of(cfg) / "config.toml"
    if resume and config is None and saved.is_file():
        try:  # continue with the run's own config (+ any overrides given now)
            cfg = resolve(plugin, file=saved, preset=preset, overrides=overrides or [])
        except ConfigError as e:
            fail(str(e))
    if dry_run:
        print_plan(plugin, cfg)
        return
    from layersync.train.loop import train as run_training

    try:
        run_dir = run_training(cfg, plugin, resume=resume, overwrite=overwrite)
    except (RunDirExistsError, NonFiniteLossError, FileNotFoundError, ValueError) as e:
        fail(str(e))
    err.print(f"run directory: {run_dir}")


def print_plan(plugin: Modality, cfg: object) -> None:
    """What ``train`` would do: model size, taps, pairs, λ, batch, steps, devices."""
    import torch

    from layersync.train.distributed import resolve_device
    from layersync.train.loop import autocast_dtype, build_layersync, run_dir_of

    c = cfg  # type: ignore[assignment]
    model = plugin.build_model(c)
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    blocks = plugin.block_names(c, model)
    sync = build_layersync(c, plugin, model)
    import os

    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(c.train.device)
    amp = autocast_dtype(c.train.precision, device)
    table = Table(title=f"layersync train plan: {plugin.name} / {c.preset}", show_header=False)
    rows = [
        ("run directory", str(run_dir_of(c))),
        (
            "model",
            f"{type(model).__name__}: {params / 1e6:.2f}M params "
            f"({trainable / 1e6:.2f}M trainable), {len(blocks)} blocks",
        ),
        (
            "layersync",
            "disabled (vanilla baseline)"
            if sync is None
            else f"pairs {', '.join(map(str, sync.pairs))}  λ {sync.schedule.weight} "
            f"({sync.schedule.kind})",
        ),
        ("taps", "-" if sync is None else ", ".join(sync.taps.names)),
        (
            "batch",
            f"global {c.train.batch_size} = {world} rank(s) x {c.train.grad_accum} accum x "
            f"{c.train.batch_size // max(1, world * c.train.grad_accum)} micro",
        ),
        (
            "steps",
            f"{c.train.steps} (checkpoint every {c.checkpoint.every}, "
            f"keep {c.checkpoint.keep_last})",
        ),
        (
            "optimizer",
            f"AdamW lr {c.train.lr} wd {c.train.weight_decay} "
            f"warmup {c.train.lr_warmup_steps} {c.train.lr_schedule}",
        ),
        (
            "device",
            f"{device} x {world}, precision {str(amp).replace('torch.', '') if amp else 'fp32'}"
            f", compile {c.train.compile}, {c.train.distributed if world > 1 else 'single'}",
        ),
        ("ema", f"decay {c.ema.decay}"),
        ("torch", torch.__version__),
    ]
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)


# --------------------------------------------------------------------------------------------
# sample, eval
# --------------------------------------------------------------------------------------------


def _load_model(
    target: Path | None,
    weights: Path | None,
    modality: str | None,
    config: Path | None,
    preset: str | None,
    overrides: list[str] | None,
    raw: bool = False,
) -> tuple[Modality, Any, Any, Path]:
    """(plugin, config, model in eval mode, output root) from a run/checkpoint directory, or
    from ``--modality``/``--preset`` plus external ``--weights`` (e.g. an official .pt)."""
    from layersync.config import ConfigError, read_toml, resolve
    from layersync.train.checkpoint import load_weights, resolve_checkpoint

    if target is not None and weights is not None and "=" in target.name:
        overrides = [str(target), *(overrides or [])]  # `--weights F key=value ...`
        target = None
    if (target is None) == (weights is None):
        fail("give a run/checkpoint directory, or --weights FILE with --modality/--preset")
    if weights is not None:
        if not weights.is_file():
            fail(f"{weights}: weights file not found")
        plugin, cfg = resolve_config(modality, config, preset, overrides)
        model = plugin.build_model(cfg)
        try:
            plugin.load_weights(model, weights)
        except (ValueError, RuntimeError, KeyError) as e:
            fail(str(e) if str(weights) in str(e) else f"{weights}: {e}")
        return plugin, cfg, model.eval(), Path("samples") / weights.stem
    try:
        ckpt = resolve_checkpoint(target)
    except FileNotFoundError as e:
        fail(str(e))
    run_dir = ckpt.parent.parent
    cfg_file = run_dir / "config.toml"
    if not cfg_file.is_file():
        fail(f"{cfg_file}: missing; sample/eval need the run's config")
    plugin = load_plugin(read_toml(cfg_file)["modality"])
    try:
        cfg = resolve(plugin, file=cfg_file, overrides=overrides or [])
    except ConfigError as e:
        fail(str(e))
    model = plugin.build_model(cfg)
    model.load_state_dict(load_weights(ckpt, "model" if raw else "ema"))
    return plugin, cfg, model.eval(), run_dir / "samples" / f"{ckpt.name}{'-raw' if raw else ''}"


TargetArg = Annotated[Path | None, typer.Argument(help="run directory or checkpoint directory")]
WeightsOpt = Annotated[
    Path | None, typer.Option(help="external weights (.pt/.safetensors) instead of a run")
]
OptModality = Annotated[str | None, typer.Option("--modality", "-m")]


@app.command()
def sample(
    target: TargetArg = None,
    n: Annotated[int, typer.Option("--n", help="number of samples")] = 16,
    out: Annotated[Path | None, typer.Option(help="output directory")] = None,
    seed: int = 0,
    raw: Annotated[bool, typer.Option("--raw", help="use raw weights, not EMA")] = False,
    weights: WeightsOpt = None,
    modality: OptModality = None,
    config: ConfigOpt = None,
    preset: PresetOpt = None,
    overrides: Overrides = None,
) -> None:
    """Generate samples (EMA weights of a run, or external --weights)."""
    import torch

    from layersync.train.distributed import resolve_device

    plugin, cfg, model, root = _load_model(
        target, weights, modality, config, preset, overrides, raw
    )
    device = resolve_device(cfg.train.device)
    model.to(device)
    gen = torch.Generator(device).manual_seed(seed)
    out = out or root.with_name(f"{root.name}-seed{seed}")
    out.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        cond = plugin.conditions(cfg, n, gen)
        samples = plugin.sample(model, cfg, n, cond, gen)
    paths = plugin.write_samples(samples, out, cfg)
    console.print(f"wrote {len(paths)} file(s) to {out}")


@app.command("eval")
def evaluate(
    target: TargetArg = None,
    seed: int = 0,
    weights: WeightsOpt = None,
    modality: OptModality = None,
    config: ConfigOpt = None,
    preset: PresetOpt = None,
    overrides: Overrides = None,
) -> None:
    """Compute the modality's metric(s) (EMA weights of a run, or external --weights)."""
    import json

    import torch

    from layersync.train.distributed import resolve_device

    plugin, cfg, model, root = _load_model(target, weights, modality, config, preset, overrides)
    device = resolve_device(cfg.train.device)
    model.to(device)
    out_dir = root.parent.parent / "eval" / root.name if target else Path("eval") / root.name
    out_dir.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        metrics = plugin.evaluate(model, cfg, out_dir, torch.Generator(device).manual_seed(seed))
    if not metrics:
        fail(f"modality {plugin.name!r} computed no metric (is its metric switched off?)")
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    table = Table(title=f"{plugin.name} metrics ({out_dir})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        table.add_row(key, f"{value:.4f}")
    console.print(table)


def main(argv: list[str] | None = None) -> None:
    """Entry point. ``layersync <modality> ...`` runs that plugin's own commands, if any."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and not argv[0].startswith("-") and argv[0] not in _core_commands():
        from layersync.registry import installed

        if argv[0] in installed():
            sub = load_plugin(argv[0]).commands()
            if sub is None:
                fail(f"modality {argv[0]!r} has no commands of its own")
            sub(args=argv[1:], prog_name=f"layersync {argv[0]}")
            return
    app(args=argv, prog_name="layersync")


def _core_commands() -> set[str]:
    names = {c.name or c.callback.__name__ for c in app.registered_commands}  # type: ignore[union-attr]
    return names | {g.name for g in app.registered_groups if g.name}


if __name__ == "__main__":
    main()
