"""The torch backend of the training loop (twin of npgpt/train.py), built from pieces other pipelines reuse.

    trainer = Trainer(model, TokenBatches(train_set, settings), settings,
                      eval_sets={"eval_train": ..., "val": ...}, run_log=RunLog("runs/a"))
    trainer.restore(checkpoint)          # optional: continue a run exactly
    history = trainer.fit()

Trainer is a gptcore.engine.training.TrainingBackend: fit() runs TrainingLoop, the loop NumPy runs too
(schedule, evaluation cadence, logging, checkpoints, NaN stop, Ctrl-C, resume). What is torch's here:

    compute_gradients:  for each of A micro-batches (this process's shard):  loss_fn(model, batch) / A  ->  backward
                        (under DDP, gradients are all-reduced only after the last micro-batch: no_sync before)
    clip_gradients:     the global norm                apply_update:  lr(step)  ->  AdamW
    DDP:                rank 0 evaluates, logs and saves; a stop on any process stops all; every rank's RNG saved

Any batch source with next_step() -> [micro-batches] and state_dict()/load_state_dict() plugs in
(TokenBatches for next-token data, LoaderBatches for any DataLoader), and any loss_fn(model, batch) ->
scalar (next_token_loss by default), so finetuning reuses the loop, its evaluation, metrics, plots,
checkpoints, exact resume, NaN stop and Ctrl-C handling. See docs/training.md.

Speed on CUDA: bf16 autocast (parameters and optimizer stay float32), TF32 matmuls,
scaled_dot_product_attention (GPTModel(use_sdpa=True)), fused AdamW, optional torch.compile.
"""
from __future__ import annotations

import math
import os
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from gptcore.arch import flops_per_token
from gptcore.data import SlidingWindowDataset, WindowStream, iterate_batches
from gptcore.engine.lockstep import LockstepSettings
from gptcore.engine.training import TrainingBackend, TrainingLoop, TrainSettings
from gptcore.formats.runs import RunLog
from torchgpt import pick_device
from torchgpt.checkpoint import load_training_checkpoint, save_training_checkpoint
from torchgpt.distributed import COUNT_REDUCES_ENV, DistContext, all_reduce_mean, any_process, count_grad_reduces, \
    gather_objects
from torchgpt.loss import cross_entropy, perplexity
from torchgpt.model import build_model, load_numpy_params
from torchgpt.optim import clip_grad_norm, make_adamw, set_lr

AUTOCAST_CHOICES = ("auto", "float32", "bfloat16")

# Dense bf16 tensor-core peaks (FLOP/s, without sparsity) for the MFU estimate; --peak-tflops overrides.
PEAK_BF16_FLOPS = {"H200": 989e12, "H100 PCIe": 756e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12,
                   "L4": 121e12, "A10G": 70e12, "A10": 125e12, "RTX 4090": 165e12, "RTX 3090": 71e12}


# ---------------------------------------------------------------------------------------------------
# device, precision, speed switches
# ---------------------------------------------------------------------------------------------------

@dataclass
class RuntimeOptions:
    """How to run (not what to learn): device, autocast precision, compile, attention kernel."""
    device: str = "auto"             # auto | cpu | cuda | cuda:N | mps
    dtype: str = "auto"              # autocast dtype: auto (bf16 on CUDA when supported, else float32) | float32 | bfloat16
    compile: bool = False            # torch.compile the model
    compile_backend: str = "inductor"
    sdpa: bool | None = None         # scaled_dot_product_attention; None: on for CUDA


def resolve_autocast_dtype(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `name` on `device` (None: plain float32)."""
    if name not in AUTOCAST_CHOICES:
        raise ValueError(f"unknown --dtype {name!r}; choose one of {', '.join(AUTOCAST_CHOICES)}")
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
    if name == "bfloat16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ValueError("this GPU has no bfloat16 support; use --dtype float32")
        return torch.bfloat16
    return None


def configure_speed(device: torch.device) -> None:
    """TF32 tensor-core matmuls on CUDA (float32 matmuls with a 10-bit mantissa: ~free accuracy-wise for
    training, several times faster on Ampere and newer)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Mixed precision for forward and loss: matmuls in `dtype`, parameters and reductions in float32."""
    return torch.autocast(device_type=device.type, dtype=dtype) if dtype is not None else nullcontext()


def to_device(batch, device: torch.device):
    """A batch (tensor, NumPy array, or a tuple/list/dict of them) on `device`."""
    if isinstance(batch, np.ndarray):
        batch = torch.from_numpy(batch)
    if isinstance(batch, torch.Tensor):
        if device.type == "cuda":
            return batch.pin_memory().to(device, non_blocking=True)
        return batch.to(device)
    if isinstance(batch, dict):
        return {key: to_device(value, device) for key, value in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(value, device) for value in batch)
    return batch


def peak_flops(device: torch.device) -> float | None:
    """The GPU's dense bf16 peak from PEAK_BF16_FLOPS by name, or None (CPU, unknown GPU)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, flops in PEAK_BF16_FLOPS.items():     # "H100 PCIe" is listed before "H100"
        if key in name:
            return flops
    return None


# ---------------------------------------------------------------------------------------------------
# batch sources and losses
# ---------------------------------------------------------------------------------------------------

class TokenBatches:
    """Next-token batches for one optimizer step: the global batch comes from a WindowStream over the
    windows of `dataset`; this process keeps its micro-batch shard for each of the A accumulation steps.
    Items are (X, Y) int64 arrays of shape (B, T)."""

    def __init__(self, dataset: SlidingWindowDataset, settings: TrainSettings, context: DistContext = DistContext()):
        self.dataset, self.context = dataset, context
        self.batch_size, self.accum = settings.batch_size, settings.grad_accum_steps
        self.stream = WindowStream(len(dataset), settings.windows_per_step(context.world_size), seed=settings.seed)
        self.tokens_per_step = self.stream.windows_per_step * dataset.max_length    # global, all processes

    @property
    def epoch(self) -> int:
        return self.stream.epoch

    def next_step(self) -> list[tuple[np.ndarray, np.ndarray]]:
        indices = self.stream.next_step()
        return [self.dataset.batch(WindowStream.shard(indices, k, self.context.rank, self.context.world_size,
                                                      self.batch_size)) for k in range(self.accum)]

    def state_dict(self) -> dict:
        return self.stream.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.stream.load_state_dict(state)


class LoaderBatches:
    """Any iterable of batches as optimizer steps of `grad_accum_steps` micro-batches, epoch after epoch.

    make_loader(epoch) -> an iterable of batches for that epoch (e.g. a DataLoader whose sampler is seeded
    with the epoch; under DDP it must give each rank its own shard). The state is (epoch, batches used in
    it): a resumed run skips the used ones, so the order continues exactly. tokens_of(batch) counts the
    tokens of one micro-batch (default: elements of its first tensor), times the process count.
    """

    def __init__(self, make_loader: Callable[[int], Iterable], grad_accum_steps: int = 1,
                 context: DistContext = DistContext(), tokens_of: Callable | None = None):
        self.make_loader, self.accum, self.context = make_loader, grad_accum_steps, context
        self.tokens_of = tokens_of or (lambda batch: int(np.prod(batch[0].shape)))
        self.epoch, self.position, self._iterator = 0, 0, None
        self.tokens_per_step = 0

    def _next_batch(self):
        for _ in range(2):
            if self._iterator is None:
                self._iterator = iter(self.make_loader(self.epoch))
                for _ in range(self.position):      # resuming inside an epoch: skip what was used
                    next(self._iterator)
            try:
                batch = next(self._iterator)
                self.position += 1
                return batch
            except StopIteration:
                self.epoch, self.position, self._iterator = self.epoch + 1, 0, None
        raise ValueError(f"the loader for epoch {self.epoch} yields no batches; give it some data")

    def next_step(self) -> list:
        batches = [self._next_batch() for _ in range(self.accum)]
        self.tokens_per_step = sum(self.tokens_of(b) for b in batches) * self.context.world_size
        return batches

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position, self._iterator = int(state["epoch"]), int(state["position"]), None


def next_token_loss(model, batch) -> torch.Tensor:
    """Mean cross-entropy of the next-token predictions of one (X, Y) batch."""
    inputs, targets = batch
    return cross_entropy(model(inputs), targets)


@torch.no_grad()
def summed_loss(model, X: np.ndarray, Y: np.ndarray) -> float:
    """The SUM of the next-token cross-entropy over a (B, T) batch (twin of npgpt.train.summed_loss), in eval
    mode on the model's device."""
    device = next(model.parameters()).device
    logits = model(torch.as_tensor(X, device=device))                          # (B, T, V)
    targets = torch.as_tensor(Y, device=device)
    return float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                   targets.reshape(-1), reduction="sum"))


def ordered_batches(dataset, batch_size: int) -> Callable[[], Iterable]:
    """An eval set: the batches of `dataset` in order (no shuffle, last short batch kept)."""
    return lambda: iterate_batches(dataset, batch_size, shuffle=False, drop_last=False)


# ---------------------------------------------------------------------------------------------------
# the loop
# ---------------------------------------------------------------------------------------------------

def _loop_attribute(name: str, doc: str) -> property:
    """A Trainer attribute that is its TrainingLoop's (readable and settable)."""
    return property(lambda self: getattr(self.loop, name), lambda self, value: setattr(self.loop, name, value),
                    doc=doc)


class Trainer(TrainingBackend):
    """Trains `model` (a GPTModel, or any nn.Module with .config for checkpoints) with AdamW: the torch backend
    of gptcore.engine.training.TrainingLoop (which runs fit) with DDP, autocast and compile.

    batches: TokenBatches / LoaderBatches (or anything with next_step, state_dict, load_state_dict,
    tokens_per_step). eval_sets: {name: () -> iterable of micro-batches}; each evaluation logs
    <name>_loss and <name>_perplexity, the mean loss over the examples of the first settings.eval_batches
    global batches (eval_batches x grad_accum_steps x processes micro-batches, on rank 0).
    extra_eval(model) -> dict adds more numbers at each evaluation (e.g. accuracy).
    run_log: the run folder (metrics, plot, checkpoints); None trains without writing anything.
    sample_fn(model) -> str: a generation logged at each evaluation (the model in eval mode). on_step(trainer): after every step.

    Under DDP every process runs the loop: rank 0 alone evaluates, logs and writes checkpoints, a Ctrl-C on
    any process stops all of them at the same step, and checkpoints hold every rank's RNG state.
    """

    name = "torch"

    def __init__(self, model: torch.nn.Module, batches, settings: TrainSettings, *,
                 loss_fn: Callable = next_token_loss, eval_sets: dict[str, Callable[[], Iterable]] | None = None,
                 extra_eval: Callable | None = None, runtime: RuntimeOptions = RuntimeOptions(),
                 device: torch.device | None = None, context: DistContext = DistContext(),
                 run_log: RunLog | None = None, metadata: dict | None = None, sample_fn: Callable | None = None,
                 on_step: Callable | None = None, progress: bool = True, peak_flops_per_device: float | None = None):
        self.settings, self.batches, self.loss_fn = settings, batches, loss_fn
        self.eval_sets, self.extra_eval = dict(eval_sets or {}), extra_eval
        self.context, self.runtime, self.is_main = context, runtime, context.is_main
        self.device = device if device is not None else pick_device(runtime.device)
        self.metadata, self.sample_fn, self.on_step = dict(metadata or {}), sample_fn, on_step
        self.progress = progress and context.is_main
        self.autocast_dtype = resolve_autocast_dtype(runtime.dtype, self.device)
        configure_speed(self.device)

        self.model = model.to(self.device)       # the plain module: checkpoints, evaluation, optimizer
        if self.device.type == "cuda" and hasattr(model, "check_id_range"):
            model.check_id_range = False         # the data was checked once; skip a host sync per forward
        self.optimizer = make_adamw(model, lr=settings.lr, weight_decay=settings.weight_decay, betas=settings.betas,
                                    **({"fused": True} if self.device.type == "cuda" else {}))
        compile_ = (lambda module: torch.compile(module, backend=runtime.compile_backend)) if runtime.compile \
            else (lambda module: module)
        # Evaluation (rank 0 alone) must not go through DDP, whose forward may talk to the other processes.
        self.eval_model = compile_(model)
        self.ddp_model = None                    # under DDP: for no_sync and comm hooks
        self.train_model = self.eval_model
        if context.is_distributed:
            self.ddp_model = DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
            # compile(DDP(model)), as PyTorch recommends: dynamo then splits the graph at DDP's gradient
            # buckets, so the all-reduces overlap the backward (DDP(compile(model)) gives one graph and
            # reduces after it).
            self.train_model = compile_(self.ddp_model)
        self._reduces: dict | None = None          # gradient all-reduce rounds of this step, when counted
        if self.ddp_model is not None and os.environ.get(COUNT_REDUCES_ENV):
            self._reduces = {}
            count_grad_reduces(self.ddp_model, self._reduces)

        config, windows = getattr(model, "config", None), getattr(batches, "dataset", None)
        self.flops_per_token = (flops_per_token(config, windows.max_length)
                                if config is not None and isinstance(windows, SlidingWindowDataset) else None)
        self.peak_flops = peak_flops_per_device or peak_flops(self.device)
        self.loop = TrainingLoop(self, settings, run_log=run_log, progress=progress, on_step=self._after_step)

    # ----- the run's counters live in the loop -------------------------------------------------------------

    step = _loop_attribute("step", "optimizer steps taken, the whole run (across resumes)")
    tokens_seen = _loop_attribute("tokens_seen", "tokens trained on, all processes, the whole run")
    elapsed = _loop_attribute("elapsed", "seconds spent in steps (evaluation left out), the whole run")
    last_checkpoint = _loop_attribute("last_checkpoint", "the newest checkpoint saved or restored, or None")
    run_log = _loop_attribute("run_log", "the run folder, or None")

    def _after_step(self, step: int) -> None:
        if self.on_step is not None:
            self.on_step(self)

    # ----- the public API ----------------------------------------------------------------------------------

    def fit(self) -> list[dict]:
        """Steps until settings.max_steps; evaluates, logs, plots and checkpoints on the way; returns the
        logged entries. NaN/inf: NonFiniteLossError. Ctrl-C/SIGTERM: checkpoint, then TrainingInterrupted."""
        return self.loop.fit()

    def train_step(self) -> dict:
        """One optimizer step; returns {loss, grad_norm, lr, tokens, seconds}. Raises NonFiniteLossError
        (parameters untouched) when the loss is NaN or inf."""
        return self.loop.train_step()

    def training_state(self) -> dict:
        """Everything but the model and optimizer that an exact resume needs (a collective under DDP)."""
        return self.loop.training_state()

    def save_checkpoint(self) -> Path | None:
        """A checkpoint of the current step in the run folder (every process must call it under DDP)."""
        return self.loop.save_checkpoint()

    def restore(self, checkpoint: str | Path) -> dict:
        """Model, optimizer, data position, RNG, step and counters from a checkpoint; returns its training state.

        A checkpoint from another process count restores rank 0's RNG on every process (exact only for the
        same count); the data position carries over whatever the count.
        """
        _, state = load_training_checkpoint(checkpoint, self.model, self.optimizer)
        if state is None or "step" not in state:
            raise ValueError(f"{checkpoint} holds no training state (model weights only); start a new run from it "
                             f"with --init-from instead of --resume")
        self.loop.resume(state)
        self.last_checkpoint = Path(checkpoint)
        return state

    def mfu(self, tokens_per_sec: float) -> float | None:
        """Model FLOPs utilisation: achieved training FLOP/s per device over the device's bf16 peak."""
        if self.flops_per_token is None or self.peak_flops is None:
            return None
        return self.flops_per_token * tokens_per_sec / self.context.world_size / self.peak_flops

    def summary(self) -> dict:
        """Throughput of this session's steps (the first left out when there are more: compile/warm-up)."""
        session = self.loop.session
        seconds, tokens = session["seconds"], session["tokens"]
        tokens_per_sec = tokens / seconds if seconds > 0 else math.nan
        return {"steps": session["steps"], "tokens": tokens, "seconds": seconds,
                "tokens_per_sec": tokens_per_sec, "mfu": self.mfu(tokens_per_sec) if seconds > 0 else None}

    # ----- the backend: one step ---------------------------------------------------------------------------

    @property
    def epoch(self) -> int | None:
        return getattr(self.batches, "epoch", None)

    def compute_gradients(self) -> tuple[float, int]:
        """Forward and backward of this process's micro-batches (the loss of each divided by their count);
        under DDP the gradients are all-reduced after the last one only (no_sync before)."""
        if self._reduces is not None:
            self._reduces["reduces"] = 0
        micro_batches = self.batches.next_step()
        self.train_model.train()
        accum = len(micro_batches)
        total = torch.zeros((), device=self.device)
        for k, batch in enumerate(micro_batches):
            batch = to_device(batch, self.device)
            last = k == accum - 1
            sync = self.ddp_model.no_sync() if self.ddp_model is not None and not last else nullcontext()
            with sync:
                with autocast(self.device, self.autocast_dtype):
                    loss = self.loss_fn(self.train_model, batch)
                (loss / accum).backward()
            total += loss.detach().float()
        loss_value = float(all_reduce_mean(total / accum, self.context).item())
        return loss_value, self.batches.tokens_per_step

    def clip_gradients(self, max_norm: float) -> float:
        return float(clip_grad_norm(self.model.parameters(), max_norm))

    def apply_update(self, lr: float) -> None:
        set_lr(self.optimizer, lr)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def discard_gradients(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def step_metrics(self) -> dict:
        return {"grad_reduces": self._reduces["reduces"]} if self._reduces is not None else {}

    # ----- the backend: evaluation -------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self) -> dict:
        """<name>_loss and <name>_perplexity for every eval set (rank 0 only; {} elsewhere), plus extra_eval's."""
        if not self.context.is_main:
            return {}
        self.model.eval()
        results = {}
        # settings.eval_batches counts GLOBAL batches, so the evaluated examples do not depend on how the
        # global batch is split into micro-batches and processes.
        micro_batches = self.settings.eval_batches * self.settings.grad_accum_steps * self.context.world_size
        for name, make_batches in self.eval_sets.items():
            total, count = torch.zeros((), device=self.device), 0
            for i, batch in enumerate(make_batches()):
                if i >= micro_batches:
                    break
                rows = len(batch[0])           # a batch mean weighted by its rows: the mean over examples
                with autocast(self.device, self.autocast_dtype):
                    total += self.loss_fn(self.eval_model, to_device(batch, self.device)).float() * rows
                count += rows
            mean = float((total / count).item()) if count else math.nan
            results[f"{name}_loss"], results[f"{name}_perplexity"] = mean, perplexity(mean)
        if self.extra_eval is not None:
            results.update(self.extra_eval(self.model))
        self.model.train()
        return results

    def sample(self) -> str | None:
        """sample_fn's generation on rank 0 (the model in eval mode), else None."""
        if self.sample_fn is None or not self.context.is_main:
            return None
        self.model.eval()
        text = self.sample_fn(self.model)
        self.model.train()
        return text

    # ----- the backend: state ------------------------------------------------------------------------------

    def data_state(self) -> dict:
        return self.batches.state_dict()

    def load_data_state(self, state: dict) -> None:
        self.batches.load_state_dict(state)

    def rng_state(self) -> dict:
        state = {"torch_cpu": torch.get_rng_state().numpy().copy()}
        if self.device.type == "cuda":
            state["torch_cuda"] = torch.cuda.get_rng_state(self.device).numpy().copy()
        return state

    def set_rng_state(self, state: dict) -> None:
        torch.set_rng_state(torch.as_tensor(np.asarray(state["torch_cpu"]), dtype=torch.uint8))
        if self.device.type == "cuda" and state.get("torch_cuda") is not None:
            torch.cuda.set_rng_state(torch.as_tensor(np.asarray(state["torch_cuda"]), dtype=torch.uint8), self.device)

    def backend_state(self) -> dict:
        """rank 0's RNG state (and under DDP every rank's, by_rank) and the process count; a collective."""
        by_rank = gather_objects(self.rng_state(), self.context)
        rng = dict(by_rank[0])
        if self.context.is_distributed:
            rng["by_rank"] = by_rank
        return {"rng": rng, "world_size": self.context.world_size}

    def load_backend_state(self, training_state: dict) -> None:
        """This rank's RNG when the process count is the same, else rank 0's (a NumPy checkpoint has none)."""
        rng = training_state.get("rng") or {}
        by_rank = rng.get("by_rank")
        if by_rank and int(training_state.get("world_size", 1)) == self.context.world_size:
            self.set_rng_state(by_rank[self.context.rank])
        elif "torch_cpu" in rng:
            self.set_rng_state(rng)

    def write_checkpoint(self, path: Path, training_state: dict) -> Path:
        return save_training_checkpoint(path, self.model, self.optimizer, training_state=training_state,
                                        metadata={"backend": "torch", **self.metadata})

    def stop_everywhere(self, requested: bool) -> bool:
        return any_process(requested, self.context, self.device)


# ---------------------------------------------------------------------------------------------------
# the torch twin of the lockstep demo (gptcore.engine.lockstep)
# ---------------------------------------------------------------------------------------------------

class TorchTwin:
    """The torch side of gptcore.engine.lockstep: a GPTModel holding a copy of the NumPy parameters, its AdamW."""

    def __init__(self, params: dict, config, settings: LockstepSettings, dtype=torch.float32):
        self.config = config
        self.model = load_numpy_params(build_model(config).to(dtype), params).train()
        self.optimizer = make_adamw(self.model, lr=settings.lr, weight_decay=settings.weight_decay)
        self.grad_clip = settings.grad_clip

    def step(self, X: np.ndarray, Y: np.ndarray) -> float:
        """One optimizer step on batch (X, Y); returns the batch loss before the update."""
        self.optimizer.zero_grad(set_to_none=True)
        loss = cross_entropy(self.model(torch.from_numpy(X)), torch.from_numpy(Y))
        loss.backward()
        if self.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        return float(loss.detach())

    @torch.no_grad()
    def evaluate(self, dataset, batch_size: int, max_batches: int) -> float:
        """Mean loss over the first max_batches batches in order (eval mode), as npgpt.train.evaluate_loss does."""
        self.model.eval()
        losses = []
        for i, (X, Y) in enumerate(iterate_batches(dataset, batch_size, shuffle=False, drop_last=False)):
            if i >= max_batches:
                break
            losses.append(float(cross_entropy(self.model(torch.from_numpy(X)), torch.from_numpy(Y))))
        self.model.train()
        return float(np.mean(losses)) if losses else math.nan
