"""Cost benchmark of a training step: time, memory and FLOPs (vanilla vs LayerSync).

``bench_step`` builds two trainers from the same config and seed (``layersync.enabled`` false
and true), warms both up, then times full optimizer steps *interleaved* in one process
(A B B A A B ...: each arm runs first equally often, so drifting machine load hits both alike)
and reports the median step time of each arm and their ratio. Per arm, outside the timed steps:

- memory: bytes of the run's resident state (weights, EMA, optimizer state) plus the peak of
  the bytes allocated during one step above its start. CUDA: ``torch.cuda.max_memory_allocated``.
  CPU: the same quantity from the torch profiler's allocator events (every CPU tensor
  allocation and free, in order); process RSS is not used (glibc keeps freed memory and the
  high-water mark is shared by both arms of one process).
- FLOPs: ``torch.utils.flop_counter.FlopCounterMode`` over one full step (matmuls, convolutions
  and attention of forward + backward; element-wise ops are not counted, as usual for MFU).
- MFU: achieved FLOP/s (FLOPs / median step time) over the device's dense-matmul FLOP/s
  measured in the same process (the best of a few large matmuls in the training dtype).

The sampler benchmark (``layersync bench sample``) is ``layersync.bench_sample``.
"""

from __future__ import annotations

import contextlib
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from layersync import config as config_lib
from layersync.plugin import Modality

# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence the profiler backend's C++ start/stop lines (file descriptor 2) for a moment."""
    import os
    import sys

    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def tensor_bytes(tensors: Iterator[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind ``tensors``."""
    seen: dict[tuple[str, int], int] = {}
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.numel():
            storage = t.untyped_storage()
            seen[(str(t.device), storage.data_ptr())] = storage.nbytes()
    return sum(seen.values())


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> Iterator[torch.Tensor]:
    for state in optimizer.state.values():
        yield from (v for v in state.values() if isinstance(v, torch.Tensor))


def state_bytes(trainer: Any) -> int:
    """Resident bytes of a run between steps: weights, buffers, EMA copy, optimizer state."""
    model, ema = trainer.model, trainer.ema.model

    def tensors() -> Iterator[torch.Tensor]:
        yield from model.parameters()
        yield from model.buffers()
        yield from ema.parameters()
        yield from ema.buffers()
        yield from _optimizer_tensors(trainer.optimizer)

    return tensor_bytes(tensors())


# --------------------------------------------------------------------------------------------
# FLOPs and peak memory of one step
# --------------------------------------------------------------------------------------------


def _sdpa_cpu_flops(q, k, v, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(q, k, v)


def _sdpa_cpu_backward_flops(grad, q, k, v, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_backward_flop_count

    return sdpa_backward_flop_count(grad, q, k, v)


def flop_counter() -> Any:
    """``FlopCounterMode`` that also counts the CPU flash-attention kernel (torch does not)."""
    from torch.utils.flop_counter import FlopCounterMode

    aten = torch.ops.aten
    mapping = {}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        mapping[aten._scaled_dot_product_flash_attention_for_cpu] = _sdpa_cpu_flops
        mapping[aten._scaled_dot_product_flash_attention_for_cpu_backward] = (
            _sdpa_cpu_backward_flops
        )
    return FlopCounterMode(display=False, custom_mapping=mapping)


def count_flops(fn: Callable[[], Any]) -> int:
    """Matmul/conv/attention FLOPs of ``fn()`` (forward and backward)."""
    with flop_counter() as counter:
        fn()
    return int(counter.get_total_flops())


def peak_step_bytes(fn: Callable[[], Any], device: torch.device) -> int:
    """Peak bytes allocated while ``fn()`` runs, above what was allocated when it started."""
    if device.type == "cuda":
        synchronize(device)
        start = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - start)
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [
        e
        for e in prof.profiler.kineto_results.events()  # type: ignore[union-attr]
        if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU
    ]
    live = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        live += e.nbytes()
        peak = max(peak, live)
    return int(peak)


def matmul_flops_per_s(
    device: torch.device, dtype: torch.dtype | None = None, n: int | None = None, repeats: int = 5
) -> dict[str, Any]:
    """Measured dense-matmul throughput: the best of ``repeats`` timed ``n x n`` products."""
    dtype = dtype or torch.float32
    n = n or (8192 if device.type == "cuda" else 1024)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    c = a @ b  # warm-up
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        c = a @ b
        synchronize(device)
        times.append(time.perf_counter() - start)
    del c
    flops = 2.0 * n**3
    return {
        "n": n,
        "dtype": str(dtype).replace("torch.", ""),
        "flops_per_s": flops / min(times),
        "median_flops_per_s": flops / statistics.median(times),
    }


# --------------------------------------------------------------------------------------------
# Training step benchmark
# --------------------------------------------------------------------------------------------


@dataclass
class ArmResult:
    """One arm of ``bench_step``."""

    name: str
    steps: int = 0
    step_times: list[float] = field(default_factory=list)
    median_step_s: float = 0.0
    flops_per_step: int = 0
    achieved_flops_per_s: float = 0.0
    mfu: float = 0.0
    state_bytes: int = 0
    step_peak_bytes: int = 0
    memory_bytes: int = 0
    metrics: dict[str, float] = field(default_factory=dict)


def _arm_configs(plugin: Modality, cfg: Any, root: Path) -> dict[str, Any]:
    common = [f"run.out_dir={root}", "log.progress=false"]
    return {
        "vanilla": config_lib.with_overrides(
            plugin, cfg, [*common, "run.name=vanilla", "layersync.enabled=false"]
        ),
        "layersync": config_lib.with_overrides(
            plugin, cfg, [*common, "run.name=layersync", "layersync.enabled=true"]
        ),
    }


def _one_step(trainer: Any) -> dict[str, torch.Tensor]:
    stats = trainer.train_step()
    trainer.progress.step += 1  # as the loop does: the λ schedule sees the step count
    return stats


def bench_step(
    cfg: Any,
    plugin: Modality,
    steps: int = 20,
    warmup: int = 3,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Vanilla vs LayerSync training steps of ``cfg``, interleaved; see the module docstring."""
    from layersync.train import Trainer

    if steps < 1 or warmup < 0:
        raise ValueError("bench step needs steps >= 1 and warmup >= 0")
    log = log or (lambda message: None)
    with tempfile.TemporaryDirectory(prefix="layersync-bench-") as tmp:
        cfgs = _arm_configs(plugin, cfg, Path(tmp))
        trainers = {name: Trainer.create(c, plugin, overwrite=True) for name, c in cfgs.items()}
        try:
            return _bench_trainers(trainers, steps, warmup, log)
        finally:
            for trainer in trainers.values():
                if trainer.sync is not None:
                    trainer.sync.detach()


def _bench_trainers(
    trainers: dict[str, Any], steps: int, warmup: int, log: Callable[[str], None]
) -> dict[str, Any]:
    first = next(iter(trainers.values()))
    device, amp = first.info.device, first.amp_dtype
    arms = {name: ArmResult(name) for name in trainers}
    for t in trainers.values():
        t.wrapped.train()

    # warm-up, then timed steps: A B, B A, A B, ...
    log(f"warm-up: {warmup} step(s) per arm")
    names = list(trainers)
    for _ in range(warmup):
        for name in names:
            _one_step(trainers[name])
    log(f"timing: {steps} interleaved step(s) per arm")
    last: dict[str, dict[str, torch.Tensor]] = {}
    for i in range(steps):
        for name in names if i % 2 == 0 else names[::-1]:
            synchronize(device)
            start = time.perf_counter()
            last[name] = _one_step(trainers[name])
            synchronize(device)
            arms[name].step_times.append(time.perf_counter() - start)
            arms[name].steps += 1

    # FLOPs and memory (untimed steps: counting and profiling slow a step down)
    log("FLOPs and memory: one counted and one profiled step per arm")
    for name, trainer in trainers.items():
        arm = arms[name]
        arm.flops_per_step = count_flops(lambda t=trainer: _one_step(t))
        arm.step_peak_bytes = peak_step_bytes(lambda t=trainer: _one_step(t), device)
        arm.state_bytes = state_bytes(trainer)
        arm.memory_bytes = arm.state_bytes + arm.step_peak_bytes
        arm.metrics = {k: float(v) for k, v in last[name].items()}

    peak = matmul_flops_per_s(device, amp)
    for arm in arms.values():
        arm.median_step_s = statistics.median(arm.step_times)
        arm.achieved_flops_per_s = arm.flops_per_step / arm.median_step_s
        arm.mfu = arm.achieved_flops_per_s / peak["flops_per_s"]

    van, ls = arms["vanilla"], arms["layersync"]
    cfg = first.cfg
    params = sum(p.numel() for p in first.model.parameters())
    return {
        "modality": cfg.modality,
        "preset": cfg.preset,
        "device": str(device),
        "precision": "fp32" if amp is None else str(amp).replace("torch.", ""),
        "compile": cfg.train.compile,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "params": params,
        "batch_size": cfg.train.batch_size,
        "warmup": warmup,
        "steps": steps,
        "pairs": [str(p) for p in trainers["layersync"].sync.pairs],
        "memory_method": "cuda max_memory_allocated"
        if device.type == "cuda"
        else "torch profiler CPU allocator events",
        "device_matmul": peak,
        "arms": {name: asdict(arm) for name, arm in arms.items()},
        "step_time_ratio": ls.median_step_s / van.median_step_s,
        "memory_ratio": ls.memory_bytes / van.memory_bytes,
        "step_peak_ratio": ls.step_peak_bytes / max(1, van.step_peak_bytes),
    }


# --------------------------------------------------------------------------------------------
# Report (what `layersync bench step` prints)
# --------------------------------------------------------------------------------------------


def step_report(result: dict[str, Any], steps: int) -> tuple[Any, str]:
    """The vanilla-vs-LayerSync table and the device line of a ``bench_step`` result."""
    from rich.table import Table

    van, ls = result["arms"]["vanilla"], result["arms"]["layersync"]
    table = Table(
        title=f"bench step: {result['modality']} / {result['preset']} on {result['device']} "
        f"({result['precision']}, batch {result['batch_size']}, {steps} steps per arm)"
    )
    for column in ("", "vanilla", f"layersync {','.join(result['pairs'])}", "ratio"):
        table.add_column(column, justify="right")
    mb = 2**20
    rows = [
        (
            "median step (ms)",
            1e3 * van["median_step_s"],
            1e3 * ls["median_step_s"],
            result["step_time_ratio"],
            ".1f",
        ),
        (
            "memory (MB)",
            van["memory_bytes"] / mb,
            ls["memory_bytes"] / mb,
            result["memory_ratio"],
            ".1f",
        ),
        (
            "  step peak (MB)",
            van["step_peak_bytes"] / mb,
            ls["step_peak_bytes"] / mb,
            result["step_peak_ratio"],
            ".1f",
        ),
        ("FLOPs / step (G)", van["flops_per_step"] / 1e9, ls["flops_per_step"] / 1e9, None, ".3f"),
        (
            "achieved GFLOP/s",
            van["achieved_flops_per_s"] / 1e9,
            ls["achieved_flops_per_s"] / 1e9,
            None,
            ".2f",
        ),
    ]
    for label, a, b, ratio, fmt in rows:
        table.add_row(label, f"{a:{fmt}}", f"{b:{fmt}}", "" if ratio is None else f"{ratio:.3f}")
    table.add_row("MFU", f"{100 * van['mfu']:.2f}%", f"{100 * ls['mfu']:.2f}%")
    peak = result["device_matmul"]
    line = (
        f"device matmul ({peak['n']}x{peak['n']} {peak['dtype']}): "
        f"{peak['flops_per_s'] / 1e9:.1f} GFLOP/s measured; memory: {result['memory_method']}"
    )
    return table, line
