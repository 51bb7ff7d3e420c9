"""Cost benchmark of sampling: samples/s and model calls (NFE) per sampler configuration.

``bench_sample`` times each sampler configuration and counts its model calls with a forward
hook (one call = one function evaluation, a CFG call carries the doubled batch). It describes
and predicts (NFE formulas) only a ``layersync.flow.SamplerConfig`` ``sampler`` section; any
other plugin's sampler is timed as configured with its model calls counted.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from layersync import config as config_lib
from layersync.bench import synchronize
from layersync.flow.config import SamplerConfig
from layersync.plugin import Modality

# --------------------------------------------------------------------------------------------
# Sampler benchmark
# --------------------------------------------------------------------------------------------

DEFAULT_SAMPLERS = (("ode", "euler"), ("ode", "heun"), ("sde", "euler"), ("sde", "heun"))


class CallCounter:
    """Counts forward calls of a module (and the batch size of each) through a hook."""

    def __init__(self, model: nn.Module) -> None:
        self.calls = 0
        self.batch_sizes: list[int] = []
        self._handle = model.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, args: Any, output: Any) -> None:
        self.calls += 1
        first = args[0] if args else None
        self.batch_sizes.append(int(first.shape[0]) if isinstance(first, torch.Tensor) else 0)

    def reset(self) -> None:
        self.calls, self.batch_sizes = 0, []

    def remove(self) -> None:
        self._handle.remove()

    def __enter__(self) -> CallCounter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def flow_sampler(cfg: Any) -> SamplerConfig | None:
    """The run's ``sampler`` section when it is ``layersync.flow.SamplerConfig`` (or extends
    it): the only sampler whose fields bench reads. Other plugins' samplers are timed as
    configured, and their model calls counted, without a description or an NFE formula."""
    sampler = getattr(cfg, "sampler", None)
    return sampler if isinstance(sampler, SamplerConfig) else None


def expected_nfe(sampler: SamplerConfig) -> int:
    """Model calls per sampling batch that ``layersync.flow`` predicts for ``sampler``."""
    from layersync.flow import ode_nfe, sde_nfe

    if sampler.mode == "ode":
        return ode_nfe(sampler.steps, sampler.method)
    return sde_nfe(sampler.steps, sampler.method, sampler.last_step)


def sampler_variants(
    samplers: Sequence[tuple[str, str]] | None = DEFAULT_SAMPLERS,
    steps: Sequence[int] = (),
    cfg_scales: Sequence[float] = (),
) -> list[list[str]]:
    """``sampler.*`` override lists, one per combination; empty inputs keep the config's value."""
    modes = [[f"sampler.mode={m}", f"sampler.method={k}"] for m, k in samplers or []] or [[]]
    counts = [[f"sampler.steps={k}"] for k in steps] or [[]]
    scales = [[f"sampler.cfg_scale={float(c)}"] for c in cfg_scales] or [[]]
    return [a + b + c for a in modes for b in counts for c in scales]


def bench_sample(
    plugin: Modality,
    cfg: Any,
    model: nn.Module,
    *,
    n: int = 64,
    variants: Sequence[Sequence[str]] = ((),),
    repeats: int = 1,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Samples/s and model calls of ``plugin.sample`` under each override list in ``variants``
    (see ``sampler_variants``). NFE = model calls per sampling batch."""
    from layersync.distributed import resolve_device

    log = log or (lambda message: None)
    device = resolve_device(cfg.train.device)
    model = model.to(device).eval()
    rows = []
    with CallCounter(model) as counter, torch.no_grad():
        for overrides in variants:
            run_cfg = config_lib.with_overrides(plugin, cfg, overrides)
            gen = torch.Generator(device).manual_seed(seed)
            cond = plugin.conditions(run_cfg, n, gen)
            warm = min(n, 2)
            plugin.sample(model, run_cfg, warm, _head(cond, warm), gen)  # warm-up
            times = []
            for _ in range(repeats):
                counter.reset()
                gen = torch.Generator(device).manual_seed(seed)
                synchronize(device)
                start = time.perf_counter()
                plugin.sample(model, run_cfg, n, cond, gen)
                synchronize(device)
                times.append(time.perf_counter() - start)
            sampler = flow_sampler(run_cfg)
            elapsed = statistics.median(times)
            row = {
                "sampler": _describe(sampler, overrides),
                "overrides": list(overrides),
                **{k: getattr(sampler, k, None) for k in ("mode", "method", "steps", "cfg_scale")},
                "n": n,
                "seconds": elapsed,
                "samples_per_s": n / elapsed,
                "model_calls": counter.calls,
                "nfe": None if sampler is None else counter.calls / -(-n // sampler.batch_size),
                "expected_nfe": None if sampler is None else expected_nfe(sampler),
                "call_batch_sizes": sorted(set(counter.batch_sizes)),
            }
            rows.append(row)
            calls = f"NFE {row['nfe']:g}" if sampler else f"{counter.calls} model calls"
            log(f"{row['sampler']}: {row['samples_per_s']:.2f} samples/s, {calls}")
    return {
        "modality": cfg.modality,
        "preset": cfg.preset,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "params": sum(p.numel() for p in model.parameters()),
        "repeats": repeats,
        "results": rows,
    }


def _describe(sampler: SamplerConfig | None, overrides: Sequence[str]) -> str:
    if sampler is None:  # a plugin's own sampler: what was asked of it
        return " ".join(overrides) or "configured sampler"
    parts = [sampler.mode, sampler.method, f"{sampler.steps} steps"]
    if sampler.cfg_scale != 1.0:
        parts.append(f"cfg {sampler.cfg_scale:g}")
    return " ".join(parts)


def _head(cond: Any, k: int) -> Any:
    if cond is None:
        return None
    with contextlib.suppress(TypeError):
        return cond[:k]
    return cond


# --------------------------------------------------------------------------------------------
# Report (what `layersync bench sample` prints)
# --------------------------------------------------------------------------------------------


def sample_report(result: dict[str, Any], n: int) -> Any:
    """The per-sampler table of a ``bench_sample`` result."""
    from rich.table import Table

    table = Table(title=f"bench sample: {result['modality']} on {result['device']} (n={n})")
    for column in ("sampler", "samples/s", "seconds", "NFE", "expected NFE", "call batch"):
        table.add_column(column, justify="right")
    for r in result["results"]:
        table.add_row(
            r["sampler"],
            f"{r['samples_per_s']:.2f}",
            f"{r['seconds']:.2f}",
            "-" if r["nfe"] is None else f"{r['nfe']:g}",
            "-" if r["expected_nfe"] is None else str(r["expected_nfe"]),
            ",".join(map(str, r["call_batch_sizes"])),
        )
    return table
