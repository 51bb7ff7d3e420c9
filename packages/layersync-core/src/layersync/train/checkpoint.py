"""Checkpoints: safetensors weights, a training-state file, atomic writes, rotation, resume.

Layout of one checkpoint (``runs/<name>/checkpoints/0001000/``)::

    model.safetensors    raw weights (full, unsharded), the user's module names
    ema.safetensors      EMA weights (what sampling and evaluation use)
    train_state.pt       optimizer, LR scheduler, grad scaler, step, epoch, data position
    rng.pt               RNG states of every rank (python, numpy, torch CPU/CUDA, engine)

A checkpoint is written into ``checkpoints/.tmp-<step>`` and renamed into place, then the
``checkpoints/last`` pointer file is replaced atomically: a crash mid-write (even ``kill -9``)
leaves the previous checkpoint as ``last``. Every ``.pt`` file holds only tensors and plain
containers, so it loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

WEIGHT_FILES = ("model.safetensors", "ema.safetensors")
STATE_FILES = ("train_state.pt", "rng.pt")
LAST = "last"


@dataclass
class Progress:
    """Where training is: optimizer steps done, and the position inside the data stream."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # micro-batches already consumed in ``epoch``
    samples_seen: int = 0


# --------------------------------------------------------------------------------------------
# RNG state (plain tensors/ints so that weights_only loading works)
# --------------------------------------------------------------------------------------------


def rng_state(generator: torch.Generator | None = None) -> dict[str, Any]:
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        # int64, not uint32: torch cannot pickle uint32 tensors (all_gather_object under DDP)
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    if generator is not None:
        state["generator"] = generator.get_state()
    return state


def set_rng_state(state: dict[str, Any], generator: torch.Generator | None = None) -> None:
    random.setstate(_as_tuple(state["python"]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if generator is not None and "generator" in state:
        generator.set_state(state["generator"])


def _as_tuple(x: Any) -> Any:
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def checkpoint_dir_name(step: int) -> str:
    return f"{step:07d}"


def save_checkpoint(
    root: Path,
    progress: Progress,
    model_state: dict[str, torch.Tensor],
    ema_state: dict[str, torch.Tensor],
    train_state: dict[str, Any],
    rng_states: list[dict[str, Any]],
    keep_last: int,
) -> Path:
    """Write one checkpoint atomically and rotate old ones (call on rank 0 only)."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_dir_name(progress.step)
    tmp = root / f".tmp-{checkpoint_dir_name(progress.step)}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(_plain_tensors(model_state), str(tmp / "model.safetensors"))
    save_file(_plain_tensors(ema_state), str(tmp / "ema.safetensors"))
    torch.save({**train_state, "progress": asdict(progress)}, tmp / "train_state.pt")
    torch.save({"ranks": rng_states}, tmp / "rng.pt")
    _fsync_dir(tmp)
    if final.exists():  # re-saving the same step (e.g. a signal right after a periodic save)
        shutil.rmtree(final)
    os.rename(tmp, final)
    _write_atomic(root / LAST, final.name)
    rotate(root, keep_last)
    return final


def _plain_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses shared storage and non-contiguous views: give it owned copies
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _fsync_dir(path: Path) -> None:
    for f in path.iterdir():
        with f.open("rb") as fh:
            os.fsync(fh.fileno())


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first."""
    if not root.is_dir():
        return []
    found = [
        p
        for p in root.iterdir()
        if p.is_dir() and p.name.isdigit() and all((p / f).exists() for f in WEIGHT_FILES)
    ]
    return sorted(found, key=lambda p: int(p.name))


def rotate(root: Path, keep_last: int) -> None:
    for old in list_checkpoints(root)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def resolve_checkpoint(target: str | Path) -> Path:
    """A checkpoint directory from: a checkpoint dir, a run dir (its ``last``), ``.../last``."""
    path = Path(target)
    if path.is_dir() and all((path / f).exists() for f in WEIGHT_FILES + STATE_FILES):
        return path
    root = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    pointer = root / LAST
    if pointer.is_file():
        candidate = root / pointer.read_text().strip()
        if candidate.is_dir():
            return candidate
    complete = list_checkpoints(root)
    if complete:
        return complete[-1]
    raise FileNotFoundError(f"{target}: no checkpoint found (expected a run or checkpoint dir)")


def load_weights(ckpt: Path, which: str = "ema") -> dict[str, torch.Tensor]:
    path = ckpt / f"{which}.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing weights file")
    return load_file(str(path))


def load_train_state(ckpt: Path) -> tuple[dict[str, Any], Progress]:
    state = torch.load(ckpt / "train_state.pt", map_location="cpu", weights_only=True)
    progress = Progress(**state.pop("progress"))
    return state, progress


def load_rng_states(ckpt: Path) -> list[dict[str, Any]]:
    return torch.load(ckpt / "rng.pt", map_location="cpu", weights_only=True)["ranks"]
