"""``layersync plugins`` and ``layersync config show|validate``."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.table import Table
from rich.text import Text

from layersync.cli.common import (
    ConfigOpt,
    ModalityOpt,
    Overrides,
    PresetOpt,
    app,
    console,
    resolve_config,
)

config_app = typer.Typer(help="Show or validate run configs.", no_args_is_help=True)
app.add_typer(config_app, name="config")


@app.command()
def plugins() -> None:
    """List installed modality plugins and whether they load."""
    from layersync.registry import installed, status

    found = installed()
    if not found:
        console.print("no modality plugin installed: pip install layersync-image (or -audio, ...)")
        return
    table = Table(title="LayerSync modality plugins")
    for column in ("name", "distribution", "version", "status"):
        table.add_column(column)
    for name, info in found.items():
        ok, message = status(name)
        shown = Text("ok ", style="green") if ok else Text("broken ", style="red")
        table.add_row(name, info.distribution, info.version, shown + Text(message))
    console.print(table)


@config_app.command("show")
def config_show(
    modality: ModalityOpt = None,
    config: ConfigOpt = None,
    preset: PresetOpt = None,
    overrides: Overrides = None,
) -> None:
    """Print the resolved config as TOML (notes on the LayerSync pair's provenance as TOML
    comments at the end)."""
    from layersync.config import to_toml
    from layersync.pairs import effective_layersync
    from layersync.train.plan import layersync_notes

    plugin, cfg = resolve_config(modality, config, preset, overrides)
    sys.stdout.write(to_toml(cfg))
    ls = cfg.layersync
    if not ls.enabled:
        return
    try:  # the depth needs the model; some configs build it only with their data present
        model = plugin.build_model(cfg)
        pairs, weight = effective_layersync(cfg, plugin, model, warn=False)
        spec, depth = ",".join(map(str, pairs)), len(plugin.block_names(cfg, model))
    except Exception:  # still say where the pair comes from; the depth check needs the model
        defaults = plugin.default_layersync(cfg)
        spec = ls.pairs if ls.pairs is not None else defaults.pairs
        weight = ls.weight if ls.weight is not None else defaults.weight
        depth = None
    for label, text in layersync_notes(cfg, plugin, spec, weight, depth):
        sys.stdout.write(f"# {label}: {text}\n")


@config_app.command("validate")
def config_validate(file: Path, overrides: Overrides = None) -> None:
    """Check a TOML run config, including its layer pairs against the model's depth."""
    from layersync.pairs import effective_layersync

    plugin, cfg = resolve_config(None, file, None, overrides)
    found = effective_layersync(cfg, plugin)
    pairs = "layersync off" if found is None else f"pairs {','.join(map(str, found[0]))}"
    console.print(
        Text("ok ", style="green") + Text(f"{file} ({cfg.modality}, preset {cfg.preset}, {pairs})")
    )
