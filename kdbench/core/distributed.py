"""One run on several processes: `torchrun --nproc-per-node N -m kdbench run ...`.

Every rank runs the same sweep in the same order (in-process, no cohorts). A run's global
batch (the recipe's batch size) is drawn and augmented identically on every rank from the
seeded generator, and each rank trains on its slice of it (`shard`); after each backward the
gradients of everything trained are averaged across ranks (`average_gradients`), which is
what DistributedDataParallel computes, done explicitly so that the method's and the
wrappers' trainable modules are covered without wrapping the engine's calls. The frozen
teacher is replicated. BatchNorm statistics stay per rank (SyncBatchNorm needs CUDA), so a
run's numbers depend on the world size: it is part of the spec and of the record. Only rank 0
writes checkpoints, records and weights. gloo on CPU, NCCL on CUDA.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def launched() -> bool:
    """Started by torchrun (or another launcher that sets the rendezvous variables), on any number
    of processes: one process joins a process group too (tests/gpu_check.sh checks NCCL that way)."""
    return "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ


def init_from_env(device: str) -> None:
    if launched() and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.device(device).type == "cuda" else "gloo")


def backend() -> str | None:
    """The process group's back-end (gloo, nccl), None outside one."""
    return dist.get_backend() if dist.is_available() and dist.is_initialized() else None


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def shard(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """This rank's slice of a global batch (every `world_size`-th sample, from `rank`)."""
    world = world_size()
    if world == 1:
        return tensors
    return tuple(tensor[rank() :: world] for tensor in tensors)


def average_gradients(parameters) -> None:
    """Average the gradients of `parameters` over the ranks (no-op in one process)."""
    world = world_size()
    if world == 1:
        return
    for parameter in parameters:
        if parameter.grad is not None:  # the same on every rank: they run the same graph
            dist.all_reduce(parameter.grad)
            parameter.grad.div_(world)
