"""Rank-0 observability: JSONL metrics, optional TensorBoard and Weights & Biases, a rich
progress bar. Every message is printed as plain text (no rich markup: ``cos[2<-4]`` stays)."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from layersync.fileio import atomic_write


class MetricsLogger:
    """Writes one JSON object per logged step to ``metrics.jsonl`` (appending on resume).

    On resume, records past ``start_step`` (logged after the checkpoint by a run that was then
    killed) are dropped first, so every step appears once.
    """

    def __init__(
        self,
        run_dir: Path,
        total_steps: int,
        start_step: int = 0,
        tensorboard: bool = False,
        progress: bool = True,
        enabled: bool = True,
        wandb: WandbSettings | None = None,
    ) -> None:
        self.enabled = enabled
        self.console = Console(stderr=True, markup=False, highlight=False)
        if enabled:
            _truncate_after(run_dir / "metrics.jsonl", start_step)
        self._jsonl = (run_dir / "metrics.jsonl").open("a") if enabled else None
        self._tb = _tensorboard(run_dir) if (enabled and tensorboard) else None
        self._wandb = _wandb_run(run_dir, wandb) if (enabled and wandb is not None) else None
        self._bar: Progress | None = None
        if enabled and progress:
            self._bar = Progress(
                TextColumn("train", style="bold", markup=False),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[status]}", markup=False),
                TextColumn("{task.fields[rate]}", markup=False),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=self.console,
                transient=False,
            )
            self._task = self._bar.add_task(
                "train", total=total_steps, completed=start_step, status="", rate=""
            )
            self._bar.start()

    def log(self, step: int, metrics: dict[str, float], kind: str = "train") -> None:
        if not self.enabled:
            return
        record = {"step": step, "kind": kind, "time": round(time.time(), 3)}
        record.update({k: _clean(v) for k, v in metrics.items()})
        assert self._jsonl is not None
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        finite = {
            k: v for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)
        }
        if self._tb is not None:
            for key, value in finite.items():
                self._tb.add_scalar(f"{kind}/{key}", value, step)
        if self._wandb is not None:
            self._wandb.log({f"{kind}/{k}": v for k, v in finite.items()}, step=step)
        if self._bar is not None and kind == "train":
            status = _status_line(metrics)
            rate = f"{metrics['it_per_s']:.2f} it/s" if "it_per_s" in metrics else ""
            self._bar.update(self._task, completed=step, status=status, rate=rate)

    def log_images(self, step: int, paths: list[Path], kind: str = "samples") -> None:
        """Sample grids (PNG) to W&B (JSONL/TensorBoard keep only numbers)."""
        if self._wandb is None:
            return
        import wandb

        images = [wandb.Image(str(p), caption=p.name) for p in paths if p.suffix == ".png"]
        if images:
            self._wandb.log({kind: images}, step=step)

    def advance(self, step: int) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=step)

    def print(self, message: str) -> None:
        if self.enabled:
            self.console.print(message)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


def _truncate_after(path: Path, step: int) -> None:
    """Keep the records up to ``step`` (and drop a line torn by a crash mid-write)."""
    if not path.is_file():
        return
    lines = path.read_text().splitlines(keepends=True)
    kept = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if line.endswith("\n") and record.get("step", 0) <= step:
            kept.append(line)
    if len(kept) < len(lines):
        atomic_write(path, "".join(kept))


def _status_line(metrics: dict[str, Any]) -> str:
    # the diffusion loss is the number to watch (the total includes the negative LayerSync term)
    parts = [f"diffusion {metrics['diffusion']:.4f}"] if "diffusion" in metrics else []
    if "layersync" in metrics:
        parts.append(f"reg {metrics['layersync']:.4f}")
    parts += [f"cos[{k[4:]}] {v:.3f}" for k, v in metrics.items() if k.startswith("cos/")]
    # the block diagnostics: update size between the pair's blocks, residual RMS of each block
    parts += [f"rel[{k[4:]}] {v:.3f}" for k, v in metrics.items() if k.startswith("rel/")]
    parts += [f"rms[{k[4:]}] {v:.2f}" for k, v in metrics.items() if k.startswith("rms/")]
    return "  ".join(parts)


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf
    return value


def _tensorboard(run_dir: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise RuntimeError(
            "log.tensorboard = true needs TensorBoard: pip install 'layersync-core[tensorboard]'"
        ) from e
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"))


# --------------------------------------------------------------------------------------------
# Weights & Biases (optional: the `wandb` extra; WANDB_MODE=offline works without network)
# --------------------------------------------------------------------------------------------

WANDB_ID = "wandb_id.txt"
"""The run directory remembers its W&B run id: a resumed run continues the same W&B run."""


@dataclass
class WandbSettings:
    project: str
    name: str
    config: dict[str, Any] = field(default_factory=dict)
    entity: str | None = None


def require_wandb() -> None:
    """Fail before anything is written when ``log.wandb = true`` but wandb is missing."""
    import importlib.util

    if importlib.util.find_spec("wandb") is None:
        raise ValueError(
            "log.wandb = true needs Weights & Biases: pip install 'layersync-core[wandb]'"
        )


def _wandb_run(run_dir: Path, settings: WandbSettings) -> Any:
    import secrets

    import wandb

    id_file = run_dir / WANDB_ID
    run_id = id_file.read_text().strip() if id_file.is_file() else secrets.token_hex(8)
    if not id_file.is_file():
        atomic_write(id_file, run_id + "\n")
    return wandb.init(
        project=settings.project,
        entity=settings.entity,
        name=settings.name,
        id=run_id,
        resume="allow",
        dir=str(run_dir),
        config=settings.config,
    )
