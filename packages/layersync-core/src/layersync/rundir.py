"""The run-directory layout, in one place (train, sample, eval, probe and bench use it)::

runs/<name>/
  config.toml          the resolved run config
  env.json             versions, device, world size
  data.json            what the plugin keeps of its data (class names, tag vocabulary), if any
  metrics.jsonl        one JSON line per log interval (kind: train | eval)
  checkpoints/<step>/  model/ema safetensors, train_state.pt, rng.pt; `last` names the newest
  samples/             periodic EMA grids (<step>.png ...) and `layersync sample` outputs
  eval/<step>/         metrics.json, backends.json (matmul precision, determinism) and what
                       the plugin's metric writes; metrics.<k>.json: earlier results that a
                       later `layersync eval` under other settings did not reproduce
  probe/               `layersync probe` reports
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

from layersync.fileio import atomic_write

CONFIG = "config.toml"
ENV = "env.json"
DATA = "data.json"
METRICS = "metrics.jsonl"
BACKENDS = "backends.json"
CHECKPOINTS = "checkpoints"
SAMPLES = "samples"
EVAL = "eval"
PROBE = "probe"


class RunDirExistsError(FileExistsError):
    """A new run would write into a run directory that already has content."""


def run_dir_of(cfg: Any) -> Path:
    """``run.out_dir / run.name`` (default name: ``<modality>-<preset>``)."""
    name = cfg.run.name or f"{cfg.modality}-{cfg.preset or 'custom'}"
    return Path(cfg.run.out_dir) / name


def run_of_checkpoint(checkpoint: Path) -> Path:
    """The run directory holding ``runs/<name>/checkpoints/<step>``."""
    return checkpoint.parent.parent


def step_name(step: int) -> str:
    """How a step names checkpoints, sample grids and eval folders: ``0001000``."""
    return f"{step:07d}"


def eval_dir(run_dir: Path, name: str | int) -> Path:
    return run_dir / EVAL / (step_name(name) if isinstance(name, int) else name)


def samples_dir(run_dir: Path) -> Path:
    return run_dir / SAMPLES


def check_free(run_dir: Path) -> None:
    """A new run may not write into a run directory that has content."""
    if run_dir.is_dir() and any(run_dir.iterdir()):
        raise RunDirExistsError(
            f"run directory {run_dir} already exists: pass --resume latest to continue it, "
            "--overwrite to replace it, or choose another run.name"
        )


def prepare(run_dir: Path, *, resume: bool, overwrite: bool) -> None:
    """Create the run directory (``overwrite`` replaces an existing one; ``resume`` keeps it)."""
    if not resume:
        if not overwrite:
            check_free(run_dir)
        elif run_dir.exists():
            shutil.rmtree(run_dir)
    for sub in (CHECKPOINTS, SAMPLES, EVAL):
        (run_dir / sub).mkdir(parents=True, exist_ok=True)


def write_config(run_dir: Path, cfg: Any) -> Path:
    from layersync.config import to_toml

    return atomic_write(run_dir / CONFIG, to_toml(cfg))


def write_json(path: Path, data: Any) -> Path:
    """Pretty JSON, written atomically (env.json, eval metrics.json, reports)."""
    return atomic_write(path, json.dumps(data, indent=2) + "\n")


def _same(a: Any, b: Any) -> bool:
    numbers = (int, float)
    if isinstance(a, numbers) and isinstance(b, numbers):
        return math.isclose(a, b, rel_tol=1e-6)
    return a == b


def set_aside(path: Path, new: dict[str, Any]) -> Path | None:
    """Before ``path`` (a metrics.json) is rewritten with ``new``: move a previous file that holds
    other keys or other values (relative 1e-6) to ``<stem>.<k>.json``, the first free ``k``, so
    an evaluation under other settings keeps the earlier result. Returns where it went."""
    if not path.is_file():
        return None
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        old = None
    same_keys = isinstance(old, dict) and old.keys() == new.keys()
    if same_keys and all(_same(old[k], new[k]) for k in new):
        return None
    k = 1
    while (kept := path.with_name(f"{path.stem}.{k}{path.suffix}")).exists():
        k += 1
    path.rename(kept)
    return kept
