"""Multi-process data-parallel training (DistributedDataParallel) through torchrun.

    torchrun --nproc_per_node=N -m gpt2cli train ...       # or: gpt2 train --nproc N ...

torchrun starts N copies of the command with RANK, LOCAL_RANK and WORLD_SIZE set; init_distributed()
joins them into one process group (NCCL on CUDA, gloo on CPU). Each process trains on its own shard of
every global batch (gptcore.data.WindowStream.shard), DDP averages the gradients, so N processes with
micro-batch B give the same updates as one process with batch N * B. Only rank 0 logs and writes files.

`gpt2 train --nproc N` (launch) runs torchrun through torchrun_main, in its own session: a Ctrl-C
reaches the launcher only, which passes it on once; torchrun passes it to the workers, which finish the
step, save a checkpoint and exit; the command then exits 130 with rank 0's one message.
"""
from __future__ import annotations

import gc
import logging
import os
import signal
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


# Diagnostic: when set, a DDP run logs `grad_reduces` per step (gradient all-reduce rounds; 1 when no_sync
# keeps the other micro-batches local). tests/test_train_ddp.py uses it; it costs a Python hook per bucket.
COUNT_REDUCES_ENV = "GPT2_COUNT_GRAD_REDUCES"


class ProcessSetupError(ValueError):
    """A problem only some processes meet while joining the group (e.g. no GPU for this local rank): every
    process that meets it reports it, unlike the errors every rank meets alike, which only rank 0 prints."""


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_rank_zero() -> bool:
    """Whether this process speaks for the run on the console: rank 0, or a process not started by torchrun
    (RANK is only trusted with WORLD_SIZE > 1, so a stray RANK in the environment silences nothing)."""
    return not launched_by_torchrun() or int(os.environ.get("RANK", "0")) == 0


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
            raise ProcessSetupError(f"local rank {context.local_rank} has no GPU ({torch.cuda.device_count()} "
                                    f"visible); use --nproc <= the number of GPUs")
        device = torch.device("cuda", context.local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    elif device.type == "cpu":
        backend = "gloo"
    else:
        raise ProcessSetupError(f"distributed training supports CUDA (NCCL) and CPU (gloo), not {device.type}; "
                                f"use --device cuda or cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=context.rank, world_size=context.world_size)
    return context, device


def shutdown_distributed() -> None:
    """Destroys the process group, after every object that still holds it (a DDP model's reducer caught in a
    reference cycle) is collected: a gloo process group that outlives destroy_process_group() is torn down
    during interpreter finalization instead, where its C++ threads abort the process now and then
    ("terminate called without an active exception", seen in about 1 run of 15 here)."""
    if dist.is_available() and dist.is_initialized():
        gc.collect()
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


def count_grad_reduces(ddp_model, counter: dict) -> None:
    """Counts the gradient all-reduce rounds of `ddp_model` in counter["reduces"] (one per backward that
    synchronises, whatever the number of buckets), reducing exactly as DDP's default does."""
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    def counting_allreduce(process_group, bucket):
        if bucket.is_last():
            counter["reduces"] += 1
        return allreduce_hook(process_group, bucket)
    counter["reduces"] = 0
    ddp_model.register_comm_hook(state=None, hook=counting_allreduce)


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
    """The command line that runs `python -m <module> <argv>` in nproc processes on this machine: torchrun
    (torch.distributed.run) with the console manners of torchrun_main.

    Without `port`: --standalone, whose rendezvous store binds port 0 (the OS picks a free port, and the
    processes share that store), so nothing can take the port between choosing and binding it. With
    `port`: a fixed rendezvous on 127.0.0.1:port (e.g. one that free_port() found).
    """
    head = [sys.executable, "-m", "torchgpt.distributed", f"--nproc_per_node={nproc}", "--nnodes=1"]
    where = ["--standalone"] if port is None else ["--master_addr=127.0.0.1", f"--master_port={port}"]
    return [*head, *where, "-m", module, *argv]


def launch(nproc: int, argv: list[str], module: str = "gpt2cli") -> int:
    """Runs the command under torchrun with nproc processes; returns its exit code, 130 after Ctrl-C/SIGTERM.

    torchrun runs in a session of its own, so a Ctrl-C at the terminal reaches this process only. The
    first SIGINT/SIGTERM/SIGHUP is passed on to torchrun, which passes it to the workers (each in a session
    of its own too): exactly one signal each, so they finish the step, save a checkpoint and exit, and
    rank 0 says where. Later signals are ignored while that happens (torchrun kills workers that take
    longer than its shutdown timeout), so the command never returns before the checkpoint is written.
    """
    if nproc < 2:
        raise ValueError(f"--nproc must be at least 2 to launch several processes, got {nproc}")
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    process = subprocess.Popen(torchrun_command(nproc, argv, module), env=env, start_new_session=True)
    forwarded: list[int] = []

    def pass_on_once(signum, frame):
        if not forwarded:
            forwarded.append(signum)
            process.send_signal(signum)
    previous = {signum: signal.signal(signum, pass_on_once) for signum in (signal.SIGINT, signal.SIGTERM,
                                                                           signal.SIGHUP)}
    try:
        code = process.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if forwarded and forwarded[0] in (signal.SIGINT, signal.SIGTERM):
        return 130                  # as one process does after Ctrl-C: stopped at a step, checkpoint saved
    return code


def _quiet_torchrun_logs() -> None:
    """torchrun's own log lines off, unless the user set LOGLEVEL to see them: they repeat what the workers
    said ("failed (exitcode: 2)" after rank 0's one-line error; "Received 2 death signal" and a "Sending
    process ... closing signal" per worker on Ctrl-C). What torchrun_main re-raises still prints in full."""
    if "LOGLEVEL" in os.environ:
        return
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("torch.distributed"):
            logging.getLogger(name).setLevel(logging.CRITICAL)


def torchrun_main(argv: list[str]) -> int:
    """torchrun with arguments `argv`, its exit code without its tracebacks for what the workers already
    reported: a stop by signal (the workers saved a checkpoint and rank 0 said so) gives 128 + the signal,
    a worker that exited by itself with an error code (after printing its error) gives that code. A worker
    killed by a signal (e.g. out of memory) still gets torchrun's full failure report."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main
    _quiet_torchrun_logs()
    try:
        main(argv)
    except SignalException as stop:
        return 128 + int(stop.sigval)
    except ChildFailedError as failed:
        _, first = failed.get_first_failure()
        if first.exitcode > 0:
            return first.exitcode
        raise
    return 0


if __name__ == "__main__":
    sys.exit(torchrun_main(sys.argv[1:]))
