"""The ``layersync`` command line: help, plugin listing, config show/validate, error messages."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

COMMANDS = ("train", "sample", "eval", "plugins", "config")


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], env=env, capture_output=True, text=True, timeout=300
    )


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


# --------------------------------------------------------------------------------------------
# Help stays light
# --------------------------------------------------------------------------------------------

HELP_PROBE = """
import sys
from typer.testing import CliRunner
from layersync.cli import app
result = CliRunner().invoke(app, ["--help"])
print(result.output)
print("exit", result.exit_code)
heavy = ("torch", "numpy", "layersync_toy_image", "toy_sequence", "layersync.train")
print("heavy", [m for m in heavy if m in sys.modules])
"""


def test_help_lists_commands_without_importing_torch_or_plugins(toy_env: dict[str, str]) -> None:
    done = run(toy_env, "-c", HELP_PROBE)
    assert done.returncode == 0, done.stderr
    assert "exit 0" in done.stdout and "heavy []" in done.stdout
    assert all(f" {command} " in done.stdout for command in COMMANDS)

    # the real entry point, as the shell runs it: nothing heavy in the import log either
    done = run(toy_env, "-X", "importtime", "-m", "layersync", "--help")
    assert done.returncode == 0, done.stderr
    assert all(f" {command} " in done.stdout for command in COMMANDS)
    imported = {
        line.rsplit("|", 1)[-1].strip()
        for line in done.stderr.splitlines()
        if line.startswith("import time:")
    }
    assert "layersync.cli" in imported and "typer" in imported
    assert not {"torch", "numpy", "layersync_toy_image", "toy_sequence"} & imported


# --------------------------------------------------------------------------------------------
# Plugins
# --------------------------------------------------------------------------------------------


def test_plugins_lists_ok_and_broken(
    toy_env: dict[str, str], tmp_path: Path, write_plugin_dist: Callable[..., Path]
) -> None:
    write_plugin_dist(
        tmp_path,
        "layersync-broken",
        {"layersync.modalities": {"broken": "broken_plugin:plugin"}},
        {"broken_plugin.py": "raise ImportError('boom: needs the xyz library')\n"},
        version="0.3.0",
    )
    env = dict(toy_env, PYTHONPATH=os.pathsep.join([str(tmp_path), toy_env["PYTHONPATH"]]))
    done = run(env, "-m", "layersync", "plugins")
    assert done.returncode == 0, done.stderr
    rows = {
        line.split("│")[1].strip(): line
        for line in done.stdout.splitlines()
        if line.startswith("│") and line.split("│")[1].strip()
    }
    # (other installed plugins, e.g. layersync-image in the full test env, may be listed too)
    assert {"broken", "toy-image", "toy-sequence"} <= set(rows)
    for name, dist in (
        ("toy-image", "layersync-toy-image"),
        ("toy-sequence", "layersync-toy-sequence"),
    ):
        assert dist in rows[name] and "│ ok " in rows[name]
    assert "layersync-broken" in rows["broken"] and "0.3.0" in rows["broken"]
    assert "│ broken " in rows["broken"] and "ImportError: boom" in rows["broken"]


def test_unknown_modality_prints_the_install_hint(
    layersync_cli: Callable, toy_plugins: Path
) -> None:
    # (not 'audio': the in-repo audio plugin may be installed in the test environment)
    result = layersync_cli("train", "--modality", "nosuch")
    assert result.exit_code == 2
    (line,) = error_lines(result.stderr)
    assert line.startswith("error: unknown modality 'nosuch' (installed: ")
    assert "toy-image" in line and "toy-sequence" in line
    assert line.endswith("to add it: install a package providing the 'nosuch' modality")


# --------------------------------------------------------------------------------------------
# config show / validate
# --------------------------------------------------------------------------------------------


def test_config_show_then_validate(
    layersync_cli: Callable, toy_plugins: Path, tmp_path: Path
) -> None:
    shown = layersync_cli(
        *[
            "config",
            "show",
            "--modality",
            "toy-image",
            "--preset",
            "demo",
            "train.steps=7",
            "model.depth=3",
        ],
    )
    assert shown.exit_code == 0, shown.output
    data = tomllib.loads(shown.stdout)
    assert data["modality"] == "toy-image" and data["preset"] == "demo"
    assert data["train"]["steps"] == 7 and data["model"]["depth"] == 3
    assert data["train"]["lr"] == 1e-3 and data["checkpoint"]["every"] == 100  # the preset
    assert data["ema"]["decay"] == 0.9999  # a core default
    assert "pairs" not in data["layersync"]  # None (= plugin default) is omitted

    path = tmp_path / "run.toml"
    path.write_text(shown.stdout)
    ok = layersync_cli("config", "validate", str(path))
    assert ok.exit_code == 0, ok.output
    assert " ".join(ok.stdout.split()) == f"ok {path} (toy-image, preset demo, pairs 2<-3)"

    bad = layersync_cli("config", "validate", str(path), "train.steps=0")
    assert bad.exit_code == 2 and isinstance(bad.exception, SystemExit)
    assert error_lines(bad.stderr) == [
        "error: override: train.steps: Input should be greater than 0 (got 0)"
    ]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["config", "show", "-m", "toy-image", "train.stpes=3"],
            "error: override: train.stpes: unknown key (did you mean 'steps'?)",
        ),
        (
            ["config", "show", "-m", "toy-image", "--preset", "huge"],
            "error: unknown preset 'huge' for modality 'toy-image'; available: demo",
        ),
        (
            ["train", "-m", "toy-image", "data.fixed_noise=maybe"],
            "error: override: data.fixed_noise: Input should be a valid boolean, unable to "
            "interpret input (got 'maybe')",
        ),
        (
            ["config", "show"],
            "error: give --modality NAME or --config FILE (with a `modality = ...` line)",
        ),
    ],
    ids=["typo", "preset", "bool", "no-modality"],
)
def test_config_errors_are_one_line(
    layersync_cli: Callable, toy_plugins: Path, args: list[str], expected: str
) -> None:
    result = layersync_cli(*args)
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit)
    assert error_lines(result.stderr) == [expected]


def test_config_errors_have_no_traceback(toy_env: dict[str, str], tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('modality = "toy-image"\n\n[train]\nbatch_size = "big"\n')
    done = run(toy_env, "-m", "layersync", "config", "validate", str(path), "train.lr=fast")
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert error_lines(done.stderr) == [
        f"error: {path}: train.batch_size: Input should be a valid integer, unable to parse "
        "string as an integer (got 'big')",
        "override: train.lr: Input should be a valid number, unable to parse string as a "
        "number (got 'fast')",
    ]


def test_subcommand_help_and_usage_errors_are_clicks_not_ours(toy_env: dict[str, str]) -> None:
    """`layersync train --help` exits 0 with its usage (typer >= 0.2x raises its own Exit class,
    which the error handler once reported as an internal error with status 1)."""
    done = run(toy_env, "-m", "layersync", "train", "--help")
    assert done.returncode == 0, done.stderr
    assert "Usage: layersync train" in done.stdout and "error:" not in done.stderr
    done = run(toy_env, "-m", "layersync", "train", "--bogus")
    assert done.returncode == 2 and "No such option: --bogus" in done.stderr
    assert "internal error" not in done.stderr


def test_plugin_app_keeps_a_single_command_named_and_errors_to_one_line() -> None:
    """layersync.cli.common.plugin_app: `layersync <modality> <command>` keeps the command's
    name even when it is the only one, and its errors are the core's one `error:` line."""
    from typer.testing import CliRunner

    from layersync.cli.common import plugin_app

    group = plugin_app("Demo modality commands.")

    @group.command()
    def encode(path: str) -> None:
        raise FileNotFoundError(f"{path}: no such folder")

    done = CliRunner().invoke(group, ["encode", "clips/"])
    assert done.exit_code == 2
    assert [line for line in done.output.splitlines() if line] == ["error: clips/: no such folder"]
    assert "encode" in CliRunner().invoke(group, ["--help"]).output


def test_plugin_option_checks_are_one_line_naming_the_option() -> None:
    """choice / positive / non_negative / device_option: the plugins' encode commands check
    their options with these; each bad value is one `error:` line naming option and value."""
    import torch
    from typer.testing import CliRunner

    from layersync.cli.common import choice, device_option, non_negative, plugin_app, positive

    group = plugin_app("Demo modality commands.")
    seen: list[str] = []

    @group.command()
    def encode(
        batch_size: int = 4, num_workers: int = 0, dtype: str = "float16", device: str = "auto"
    ) -> None:
        positive(batch_size, "--batch-size")
        non_negative(num_workers, "--num-workers")
        choice(dtype, "--dtype", ("float16", "float32"))
        seen.append(device_option(device))

    def lines(*argv: str) -> list[str]:
        done = CliRunner().invoke(group, ["encode", *argv])
        return [line for line in done.output.splitlines() if line]

    assert lines() == [] and seen == ["cuda:0" if torch.cuda.is_available() else "cpu"]
    assert lines("--batch-size", "0") == ["error: --batch-size 0: must be a positive integer"]
    assert lines("--num-workers", "-1") == ["error: --num-workers -1: must be >= 0"]
    assert lines("--dtype", "int8") == ["error: --dtype 'int8': use one of float16, float32"]
    (bad,) = lines("--device", "gpu0")
    assert bad.startswith("error: --device 'gpu0': ")
    if not torch.cuda.is_available():
        assert lines("--device", "cuda") == ["error: --device 'cuda': no CUDA device is visible"]
