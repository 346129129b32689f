"""Data-parallel training on PyTorch's own engine: torch.distributed + torchrun, gloo on CPU, NCCL on GPU.

    torchrun --nproc-per-node=2 tools/train.py ...                          # one machine
    torchrun --nnodes=2 --node-rank=R --nproc-per-node=G --rdzv-backend=c10d \
        --rdzv-endpoint=HOST:PORT tools/train.py ...                        # several machines

torchrun starts one process per device and sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the
rendezvous; :func:`init_distributed` joins the process group from them (a plain ``python
tools/train.py`` has none of them and stays a single process). The rest is a few small helpers the
training script uses so that one code path serves 1 and N processes: only rank 0 writes files,
TensorBoard and the progress bar; logged losses are averaged over ranks; evaluation is sharded and
the predictions gathered on rank 0; checkpoints hold the unwrapped model (no ``module.`` prefix).

Buffers (BatchNorm's running statistics): each rank's forward updates them from its own part of the
batch, so after a step the ranks hold different ones. DistributedDataParallel's rule
(``broadcast_buffers=True``) is that rank 0's are the model's: it sends them to every rank before
each forward. :func:`broadcast_buffers` applies the same rule after the last step, before anything
looks at the model -- a checkpoint, the sharded evaluation (every shard must be scored by the one
model the checkpoint holds), the end-of-run check that the replicas agree.

Written here because these are thin wrappers over ``torch.distributed`` calls, not a framework.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from detector.errors import ConfigError

__all__ = [
    "Distributed", "all_gather_objects", "barrier", "broadcast_buffers", "init_distributed", "mean_over_ranks",
    "replicas_agree", "shutdown_distributed",
]


@dataclass(frozen=True)
class Distributed:
    """Where this process stands: ``rank`` of ``world_size`` (``local_rank`` on its machine)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> tuple[Distributed, torch.device]:
    """Join torchrun's process group if this process was started by it; returns (ranks, device).

    On CUDA each process takes ``cuda:LOCAL_RANK`` and NCCL; on CPU gloo.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Distributed(), device
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK={local_rank} but this machine has {torch.cuda.device_count()} GPUs")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend, timeout = ("nccl" if device.type == "cuda" else "gloo"), timedelta(minutes=30)
        extra = {"device_id": device} if device.type == "cuda" else {}
        if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
            # Under torchrun the agent hosts the store, and it outlives a restart of the worker
            # group. Plain env:// init keys the process group the same way in every attempt, so
            # after `--max-restarts` a new rank read a killed rank's gloo address ("Gloo
            # connectFullMesh failed ... Connection refused", torch 2.14) -- a race: a minimal
            # all-reduce script under --max-restarts=1 failed or hung in 2 of 3 runs without this and
            # passed 3 of 3 with it. Keys under the attempt number keep each attempt's addresses
            # apart (the end-to-end restart: tests/engine/test_distributed.py).
            attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
            agent = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False, timeout=timeout)
            extra.update(store=dist.PrefixStore(f"detector/attempt_{attempt}", agent), rank=rank, world_size=world_size)
        dist.init_process_group(backend=backend, timeout=timeout, **extra)
    return Distributed(rank=rank, world_size=world_size, local_rank=local_rank), device


def shutdown_distributed() -> None:
    """Destroy the process group when the run ends, as torch.distributed asks, rather than leave it
    to the interpreter's teardown (where one rank of a finished two-node gloo run was seen to abort:
    "terminate called without an active exception"). A no-op without a process group."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def mean_over_ranks(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """The mean of each logged number over the ranks (one all-reduce); unchanged in one process."""
    if not (dist.is_available() and dist.is_initialized()) or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    t /= dist.get_world_size()
    return dict(zip(keys, t.tolist()))


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` in one process."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_buffers(model: torch.nn.Module, src: int = 0) -> None:
    """Give every rank rank ``src``'s buffers (DDP's own rule, applied between its forwards)."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    with torch.no_grad():
        for buffer in model.buffers():
            dist.broadcast(buffer, src=src)


def replicas_agree(model: torch.nn.Module) -> bool:
    """Do all ranks hold the same weights? (Per tensor: a float64 sum and a weighted sum, gathered.)"""
    with torch.no_grad():
        sums = [
            (float(t.double().sum()), float((t.double().flatten() * torch.arange(1, t.numel() + 1, device=t.device,
                                                                                   dtype=torch.float64)).sum()))
            for t in model.state_dict().values() if t.is_floating_point()
        ]
    gathered = all_gather_objects(sums)
    return all(g == gathered[0] for g in gathered)
