"""Process-group helpers: one process or ``torchrun`` (gloo on CPU, nccl on GPU)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np
import torch

logger = logging.getLogger("neurodec")


@dataclass(frozen=True)
class Processes:
    """Where this process stands among the training processes."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    started_here: bool = False  # whether this module created the process group

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def start(device: str) -> Processes:
    """Join the process group ``torchrun`` describes in the environment (or stay single).

    The backend is nccl when training on CUDA, gloo otherwise.
    """
    import torch.distributed as dist

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Processes()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_initialized():
        return Processes(dist.get_world_size(), dist.get_rank(), local_rank, started_here=False)
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend)
    logger.info("process %d of %d joined the %s process group", rank, world_size, backend)
    return Processes(world_size, rank, local_rank, started_here=True)


def stop(processes: Processes) -> None:
    import torch.distributed as dist

    if processes.started_here and dist.is_initialized():
        dist.destroy_process_group()


def local_share(indices: np.ndarray, processes: Processes) -> np.ndarray:
    """This rank's contiguous share of a global batch; shares concatenated in rank order
    give the global batch back (the order the contrastive loss gathers them in)."""
    if not processes.distributed:
        return indices
    return np.array_split(np.asarray(indices), processes.world_size)[processes.rank]


def gather_rows(tensor: torch.Tensor, processes: Processes) -> torch.Tensor:
    """Concatenate every rank's rows (rank order) on every rank; no gradient."""
    if not processes.distributed:
        return tensor
    from neurodec.losses import gather_with_grad

    with torch.no_grad():
        return gather_with_grad(tensor.contiguous())


def barrier(processes: Processes) -> None:
    import torch.distributed as dist

    if processes.distributed:
        dist.barrier()


def broadcast_object(value, processes: Processes):
    """Rank 0's value on every rank."""
    import torch.distributed as dist

    if not processes.distributed:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]
