"""Runtime pieces of the engine: precision, LR schedule, seeding, environment record, the
stop flag (SIGINT/SIGTERM), RNG isolation for sampling, FSDP/DTensor helpers."""

from __future__ import annotations

import contextlib
import math
import platform
import signal
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from layersync import distributed as dist
from layersync.backends import backends_record
from layersync.plugin import Modality

# --------------------------------------------------------------------------------------------
# Precision and the learning-rate schedule
# --------------------------------------------------------------------------------------------


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """None = fp32. ``auto`` is bf16 on CUDA (when the GPU has native bf16), fp32 elsewhere."""
    if precision == "auto":
        # native bf16 only: V100/T4 "support" it by emulation, slower than fp32
        cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported(
            including_emulation=False
        )
        return torch.bfloat16 if cuda_bf16 else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[precision]


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def lr_factor(step: int, warmup: int, schedule: str, total: int) -> float:
    """Multiplier of the base LR: linear warmup, then constant / cosine / linear decay to 0."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - progress


# --------------------------------------------------------------------------------------------
# Seeding, environment record, stop requests
# --------------------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def environment(info: dist.DistInfo, plugin: Modality) -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    def ver(pkg: str) -> str | None:
        try:
            return version(pkg)
        except PackageNotFoundError:
            return None

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": str(info.device),
        "device_name": torch.cuda.get_device_name(info.device)
        if info.device.type == "cuda"
        else platform.processor() or platform.machine(),
        "world_size": info.world_size,
        "backends": backends_record(),
        "layersync_core": ver("layersync-core"),
        "plugin": {"name": plugin.name, "class": type(plugin).__module__},
    }


class StopFlag:
    """Set by SIGINT/SIGTERM (cluster pre-emption): the loop saves and exits at the next step."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal is not None:  # a second signal: stop now
            raise KeyboardInterrupt
        self.signal = signum

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


# --------------------------------------------------------------------------------------------
# Sampling isolation, FSDP/DTensor helpers
# --------------------------------------------------------------------------------------------


def isolated_rng(device: torch.device) -> contextlib.AbstractContextManager:
    devices = [device] if device.type == "cuda" else []
    return torch.random.fork_rng(devices=devices, device_type=device.type)


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    full = getattr(t, "full_tensor", None)
    return full() if full is not None else t


@contextlib.contextmanager
def fsdp_no_sync(model: nn.Module) -> Iterator[None]:
    model.set_requires_gradient_sync(False)  # type: ignore[operator]
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)  # type: ignore[operator]
