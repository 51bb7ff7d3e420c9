"""torch.distributed plumbing: process group from torchrun's environment, model wrapping.

One process per device. ``torchrun --nproc_per_node N -m layersync train ...`` sets RANK,
WORLD_SIZE and LOCAL_RANK; without them the run is a single process and nothing here talks
to a process group.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> CUDA (this process's local GPU) if available, else CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("train.device = 'cuda' but no CUDA device is visible")
        return torch.device("cuda", local_rank)
    return torch.device(name)


def init_distributed(device_name: str = "auto") -> DistInfo:
    """Join the torchrun process group if there is one (NCCL on CUDA, gloo on CPU)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=timedelta(minutes=30))
    return DistInfo(rank, world_size, local_rank, device)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce(tensor: torch.Tensor, op: str = "mean") -> torch.Tensor:
    """In-place all-reduce (sum, mean or max); a no-op in a single process."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return tensor
    if op == "max":
        dist.all_reduce(tensor, dist.ReduceOp.MAX)
    else:
        dist.all_reduce(tensor, dist.ReduceOp.SUM)
        if op == "mean":
            tensor /= dist.get_world_size()
    return tensor


def broadcast_object(obj: object, src: int = 0) -> object:
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def on_rank0(fn: Callable[[], T]) -> T:
    """``fn()`` computed by rank 0 alone and broadcast: every rank gets the same answer (a file
    system view, e.g. which checkpoint is ``latest`` on a network FS, can differ per node).
    An exception on rank 0 is raised on every rank (none is left waiting in a collective)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return fn()
    box: list[object] = [None]
    if dist.get_rank() == 0:
        try:
            box = [(True, fn())]
        except Exception as error:
            box = [(False, error)]
    dist.broadcast_object_list(box, src=0)
    ok, value = box[0]  # type: ignore[misc]
    if not ok:
        raise value  # type: ignore[misc]
    return value  # type: ignore[return-value]


def wrap_model(
    model: nn.Module,
    info: DistInfo,
    strategy: str,
    block_names: list[str],
    param_dtype: torch.dtype | None = None,
) -> nn.Module:
    """DDP (default) or FSDP2 ``fully_shard`` per block then the root; identity when alone.

    ``param_dtype`` (FSDP2): all-gather the parameters in this dtype (bf16 training: half the
    traffic and no fp32 weights under autocast) and reduce gradients in fp32; the sharded
    master weights and the optimizer stay fp32. DDP gets gradient bucket views (no copy into
    the buckets) and 100 MB buckets (fewer all-reduce calls for XL-size models).
    """
    if not info.distributed:
        return model
    if strategy == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        policy = MixedPrecisionPolicy(
            param_dtype=param_dtype, reduce_dtype=torch.float32 if param_dtype else None
        )
        for name in block_names:
            fully_shard(model.get_submodule(name), mp_policy=policy)
        fully_shard(model, mp_policy=policy)
        return model
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [info.device.index] if info.device.type == "cuda" else None
    return DistributedDataParallel(
        model, device_ids=device_ids, gradient_as_bucket_view=True, bucket_cap_mb=100
    )
