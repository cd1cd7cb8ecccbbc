"""Learner ranks as one torch.distributed group: joining it, FSDP2 sharding, DTensor access, and
the cross-rank reductions of the training step (sums, maxima; nccl on CUDA, gloo on CPU)."""

from __future__ import annotations

from datetime import timedelta

import torch
import torch.distributed as dist


def join_learner_group(rank: int, world_size: int, dist_addr: str | None, device: torch.device,
                       timeout_s: float) -> None:
    """Join the default process group of the learner ranks at tcp://`dist_addr` (nccl when `device`
    is CUDA, gloo otherwise). Nothing to do for one rank or when this process already joined."""
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, init_method=f"tcp://{dist_addr}", rank=rank, world_size=world_size,
                                timeout=timedelta(seconds=timeout_s))


def shard_model(model) -> None:
    """FSDP2 in place: each text decoder layer is its own unit, the rest of the model the root one."""
    from torch.distributed.fsdp import fully_shard

    for layer in model.model.language_model.layers:
        fully_shard(layer)
    fully_shard(model)


def local_tensor(t):
    """This rank's shard of a DTensor; any other tensor as is."""
    return t.to_local() if hasattr(t, "to_local") else t


def full_tensor(t):
    """The whole tensor of a DTensor (a collective: every rank must call it); any other tensor as is."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def _reduce_device(device: torch.device):
    return device if dist.get_backend() == "nccl" else "cpu"


def count_max(n: int, world: int, device: torch.device) -> int:
    """The largest `n` over the `world` ranks (`n` itself on one rank)."""
    if world == 1:
        return n
    t = torch.tensor([n], device=_reduce_device(device))
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def sum_all(values: list[float], world: int, device: torch.device) -> list[float]:
    """Element-wise sum of `values` over the `world` ranks, in float64 (`values` itself on one rank)."""
    if world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=_reduce_device(device))
    dist.all_reduce(t)
    return t.tolist()


def max_all(values: list[float], world: int, device: torch.device) -> list[float]:
    """Element-wise max of `values` over the `world` ranks, in float64 (`values` itself on one rank)."""
    if world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=_reduce_device(device))
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist()
