"""The diffusion training objective: uniform integer steps, masked per-sample MSE.

It satisfies ``layersync.plugin.FixedTimeObjective``: ``__call__`` for training (one forward,
t reported as 1 - s/T, token mask = the valid frames) and ``loss_at`` for the val_loss metric
(t mapped to the nearest step, given noise, no condition dropout).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from layersync.plugin import ObjectiveOutput

from .gaussian import GaussianDiffusion

Forward = Callable[..., Tensor]
"""forward(model, x_t, steps, batch, drop_cond, generator) -> model output shaped like x_t.
``drop_cond`` is True in training (apply the condition dropout, drawn from ``generator``)."""


def masked_mse(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Per-sample mean squared error over the valid entries.

    ``mask`` (B, T) (or any leading shape of pred) marks valid positions; it broadcasts over
    the trailing dims. A sample's loss is sum(mask · err²) / (#valid · trailing size), as MDM's
    masked_l2."""
    err = (pred.float() - target.float()) ** 2
    if mask is None:
        return err.mean(dim=tuple(range(1, err.ndim)))
    m = mask.to(err.dtype).reshape(*mask.shape, *([1] * (err.ndim - mask.ndim)))
    m = m.expand_as(err)
    dims = tuple(range(1, err.ndim))
    return (err * m).sum(dims) / m.sum(dims).clamp_min(1.0)


def _default_forward(model, x_t, steps, batch, drop_cond, generator):
    return model(x_t, steps)


class DiffusionObjective:
    """Per-sample diffusion loss of a batch (a dict with the data under ``data_key`` and an
    optional (B, T) valid mask under ``mask_key``; or a bare tensor)."""

    def __init__(
        self,
        diffusion: GaussianDiffusion,
        forward: Forward | None = None,
        data_key: str = "x",
        mask_key: str | None = "mask",
    ) -> None:
        self.diffusion = diffusion
        self.forward = forward or _default_forward
        self.data_key, self.mask_key = data_key, mask_key

    def _unpack(self, batch: Any) -> tuple[Tensor, Tensor | None]:
        if torch.is_tensor(batch):
            return batch, None
        mask = batch.get(self.mask_key) if self.mask_key else None
        return batch[self.data_key], mask

    def _loss(self, model, batch, steps, noise, drop_cond, generator) -> ObjectiveOutput:
        x0, mask = self._unpack(batch)
        x_t = self.diffusion.q_sample(x0, steps, noise)
        out = self.forward(model, x_t, steps, batch, drop_cond, generator)
        loss = masked_mse(out, self.diffusion.target(x0, noise, steps), mask)
        return ObjectiveOutput(loss=loss, t=self.diffusion.t_from_steps(steps), token_mask=mask)

    def __call__(
        self, model: nn.Module, batch: Any, generator: torch.Generator | None = None
    ) -> ObjectiveOutput:
        x0, _ = self._unpack(batch)
        steps = self.diffusion.sample_steps(x0.shape[0], generator, x0.device)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        return self._loss(model, batch, steps, noise, True, generator)

    def loss_at(self, model: nn.Module, batch: Any, t: Tensor, noise: Tensor) -> ObjectiveOutput:
        """The loss at core time t (B,), mapped to the nearest step, with the given noise."""
        x0, _ = self._unpack(batch)
        steps = self.diffusion.steps_from_t(t).to(x0.device)
        return self._loss(model, batch, steps, noise.to(x0), False, None)

    def noise_like(self, batch: Any, generator: torch.Generator) -> Tensor:
        x0, _ = self._unpack(batch)
        return torch.randn(x0.shape, generator=generator, device=generator.device, dtype=x0.dtype)
