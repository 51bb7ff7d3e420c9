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
    the update runs on local shards). Under FSDP2 the copy is its own root, and FSDP2 leaves a
    root unsharded after a forward: call ``reshard()`` after every sampling/eval forward (the
    engine does it in a ``finally``), else the next update would mix full tensors and shards.
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
        pairs = list(zip(self.model.parameters(), model.parameters(), strict=True))
        for (name, e), (_, p) in zip(
            self.model.named_parameters(), model.named_parameters(), strict=True
        ):
            if _is_sharded(e) != _is_sharded(p) or _local(e).shape != _local(p).shape:
                raise RuntimeError(
                    f"EMA update: {name!r} is {_layout(e)} in the EMA copy but {_layout(p)} in "
                    "the model (an FSDP2 module left unsharded after a forward: reshard it)"
                )
        ema_params = [_local(e) for e, _ in pairs]
        params = [_local(p).to(e.dtype) for (_, p), e in zip(pairs, ema_params, strict=True)]
        torch._foreach_lerp_(ema_params, params, 1.0 - decay)
        for ema_buf, buf in zip(self.model.buffers(), model.buffers(), strict=True):
            ema_buf.copy_(buf)
        self.updates += 1

    def reshard(self) -> None:
        """Free the unsharded parameters FSDP2 keeps after a forward (no-op without FSDP2)."""
        reshard(self.model)


def reshard(module: nn.Module) -> None:
    """Reshard every FSDP2 unit of ``module`` (roots stay unsharded after a forward)."""
    from torch.distributed.fsdp import FSDPModule

    for sub in module.modules():
        if isinstance(sub, FSDPModule):
            sub.reshard()


def _is_sharded(t: torch.Tensor) -> bool:
    return hasattr(t, "to_local")


def _layout(t: torch.Tensor) -> str:
    kind = "a shard" if _is_sharded(t) else "a full tensor"
    return f"{kind} of local shape {tuple(_local(t).shape)}"


def _local(t: torch.Tensor) -> torch.Tensor:
    """The local shard of an FSDP2 DTensor, or the tensor itself."""
    to_local = getattr(t, "to_local", None)
    return to_local() if to_local is not None else t
