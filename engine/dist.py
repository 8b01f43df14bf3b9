"""Data parallelism under ``torchrun``: which process this is, and the few collectives a run needs.

    torchrun --nproc_per_node=4 train.py --recipe hta_fgvc --dataset cub ...

torchrun starts one process per device and sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; without it nothing here
does anything (a world of one). ``--batch-size`` stays the global batch (the papers'): each step every rank takes
its slice of the same global batch (``data.Loader(shard=...)``), gradients are averaged by
``DistributedDataParallel`` with each rank's loss scaled so the average is the global batch's mean, evaluation
splits the test set so each image counts once, and rank 0 alone writes the run folder (docs/ARCHITECTURE.md).
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as tdist

__all__ = ["World", "world_from_env", "check", "init", "shutdown", "active", "barrier", "all_sum", "all_gather_objects",
           "rank0_first", "wrap", "agree"]


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def world_from_env() -> World:
    """The process's place in a torchrun launch (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``); a world of one without."""
    env = os.environ
    return World(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))


def check(world: World, batch_size: int, fgvc_source: str) -> None:
    """What a run of ``world.size`` processes needs, checked before any starts work: one RunError otherwise."""
    from .errors import RunError

    if batch_size % world.size:
        fit = max(world.size, batch_size // world.size * world.size)
        raise RunError(f"--batch-size {batch_size} is the global batch and must divide by the {world.size} processes "
                       f"torchrun started; use --batch-size {fit} or another --nproc_per_node")
    if world.size > 1 and fgvc_source != "cache":
        raise RunError("fgvc_source images trains in one process; under torchrun use fgvc_source cache (the decoded "
                       "images, sharded over the processes)")


def init(world: World, device_type: str) -> str | None:
    """Join the process group (NCCL on GPUs, gloo on the CPU) and return this rank's device (``cuda:<local rank>``
    on GPUs); nothing for a world of one."""
    if world.size == 1:
        return None
    if device_type == "cuda":
        torch.cuda.set_device(world.local_rank)
    tdist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return f"cuda:{world.local_rank}" if device_type == "cuda" else "cpu"


def shutdown() -> None:
    if active():
        tdist.destroy_process_group()


def active() -> bool:
    return tdist.is_available() and tdist.is_initialized()


def barrier() -> None:
    if active():
        tdist.barrier()


def all_sum(t: torch.Tensor) -> torch.Tensor:
    """``t`` summed over the ranks (in place; ``t`` itself in a world of one). No host sync on its own."""
    if active():
        tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
    return t


def all_gather_objects(obj) -> list:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` in a world of one."""
    if not active():
        return [obj]
    out = [None] * tdist.get_world_size()
    tdist.all_gather_object(out, obj)
    return out


def agree(ok: bool) -> bool:
    """Whether every rank is ``ok``: a rank that stopped on bad input (rank 0 alone checks the run folder) makes all
    of them stop, instead of leaving the others waiting in a collective."""
    if not active():
        return ok
    on = f"cuda:{torch.cuda.current_device()}" if tdist.get_backend() == "nccl" else "cpu"
    flag = torch.tensor([1 if ok else 0], dtype=torch.int64, device=on)
    tdist.all_reduce(flag, op=tdist.ReduceOp.MIN)
    return bool(flag.item())


@contextlib.contextmanager
def rank0_first(world: World):
    """Rank 0 runs the block first (e.g. decodes a split into the cache), the others after it, then all go on."""
    if world.size > 1 and not world.main:
        barrier()
    yield
    if world.size > 1 and world.main:
        barrier()


def wrap(model: torch.nn.Module, world: World) -> torch.nn.Module:
    """``DistributedDataParallel`` around ``model`` for training (its trainable tensors' gradients averaged over the
    ranks in backward); the model itself in a world of one."""
    if world.size == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    on_gpu = next(model.parameters()).device.type == "cuda"
    return DistributedDataParallel(model, device_ids=[world.local_rank] if on_gpu else None)
