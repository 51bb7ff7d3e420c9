"""``val_loss``: a low-variance convergence metric for any plugin with a fixed-t objective.

The EMA model's objective on a fixed held-out set (the first ``count`` items of the plugin's
``"eval"`` split) at a fixed grid of times (core convention, t = 1 is data), with noise drawn
from a fixed seed that does not depend on ``run.seed``, the arm or the step (common random
numbers): two arms and two checkpoints see identical inputs, so their difference is the models'
difference and not sampling noise. Costs ``len(times) * count`` forwards, no sampling.

Available when the plugin's objective implements ``layersync.plugin.FixedTimeObjective``
(``loss_at`` and ``noise_like``). Reported as ``val_loss`` (mean over the grid) and
``val_loss/t<t>`` per time.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import Subset

from layersync.plugin import Modality

VAL_TIMES: tuple[float, ...] = tuple(round(0.05 + 0.1125 * i, 4) for i in range(9))
"""Nine times 0.05 .. 0.95."""
VAL_COUNT = 256
"""Held-out items (fewer when the eval split is smaller)."""
VAL_SEED = 20_251_130
"""Seed of the fixed noise: the same for every run, arm, seed and step."""
VAL_BATCH = 64


def has_val_loss(objective: Any) -> bool:
    """Whether ``objective`` can take a fixed t and noise (``FixedTimeObjective``)."""
    return callable(getattr(objective, "loss_at", None)) and callable(
        getattr(objective, "noise_like", None)
    )


def time_key(t: float) -> str:
    """The metric name of one grid time: ``val_loss/t0.05``."""
    return f"val_loss/t{t:g}"


def held_out_batches(
    plugin: Modality, cfg: Any, count: int = VAL_COUNT, batch_size: int = VAL_BATCH
) -> list[Any]:
    """The first ``count`` items of the ``"eval"`` split, collated in batches (on the CPU)."""
    dataset = plugin.build_dataset(cfg, "eval")
    n = min(count, len(dataset))
    if n == 0:
        raise ValueError("val_loss: the eval split is empty")
    subset = Subset(dataset, range(n))
    return [
        plugin.collate([subset[i] for i in range(start, min(start + batch_size, n))])
        for start in range(0, n, batch_size)
    ]


@torch.no_grad()
def val_loss(
    model: nn.Module,
    objective: Any,
    batches: list[Any],
    device: torch.device | str = "cpu",
    times: tuple[float, ...] = VAL_TIMES,
    seed: int = VAL_SEED,
) -> dict[str, float]:
    """Mean ``objective.loss_at`` over ``batches`` at each of ``times`` with fixed noise.

    Noise is drawn on the CPU from ``seed`` in a fixed order (batch, then time), so it is the
    same on any device and for any model. The model runs in eval mode (restored afterwards).
    """
    from layersync.train.data import to_device

    gen = torch.Generator().manual_seed(seed)
    totals = torch.zeros(len(times), dtype=torch.float64)
    count = 0
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            on_device = to_device(batch, device)
            for j, t in enumerate(times):
                noise = objective.noise_like(batch, gen)
                b = noise.shape[0]
                tt = torch.full((b,), float(t), device=device)
                out = objective.loss_at(model, on_device, tt, noise.to(device))
                totals[j] += out.loss.detach().double().sum().cpu()
            count += b
    finally:
        model.train(was_training)
    per_t = (totals / count).tolist()
    metrics = {"val_loss": float(sum(per_t) / len(per_t))}
    metrics.update({time_key(t): v for t, v in zip(times, per_t, strict=True)})
    return metrics


class ValLoss:
    """The metric for one run: the held-out batches are built once and reused at every eval."""

    def __init__(self, plugin: Modality, cfg: Any, objective: Any) -> None:
        self.objective = objective
        self.batches = held_out_batches(plugin, cfg)

    def __call__(self, model: nn.Module, device: torch.device | str) -> dict[str, float]:
        return val_loss(model, self.objective, self.batches, device)

    @staticmethod
    def for_run(plugin: Modality, cfg: Any, objective: Any) -> ValLoss | None:
        """The metric, or None when the objective has no ``loss_at`` (optional contract)."""
        return ValLoss(plugin, cfg, objective) if has_val_loss(objective) else None
