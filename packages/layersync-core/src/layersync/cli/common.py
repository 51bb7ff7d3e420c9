"""What every command shares: the app, consoles without markup, option types, the one error
handler, plugin/config/model loading.

Every user-facing error goes through ``ErrorHandlingGroup``: one line ``error: ...`` on stderr,
exit status 2 for usage, config, data and checkpoint errors (1 for anything unexpected), and the
traceback only with ``layersync --debug ...`` or ``LAYERSYNC_DEBUG=1``. Text from users (paths,
keys, values, plugin messages) is never parsed as rich markup.
"""

from __future__ import annotations

import os
import traceback
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import click
import typer
from rich.console import Console
from rich.text import Text
from typer.core import TyperGroup

if TYPE_CHECKING:
    from layersync.plugin import Modality

# markup=False: `[x_embedder.proj.weight, ...]` in a message is text, not a style tag
console = Console(soft_wrap=True, markup=False, highlight=False)
err = Console(stderr=True, soft_wrap=True, markup=False, highlight=False)
_debug = {"on": False}


class UsageError(ValueError):
    """A bad command-line argument, phrased for the user."""


def fail(message: str) -> NoReturn:
    """Stop the command with one ``error:`` line (exit status 2)."""
    raise UsageError(message)


def debugging() -> bool:
    return _debug["on"] or os.environ.get("LAYERSYNC_DEBUG", "") not in ("", "0")


# by name: no torch import here
_RUN_ERRORS = {"NonFiniteLossError", "NonFiniteWeightsError", "PluginError", "RunStopped"}


def _user_error(error: BaseException) -> bool:
    """Errors caused by input (usage, config, data, files, checkpoints, non-finite runs)."""
    if isinstance(error, (ValueError, OSError, NotImplementedError)):
        return True
    return any(cls.__name__ in _RUN_ERRORS for cls in type(error).__mro__)


def report(error: BaseException) -> int:
    """Print ``error`` as ``error: ...`` (traceback first when debugging); the exit status."""
    if debugging():
        err.print("".join(traceback.format_exception(error)).rstrip())
    user = _user_error(error)
    message = str(error).strip() or type(error).__name__
    if not user:
        message = f"{type(error).__name__}: {message}"
        if not debugging():
            message += " (internal error: rerun with --debug or LAYERSYNC_DEBUG=1 for details)"
    if isinstance(error, KeyError):  # str(KeyError('x')) is "'x'"
        message = f"missing key {message}"
    first, *more = message.splitlines() or [""]  # several config problems: one line each
    err.print(Text("error: ", style="red") + Text(first))
    for line in more:
        err.print(Text(line))
    return 2 if user else 1


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    err.print(Text("warning: ", style="yellow") + Text(str(message)))


def _click_control_flow() -> tuple[type[BaseException], ...]:
    """Exceptions click/typer use for --help, exit codes and usage errors: never reported as
    ours. Newer typer vendors its own click (``typer._click``) with its own classes."""
    found: list[type[BaseException]] = [
        click.exceptions.Exit,
        click.ClickException,
        click.Abort,
        typer.Exit,
        typer.Abort,
    ]
    try:
        from typer._click.exceptions import ClickException as TyperClickException
    except ImportError:  # typer built on the click package itself
        pass
    else:
        found.append(TyperClickException)
    return tuple(found)


_CONTROL_FLOW = _click_control_flow()


class ErrorHandlingGroup(TyperGroup):
    """The root command group: runs every (sub)command inside the one error handler."""

    def invoke(self, ctx: click.Context) -> Any:
        previous = warnings.showwarning
        warnings.showwarning = _show_warning  # one line per warning, no source echo
        try:
            return super().invoke(ctx)
        except _CONTROL_FLOW:
            raise
        except Exception as e:
            try:
                code = report(e)
            except Exception:  # the handler must never hide the original error
                traceback.print_exception(e)
                code = 1
            raise typer.Exit(code) from None
        finally:
            warnings.showwarning = previous


def plugin_app(help: str) -> typer.Typer:
    """A plugin's command group, ``layersync <modality> <command>`` (``Modality.commands``),
    run inside the core error handler: one ``error:`` line, exit 2, traceback with --debug. It
    stays a group with a single command, so the command keeps its name."""
    group = typer.Typer(
        cls=ErrorHandlingGroup,
        help=help,
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )
    group.callback()(lambda: None)
    return group


app = typer.Typer(
    cls=ErrorHandlingGroup,
    name="layersync",
    help="LayerSync: self-aligning intermediate layers for diffusion and flow models.\n\n"
    "Plugins may add commands: `layersync <modality> --help` (e.g. `layersync image encode`).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


@app.callback()
def _root(
    debug: Annotated[
        bool, typer.Option("--debug", help="show tracebacks (also LAYERSYNC_DEBUG=1)")
    ] = False,
) -> None:
    _debug["on"] = debug


# --------------------------------------------------------------------------------------------
# Option types
# --------------------------------------------------------------------------------------------

ModalityOpt = Annotated[
    str | None, typer.Option("--modality", "-m", help="installed modality plugin")
]
ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="TOML run config")]
PresetOpt = Annotated[str | None, typer.Option("--preset", "-p", help="named preset")]
Overrides = Annotated[list[str] | None, typer.Argument(help="dotted overrides: train.steps=100")]
TargetArg = Annotated[Path | None, typer.Argument(help="run directory or checkpoint directory")]
WeightsOpt = Annotated[
    Path | None, typer.Option(help="external weights (.pt/.safetensors) instead of a run")
]
JsonOpt = Annotated[Path | None, typer.Option("--json", help="also write the results as JSON")]


# --------------------------------------------------------------------------------------------
# Plugins, configs, models
# --------------------------------------------------------------------------------------------


def load_plugin(name: str) -> Modality:
    from layersync.registry import load

    return load(name)


def resolve_config(
    modality: str | None, config: Path | None, preset: str | None, overrides: list[str] | None
) -> tuple[Modality, Any]:
    from layersync.config import read_toml, resolve

    if modality is None:
        if config is None:
            fail("give --modality NAME or --config FILE (with a `modality = ...` line)")
        modality = read_toml(config).get("modality")
        if not modality:
            fail(f"{config}: no `modality = ...` line; pass --modality")
    plugin = load_plugin(modality)
    return plugin, resolve(plugin, file=config, preset=preset, overrides=overrides or [])


def load_model(
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
    from layersync import rundir
    from layersync.backends import configure_backends
    from layersync.config import read_toml, resolve
    from layersync.train.checkpoint import (
        check_fits,
        check_weights_file,
        load_weights,
        resolve_checkpoint,
    )

    if target is not None and weights is not None and "=" in target.name:
        overrides = [str(target), *(overrides or [])]  # `--weights F key=value ...`
        target = None
    if (target is None) == (weights is None):
        fail("give a run/checkpoint directory, or --weights FILE with --modality/--preset")
    if weights is not None:
        check_weights_file(weights)
        plugin, cfg = resolve_config(modality, config, preset, overrides)
        configure_backends(cfg)
        model = plugin.build_model(cfg)
        try:
            plugin.load_weights(model, weights)
        except Exception as e:  # any failure here is about that file (format, keys, shapes)
            text = " ".join(str(e).split()) or type(e).__name__
            raise ValueError(text if str(weights) in text else f"{weights}: {text}") from e
        return plugin, cfg, model.eval(), Path("samples") / weights.stem
    ckpt = resolve_checkpoint(target)
    run_dir = rundir.run_of_checkpoint(ckpt)
    cfg_file = run_dir / rundir.CONFIG
    if not cfg_file.is_file():
        fail(f"{cfg_file}: missing; sample/eval need the run's config")
    plugin = load_plugin(read_toml(cfg_file)["modality"])
    cfg = resolve(plugin, file=cfg_file, overrides=overrides or [])
    configure_backends(cfg)  # the run's matmul precision: the same numbers as its own eval
    model = plugin.build_model(cfg)
    which = "model" if raw else "ema"
    state = load_weights(ckpt, which)
    check_fits(state, model, ckpt / f"{which}.safetensors")
    model.load_state_dict(state)
    return plugin, cfg, model.eval(), rundir.samples_dir(run_dir) / f"{ckpt.name}{'-raw' * raw}"


def positive(value: int, option: str) -> int:
    if value <= 0:
        fail(f"{option} {value}: must be a positive integer")
    return value


def non_negative(value: int, option: str) -> int:
    if value < 0:
        fail(f"{option} {value}: must be >= 0")
    return value


def choice(value: str, option: str, choices: tuple[str, ...]) -> str:
    """``value`` if it is one of ``choices``; else one line naming the option and the choices."""
    if value not in choices:
        fail(f"{option} {value!r}: use one of {', '.join(choices)}")
    return value


def device_option(name: str) -> str:
    """A command's ``--device`` resolved as training resolves it (``auto``: CUDA if visible)."""
    from layersync.distributed import resolve_device

    try:
        return str(resolve_device(name))
    except RuntimeError as e:  # cuda asked for, none visible; torch's bad-name error
        fail(f"--device {name!r}: " + ("no CUDA device is visible" if name == "cuda" else str(e)))
