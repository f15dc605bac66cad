"""Multi-process training under ``torchrun``: process group, device, sharding and reductions.

When ``torchrun`` (or ``python -m torch.distributed.run``) starts the trainer it sets ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK``; :func:`setup` then joins the process group (NCCL on CUDA, gloo on
CPU, so two CPU processes work for tests) and pins each process to ``cuda:LOCAL_RANK``. A plain
``python``/``sdedge`` start is a world of one and touches nothing.

Data stay in memory in every process; each epoch all processes draw the same seeded permutation and
each keeps every ``world``-th index (padded to a multiple of the world size, like
``DistributedSampler``). Evaluation splits the examples into contiguous shards and sums the counts.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as td


@dataclass
class DistInfo:
    rank: int
    world: int
    local_rank: int
    device: torch.device
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    from .config import TrainConfigError

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise TrainConfigError(f"device {name!r} requested but CUDA is not available (torch "
                                   f"{torch.__version__}); use --device cpu or auto")
        return torch.device(name if ":" in name else f"cuda:{local_rank}")
    return torch.device("cpu")


def setup(device_name: str) -> DistInfo:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank)
    if world <= 1:
        return DistInfo(0, 1, 0, device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    here = False
    if not td.is_initialized():
        td.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world)
        here = True
    return DistInfo(rank, world, local_rank, device, here)


def cleanup(dist: DistInfo) -> None:
    if dist.initialized_here and td.is_initialized():
        td.destroy_process_group()


def barrier(dist: DistInfo) -> None:
    if dist.enabled:
        td.barrier()


def shard_permutation(perm: torch.Tensor, dist: DistInfo) -> torch.Tensor:
    """This process's share of an epoch's permutation (padded so every process gets as many)."""
    if not dist.enabled:
        return perm
    n = perm.numel()
    total = -(-n // dist.world) * dist.world
    if total > n:
        perm = torch.cat([perm, perm[: total - n]])
    return perm[dist.rank::dist.world]


def shard_range(n: int, dist: DistInfo) -> tuple[int, int]:
    """Contiguous ``[start, stop)`` of ``n`` examples for this process (evaluation: no padding)."""
    return n * dist.rank // dist.world, n * (dist.rank + 1) // dist.world


def all_reduce_sum(t: torch.Tensor, dist: DistInfo) -> torch.Tensor:
    if dist.enabled:
        t = t.clone()
        td.all_reduce(t, op=td.ReduceOp.SUM)
    return t
