"""Exponential moving average of model weights (kept on the model's device)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """``ema = decay * ema + (1 - decay) * param`` after every optimizer step.

    With ``warmup`` the decay is ``min(decay, (1 + n) / (10 + n))`` at update ``n``, so early
    averages are not dominated by the random initialisation. Buffers are copied, not averaged.
    Works with DDP (pass the unwrapped model) and FSDP2 (the copy is sharded the same way, and
    the update runs on local shards).
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup: bool = False) -> None:
        self.decay = decay
        self.warmup = warmup
        self.updates = 0
        self.model = copy.deepcopy(model).eval()
        self.model.requires_grad_(False)

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        decay = self.current_decay()
        ema_params = [_local(p) for p in self.model.parameters()]
        params = [
            _local(p).to(e.dtype) for p, e in zip(model.parameters(), ema_params, strict=True)
        ]
        torch._foreach_lerp_(ema_params, params, 1.0 - decay)
        for ema_buf, buf in zip(self.model.buffers(), model.buffers(), strict=True):
            ema_buf.copy_(buf)
        self.updates += 1


def _local(t: torch.Tensor) -> torch.Tensor:
    """The local shard of an FSDP2 DTensor, or the tensor itself."""
    to_local = getattr(t, "to_local", None)
    return to_local() if to_local is not None else t
