"""The ``layersync`` command line (typer + rich), one module per command group:

- ``train``  (train.py)       train / resume / --dry-run plan
- ``sample``, ``eval``  (sample.py)
- ``plugins``, ``config show|validate``  (config.py)
- ``bench step|sample|convergence``  (bench.py)
- ``probe``  (probe.py)

Shared pieces (the error handler, consoles, option types, model loading) are in common.py.
Heavy imports (torch, plugins) happen inside the commands, so ``layersync --help`` stays fast.
``layersync <modality> ...`` runs a plugin's own commands (``Modality.commands``).
"""

from __future__ import annotations

import sys

from layersync.cli import bench, config, probe, sample, train  # noqa: F401  (registers commands)
from layersync.cli.common import _debug, app, fail, load_plugin, report

__all__ = ["app", "main"]


def main(argv: list[str] | None = None) -> None:
    """Entry point. ``layersync <modality> ...`` runs that plugin's own commands, if any."""
    argv = sys.argv[1:] if argv is None else argv
    head = next((a for a in argv if not a.startswith("-")), None)
    if head is not None and head not in _core_commands():
        options = argv[: argv.index(head)]
        if "--debug" in options:
            _debug["on"] = True
        try:
            from layersync.registry import installed

            if head in installed():
                sub = load_plugin(head).commands()
                if sub is None:
                    fail(f"modality {head!r} has no commands of its own")
                sub(args=argv[argv.index(head) + 1 :], prog_name=f"layersync {head}")
                return
        except Exception as e:  # the same one-line errors as the core commands
            raise SystemExit(report(e)) from None
    app(args=argv, prog_name="layersync")


def _core_commands() -> set[str]:
    names = {c.name or c.callback.__name__ for c in app.registered_commands}  # type: ignore[union-attr]
    return names | {g.name for g in app.registered_groups if g.name}
