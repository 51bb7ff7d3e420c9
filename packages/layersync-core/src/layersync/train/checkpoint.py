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

from layersync.fileio import atomic_write, fsync_dir


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and what to do."""


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
    """This process's RNG states. CUDA: only the current device's (the rank's own GPU), so a
    checkpoint resumes under another GPU visibility (one GPU per task, fewer GPUs)."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        # int64, not uint32: torch cannot pickle uint32 tensors (all_gather_object under DDP)
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
        "torch": torch.get_rng_state(),
        "cuda_device": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
    }
    if generator is not None:
        state["generator"] = generator.get_state()
    return state


def set_rng_state(state: dict[str, Any], generator: torch.Generator | None = None) -> None:
    """Restore :func:`rng_state`'s states; CUDA onto the current device only. Checkpoints of
    older versions hold every visible GPU's state (``cuda``): the current device's entry is
    used when there is one."""
    random.setstate(_as_tuple(state["python"]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available():
        device_state = state.get("cuda_device")
        legacy = state.get("cuda") or []
        if device_state is None and legacy:
            index = torch.cuda.current_device()
            device_state = legacy[index] if index < len(legacy) else None
        if device_state is not None:
            torch.cuda.set_rng_state(device_state)
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
    for name, state in (("model", model_state), ("ema", ema_state)):
        bad = first_nonfinite(state)
        if bad is not None:  # the caller checks first; this guards every other writer
            raise ValueError(f"{name} weight {bad!r} holds NaN/inf: checkpoint not written")
    save_file(_plain_tensors(model_state), str(tmp / "model.safetensors"))
    save_file(_plain_tensors(ema_state), str(tmp / "ema.safetensors"))
    torch.save({**train_state, "progress": asdict(progress)}, tmp / "train_state.pt")
    torch.save({"ranks": rng_states}, tmp / "rng.pt")
    _fsync_dir(tmp)
    if final.exists():  # re-saving the same step (e.g. a signal right after a periodic save)
        shutil.rmtree(final)
    os.rename(tmp, final)
    fsync_dir(root)  # the rename survives a crash before ``last`` points at it
    atomic_write(root / LAST, final.name)
    rotate(root, keep_last)
    return final


def _plain_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses shared storage and non-contiguous views: give it owned copies
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def first_nonfinite(state: dict[str, torch.Tensor]) -> str | None:
    """The name of the first floating-point tensor holding NaN/inf, or None."""
    for name, value in state.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            return name
    return None


def _fsync_dir(path: Path) -> None:
    for f in path.iterdir():
        with f.open("rb") as fh:
            os.fsync(fh.fileno())
    fsync_dir(path)


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
    """A complete checkpoint directory from: a checkpoint dir, a run dir (its ``last``) or its
    ``checkpoints/`` dir. A torn newest checkpoint (files missing) is an error naming it and the
    previous complete one."""
    path = Path(target)
    if _is_complete(path):
        return path
    if path.is_dir() and path.name.isdigit():
        raise CheckpointError(f"{path}: incomplete checkpoint ({_missing(path)}); {_advice(path)}")
    root = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    pointer = root / LAST
    if pointer.is_file():
        candidate = root / pointer.read_text().strip()
        if _is_complete(candidate):
            return candidate
        if candidate.is_dir():
            raise CheckpointError(
                f"{candidate}: the newest checkpoint is incomplete ({_missing(candidate)}); "
                f"{_advice(candidate)}"
            )
    complete = [p for p in list_checkpoints(root) if _is_complete(p)]
    if complete:
        return complete[-1]
    if not path.exists():
        raise CheckpointError(f"{target}: no such run or checkpoint directory")
    raise CheckpointError(f"{target}: no checkpoint found (expected a run or checkpoint dir)")


def _is_complete(path: Path) -> bool:
    return path.is_dir() and all((path / f).is_file() for f in WEIGHT_FILES + STATE_FILES)


def _missing(path: Path) -> str:
    return "missing " + ", ".join(f for f in WEIGHT_FILES + STATE_FILES if not (path / f).is_file())


def _advice(ckpt: Path) -> str:
    """What to do about a bad checkpoint: resume from the previous complete one, if any."""
    earlier = [
        p
        for p in list_checkpoints(ckpt.parent)
        if _is_complete(p)
        and p.name.isdigit()
        and ckpt.name.isdigit()
        and int(p.name) < int(ckpt.name)
    ]
    if earlier:
        return f"resume from the previous complete checkpoint: --resume {earlier[-1]}"
    return "no earlier complete checkpoint: start again with --overwrite"


def load_weights(ckpt: Path, which: str = "ema") -> dict[str, torch.Tensor]:
    """``model`` or ``ema`` weights of a checkpoint; a truncated/corrupt file or NaN/inf values
    are a ``CheckpointError`` naming the file and what to do."""
    path = ckpt / f"{which}.safetensors"
    if not path.is_file():
        raise CheckpointError(f"{path}: missing weights file; {_advice(ckpt)}")
    try:
        state = load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for torn files
        raise CheckpointError(
            f"{path}: not a readable safetensors file ({_one_line(e)}); {_advice(ckpt)}"
        ) from e
    bad = first_nonfinite(state)
    if bad is not None:
        raise CheckpointError(f"{path}: weight {bad!r} holds NaN/inf; {_advice(ckpt)}")
    return state


def _torch_load(path: Path, ckpt: Path) -> Any:
    if not path.is_file():
        raise CheckpointError(f"{path}: missing; {_advice(ckpt)}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, wrong format, refused pickle
        raise CheckpointError(f"{path}: unreadable ({_one_line(e)}); {_advice(ckpt)}") from e


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def load_train_state(ckpt: Path) -> tuple[dict[str, Any], Progress]:
    state = _torch_load(ckpt / "train_state.pt", ckpt)
    try:
        progress = Progress(**state.pop("progress"))
    except (KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(
            f"{ckpt / 'train_state.pt'}: not a LayerSync training state; {_advice(ckpt)}"
        ) from e
    return state, progress


def load_rng_states(ckpt: Path) -> list[dict[str, Any]]:
    state = _torch_load(ckpt / "rng.pt", ckpt)
    if not isinstance(state, dict) or "ranks" not in state:
        raise CheckpointError(f"{ckpt / 'rng.pt'}: not a LayerSync RNG state; {_advice(ckpt)}")
    return state["ranks"]


# --------------------------------------------------------------------------------------------
# Checks: does a state dict fit a model; is a file a weights file at all
# --------------------------------------------------------------------------------------------


def check_fits(state: dict[str, torch.Tensor], model: torch.nn.Module, path: Path) -> None:
    """A checkpoint that does not fit the model: name the parameter and both shapes."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for key, value in state.items():
        if key in expected and tuple(value.shape) != expected[key]:
            raise CheckpointError(
                f"{path}: {key} has shape {tuple(value.shape)} in the checkpoint but "
                f"{expected[key]} in the model; the run's own config fixes the architecture: "
                "resume without model.* overrides"
            )
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: does not fit the model (missing {missing[:3]}, unexpected {unexpected[:3]}); "
            "the run's own config fixes the architecture: resume without model.* overrides"
        )


def check_weights_file(path: Path) -> None:
    """``path`` exists and is a safetensors or torch file (by its first bytes); otherwise a
    ``CheckpointError`` saying what it looks like."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, expected a .safetensors or .pt file")
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found")
    with path.open("rb") as f:
        head = f.read(16)
    if len(head) >= 9 and head[8:9] == b"{":  # safetensors: u64 header size, then JSON
        return
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":  # torch zip / legacy pickle
        return
    kind = "an empty file" if not head else "a text file" if _is_text(head) else "not recognised"
    raise CheckpointError(
        f"{path}: not a safetensors or torch weights file ({kind}); give a .safetensors or "
        ".pt checkpoint"
    )


def _is_text(head: bytes) -> bool:
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
