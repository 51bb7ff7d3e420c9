"""Rank-0 observability: JSONL metrics, optional TensorBoard, a rich progress bar."""

from __future__ import annotations

import json
import math
import time
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
    ) -> None:
        self.enabled = enabled
        self.console = Console(stderr=True)
        if enabled:
            _truncate_after(run_dir / "metrics.jsonl", start_step)
        self._jsonl = (run_dir / "metrics.jsonl").open("a") if enabled else None
        self._tb = _tensorboard(run_dir) if (enabled and tensorboard) else None
        self._bar: Progress | None = None
        if enabled and progress:
            self._bar = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[status]}"),
                TextColumn("{task.fields[rate]}"),
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
        if self._tb is not None:
            for key, value in metrics.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self._tb.add_scalar(f"{kind}/{key}", value, step)
        if self._bar is not None and kind == "train":
            status = _status_line(metrics)
            rate = f"{metrics['it_per_s']:.2f} it/s" if "it_per_s" in metrics else ""
            self._bar.update(self._task, completed=step, status=status, rate=rate)

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
        path.write_text("".join(kept))


def _status_line(metrics: dict[str, Any]) -> str:
    # the diffusion loss is the number to watch (the total includes the negative LayerSync term)
    parts = [f"diffusion {metrics['diffusion']:.4f}"] if "diffusion" in metrics else []
    if "layersync" in metrics:
        parts.append(f"reg {metrics['layersync']:.4f}")
    parts += [f"cos[{k[4:]}] {v:.3f}" for k, v in metrics.items() if k.startswith("cos/")]
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
