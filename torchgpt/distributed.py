"""Multi-process data-parallel training (DistributedDataParallel) through torchrun.

    torchrun --nproc_per_node=N -m gpt2cli train ...       # or: gpt2 train --nproc N ...

torchrun starts N copies of the command with RANK, LOCAL_RANK and WORLD_SIZE set; init_distributed()
joins them into one process group (NCCL on CUDA, gloo on CPU). Each process trains on its own shard of
every global batch (npgpt.data.WindowStream.shard), DDP averages the gradients, so N processes with
micro-batch B give the same updates as one process with batch N * B. Only rank 0 logs and writes files.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: rank among world_size processes, local_rank on its machine."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(device_name: str = "auto") -> tuple[DistContext, torch.device]:
    """(DistContext, device) for this process; joins the process group when started by torchrun.

    Under torchrun each process takes cuda:LOCAL_RANK when CUDA is used, else the CPU with gloo.
    """
    from torchgpt import pick_device
    if not launched_by_torchrun():
        return DistContext(), pick_device(device_name)
    context = DistContext(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))
    device = pick_device(device_name)
    if device.type == "cuda":
        if context.local_rank >= torch.cuda.device_count():
            raise ValueError(f"local rank {context.local_rank} has no GPU ({torch.cuda.device_count()} visible); "
                             f"use --nproc <= the number of GPUs")
        device = torch.device("cuda", context.local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    elif device.type == "cpu":
        backend = "gloo"
    else:
        raise ValueError(f"distributed training supports CUDA (NCCL) and CPU (gloo), not {device.type}; "
                         f"use --device cuda or cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=context.rank, world_size=context.world_size)
    return context, device


def shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_mean(value: torch.Tensor, context: DistContext) -> torch.Tensor:
    """The mean of `value` over all processes (SUM then divide: gloo has no AVG)."""
    if not context.is_distributed:
        return value
    value = value.clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value / context.world_size


def any_process(flag: bool, context: DistContext, device: torch.device) -> bool:
    """True on every process when `flag` is true on any (all must then take the same branch)."""
    if not context.is_distributed:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def gather_objects(obj, context: DistContext) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every process (picklable objects, e.g. RNG states)."""
    if not context.is_distributed:
        return [obj]
    gathered = [None] * context.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def free_port() -> int:
    """A TCP port that is free now (the OS picks it for a socket bound to port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def torchrun_command(nproc: int, argv: list[str], module: str = "gpt2cli", port: int | None = None) -> list[str]:
    """The torchrun command line that runs `python -m <module> <argv>` in nproc processes on this machine.

    Without `port`: --standalone, whose rendezvous store binds port 0 (the OS picks a free port, and the
    processes share that store), so nothing can take the port between choosing and binding it. With
    `port`: a fixed rendezvous on 127.0.0.1:port (e.g. one that free_port() found).
    """
    head = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--nnodes=1"]
    where = ["--standalone"] if port is None else ["--master_addr=127.0.0.1", f"--master_port={port}"]
    return [*head, *where, "-m", module, *argv]


def launch(nproc: int, argv: list[str], module: str = "gpt2cli") -> int:
    """Runs the command under torchrun with nproc processes; returns its exit code."""
    if nproc < 2:
        raise ValueError(f"--nproc must be at least 2 to launch several processes, got {nproc}")
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    return subprocess.call(torchrun_command(nproc, argv, module), env=env)
