"""The flow-matching objective of a conditional SiT, as the engine calls it.

Batches are ``(x, y)``; the model is called ``model(x_t, t, y, generator=..., force_drop_ids=...)``
(core ``layersync.nn.SiT``), so the condition dropout of classifier-free guidance happens inside
the model's one forward. ``loss_at``/``noise_like`` give the fixed-t, fixed-noise loss of the
``val_loss`` metric (``layersync.plugin.FixedTimeObjective``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from layersync.flow.transport import Transport
from layersync.plugin import ObjectiveOutput


class FlowObjective:
    """Per-sample interpolant loss of ``model`` on ``(x, y)`` batches.

    ``conditional=False`` drops the batch's ``y`` (an unconditional model); decide it from the
    config, not from the model, which the engine may have wrapped (DDP, FSDP, compile).
    """

    def __init__(self, transport: Transport, conditional: bool = True) -> None:
        self.transport = transport
        self.conditional = conditional

    def _split(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        x, y = batch
        return x, (y if self.conditional else None)

    def __call__(
        self, model: nn.Module, batch: Any, generator: torch.Generator | None = None
    ) -> ObjectiveOutput:
        x, y = self._split(batch)
        out = self.transport.loss(
            lambda xt, t: model(xt, t, y, generator=generator), x, generator=generator
        )
        return ObjectiveOutput(loss=out.loss, t=out.t)

    def loss_at(
        self, model: nn.Module, batch: Any, t: torch.Tensor, noise: torch.Tensor
    ) -> ObjectiveOutput:
        """The same loss at times ``t`` with ``noise``, without condition dropout (every arm and
        step sees the same input)."""
        x, y = self._split(batch)
        keep = None if y is None else torch.zeros(len(x), dtype=torch.long, device=x.device)
        out = self.transport.loss(
            lambda xt, tt: model(xt, tt, y, force_drop_ids=keep), x, t=t, noise=noise
        )
        return ObjectiveOutput(loss=out.loss, t=out.t)

    def noise_like(self, batch: Any, generator: torch.Generator) -> torch.Tensor:
        """Noise shaped like the batch's data, drawn from ``generator`` (a CPU generator, as
        ``val_loss`` uses) and moved to the data's device."""
        x = batch[0]
        return torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
