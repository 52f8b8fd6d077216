"""Small helpers for distributed data parallel runs started by ``torchrun``.

``torchrun --nproc_per_node N -m affaccel.finetune ...`` sets RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR and MASTER_PORT; ``init_from_env`` reads them (they are torchrun's variables, not
affaccel settings, which is why they are read here and not in affaccel.env) and starts the process
group: gloo on CPU, nccl on GPU. Without torchrun every helper degrades to a single process.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0          # global rank of this process
    world_size: int = 1    # number of processes
    local_rank: int = 0    # rank on this machine (selects the GPU)
    backend: str | None = None  # "gloo" | "nccl" | None when not distributed

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    """True when torchrun's variables describe more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device: str = "cpu", backend: str | None = None,
                  timeout_s: float = 1800.0) -> DistInfo:
    """Join the process group torchrun describes; single-process info when not launched by it.

    Args:
        device: "cpu" or "cuda": picks the default backend (gloo / nccl) and, on CUDA, binds
            this process to GPU LOCAL_RANK.
        backend: force a backend name.
    """
    import datetime

    import torch
    import torch.distributed as dist

    if not launched_by_torchrun():
        return DistInfo()
    try:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_RANK", "0"))
    except (KeyError, ValueError) as e:
        raise RuntimeError(f"WORLD_SIZE>1 but torchrun variable missing or not an integer: {e}") \
            from None
    is_cuda = str(device).startswith("cuda")
    backend = backend or ("nccl" if is_cuda else "gloo")
    if is_cuda:
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=timeout_s))
    return DistInfo(rank, world, local, backend)


def get_info() -> DistInfo:
    """Rank and world size of the current process group (single process when none)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(),
                        int(os.environ.get("LOCAL_RANK", "0")), dist.get_backend())
    return DistInfo()


def rank() -> int:
    """Global rank (0 when not distributed)."""
    return get_info().rank


def world_size() -> int:
    """Number of processes (1 when not distributed)."""
    return get_info().world_size


def is_main() -> bool:
    return get_info().is_main


def wrap_ddp(model, device: str = "cpu"):
    """``DistributedDataParallel(model)``; on CUDA bound to this process's GPU. Identity when
    not distributed. ``model`` must already be on ``device``."""
    import torch
    from torch.nn.parallel import DistributedDataParallel

    if get_info().world_size <= 1:
        return model
    dev = torch.device(device)
    if dev.type == "cuda":
        idx = dev.index if dev.index is not None else torch.cuda.current_device()
        return DistributedDataParallel(model, device_ids=[idx], output_device=idx)
    return DistributedDataParallel(model)


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def broadcast_object(obj, src: int = 0):
    """``obj`` from rank ``src`` on every rank (identity when not distributed)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` when not distributed)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def shard_by_size(sizes, world: int, rank_: int) -> list[int]:
    """Indices of the items rank ``rank_`` of ``world`` takes: greedy, largest item first, to the
    least loaded rank (ties: item order, then the lower rank), so every rank computes the same
    balanced partition from the same sizes. Returned in item order; all indices when world <= 1."""
    if world <= 1:
        return list(range(len(sizes)))
    if not 0 <= rank_ < world:
        raise ValueError(f"rank {rank_} outside world of size {world}")
    load = [0.0] * world
    owner = [0] * len(sizes)
    for i in sorted(range(len(sizes)), key=lambda i: (-float(sizes[i]), i)):
        r = min(range(world), key=lambda k: (load[k], k))
        owner[i] = r
        load[r] += float(sizes[i])
    return [i for i in range(len(sizes)) if owner[i] == rank_]


def all_reduce_sum(value: float, device: str = "cpu") -> float:
    """Sum of a Python number over all ranks."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return value
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item())


def cleanup() -> None:
    """Leave the process group if one was joined (safe to call always)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def main_process_first():
    """Rank 0 runs the body first (e.g. writes a dataset), then the others."""
    info = get_info()
    if not info.is_main:
        barrier()
    try:
        yield
    finally:
        if info.is_main:
            barrier()


__all__ = ["DistInfo", "init_from_env", "get_info", "rank", "world_size", "is_main", "wrap_ddp",
           "barrier", "broadcast_object", "all_gather_object", "shard_by_size",
           "all_reduce_sum", "cleanup", "launched_by_torchrun", "main_process_first"]
