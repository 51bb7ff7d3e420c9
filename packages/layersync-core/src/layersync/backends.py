"""Numerical backend settings shared by every command (train, sample, eval, bench, encode, FID).

One call, :func:`configure_backends`, before any model runs: float32 matmuls and convolutions
use TF32 tensor cores on GPUs that have them (PyTorch's ``"high"`` precision), unless the run's
``train.matmul = "strict"`` asks for strict IEEE fp32 everywhere. Commands that load a run
(sample, eval, bench) use the run's own setting, so ``layersync eval`` reproduces the run's
evaluation of the same checkpoint. ``$LAYERSYNC_MATMUL`` / ``$LAYERSYNC_DETERMINISTIC``, when
set, override the config (and serve commands without a run config: ``image encode``,
``image fid``). The returned record goes into the run's ``env.json`` and beside every
evaluation's ``metrics.json`` (``backends.json``).

Determinism: a resumed run repeats the straight run bit for bit on CPU. On CUDA some kernels
(atomics in backward passes, fused attention, cuBLAS split-K) are not bitwise deterministic, so
a resumed or repeated run matches only to float rounding. ``train.deterministic = true`` trades
speed for repeatability: deterministic algorithms only (an error names any op without one), the
cuBLAS workspace setting they need, math attention and no cuDNN autotuning.
"""

from __future__ import annotations

import os
from typing import Any

import torch

ENV_VAR = "LAYERSYNC_MATMUL"
DETERMINISTIC_VAR = "LAYERSYNC_DETERMINISTIC"
MODES = {"tf32": "high", "strict": "highest"}


class BackendError(ValueError):
    """An unknown backend setting (the message names the variable and its value)."""


def matmul_mode(default: str = "tf32") -> str:
    """``tf32`` or ``strict``: ``$LAYERSYNC_MATMUL`` when set, else ``default``."""
    mode = os.environ.get(ENV_VAR, "").strip().lower() or default
    if mode not in MODES:
        raise BackendError(f"{ENV_VAR}={mode!r}: expected one of {', '.join(MODES)}")
    return mode


def deterministic_mode(default: bool = False) -> bool:
    """``$LAYERSYNC_DETERMINISTIC`` (1/true/yes or 0/false/no) when set, else ``default``."""
    value = os.environ.get(DETERMINISTIC_VAR, "").strip().lower() or ("1" if default else "0")
    if value not in ("0", "1", "true", "false", "yes", "no"):
        raise BackendError(f"{DETERMINISTIC_VAR}={value!r}: expected 1 or 0")
    return value in ("1", "true", "yes")


def configure_backends(cfg: Any = None) -> dict[str, object]:
    """Set float32 matmul/convolution precision (and, when asked, determinism) for this
    process from ``cfg.train.matmul`` / ``cfg.train.deterministic`` (the environment
    variables override them); returns what was set."""
    train = getattr(cfg, "train", None)
    mode = matmul_mode(getattr(train, "matmul", "tf32"))
    torch.set_float32_matmul_precision(MODES[mode])
    torch.backends.cudnn.allow_tf32 = mode == "tf32"
    deterministic = deterministic_mode(bool(getattr(train, "deterministic", False)))
    if deterministic:
        # cuBLAS reads this when its handle is created: set before the first CUDA matmul
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
    # both ways, so a second run in one process (a test, a notebook) gets its own setting
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cuda.enable_flash_sdp(not deterministic)
    torch.backends.cuda.enable_mem_efficient_sdp(not deterministic)
    torch.backends.cuda.enable_cudnn_sdp(not deterministic)
    return backends_record()


def backends_record() -> dict[str, object]:
    """The settings in force now (for ``env.json``)."""
    return {
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "sdpa_math_only": not (
            torch.backends.cuda.flash_sdp_enabled()
            or torch.backends.cuda.mem_efficient_sdp_enabled()
        ),
    }
