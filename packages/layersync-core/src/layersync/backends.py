"""Numerical backend settings shared by every command (train, sample, eval, bench, encode, FID).

One call, :func:`configure_backends`, before any model runs: float32 matmuls and convolutions
use TF32 tensor cores on GPUs that have them (PyTorch's ``"high"`` precision), unless
``LAYERSYNC_MATMUL=strict`` asks for strict IEEE fp32 everywhere. Every command sets the same
thing, so ``layersync eval`` reproduces a run's own evaluation of the same checkpoint. The
returned record goes into the run's ``env.json``.

Determinism: a resumed run repeats the straight run bit for bit on CPU. On CUDA some kernels
(atomics in backward passes, fused attention, cuBLAS split-K) are not bitwise deterministic, so
a resumed or repeated run matches only to float rounding. ``LAYERSYNC_DETERMINISTIC=1`` trades
speed for repeatability: deterministic algorithms only (an error names any op without one), the
cuBLAS workspace setting they need, math attention and no cuDNN autotuning.
"""

from __future__ import annotations

import os

import torch

ENV_VAR = "LAYERSYNC_MATMUL"
DETERMINISTIC_VAR = "LAYERSYNC_DETERMINISTIC"
MODES = {"tf32": "high", "strict": "highest"}


class BackendError(ValueError):
    """An unknown backend setting (the message names the variable and its value)."""


def matmul_mode() -> str:
    """``tf32`` (default) or ``strict``, from ``$LAYERSYNC_MATMUL``."""
    mode = os.environ.get(ENV_VAR, "tf32").strip().lower() or "tf32"
    if mode not in MODES:
        raise BackendError(f"{ENV_VAR}={mode!r}: expected one of {', '.join(MODES)}")
    return mode


def deterministic_mode() -> bool:
    """``$LAYERSYNC_DETERMINISTIC``: 1/true/yes or 0/false/no (default off)."""
    value = os.environ.get(DETERMINISTIC_VAR, "0").strip().lower() or "0"
    if value not in ("0", "1", "true", "false", "yes", "no"):
        raise BackendError(f"{DETERMINISTIC_VAR}={value!r}: expected 1 or 0")
    return value in ("1", "true", "yes")


def configure_backends() -> dict[str, object]:
    """Set float32 matmul/convolution precision (and, when asked, determinism) for this
    process; returns what was set."""
    mode = matmul_mode()
    torch.set_float32_matmul_precision(MODES[mode])
    torch.backends.cudnn.allow_tf32 = mode == "tf32"
    if deterministic_mode():
        # cuBLAS reads this when its handle is created: set before the first CUDA matmul
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cuda.enable_flash_sdp(False)
        torch.backends.cuda.enable_mem_efficient_sdp(False)
        torch.backends.cuda.enable_cudnn_sdp(False)
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
