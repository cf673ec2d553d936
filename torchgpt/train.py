"""The torch training loop (twin of npgpt/train.py), built from pieces other pipelines reuse.

    trainer = Trainer(model, TokenBatches(train_set, settings), settings,
                      eval_sets={"eval_train": ..., "val": ...}, run_log=RunLog("runs/a"))
    trainer.restore(checkpoint)          # optional: continue a run exactly
    history = trainer.fit()

One optimizer step:
    for each of A micro-batches (this process's shard):  loss_fn(model, batch) / A  ->  backward
        (under DDP, gradients are all-reduced only after the last micro-batch: no_sync before)
    ->  stop on a NaN/inf loss (before the update)  ->  clip the global norm  ->  lr(step)  ->  AdamW

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
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
from tqdm.auto import tqdm

from gptcore.arch import flops_per_token
from gptcore.data import SlidingWindowDataset, WindowStream, iterate_batches
from gptcore.formats.runs import NonFiniteLossError, RunLog, StopRequest, TrainingInterrupted, checkpoint_path, \
    prune_checkpoints
from gptcore.engine.lockstep import LockstepSettings
from gptcore.engine.training import TrainSettings, evaluation_line, nonfinite_message, settings_dict
from torchgpt.distributed import COUNT_REDUCES_ENV, DistContext, all_reduce_mean, any_process, count_grad_reduces, \
    gather_objects
from torchgpt.loss import cross_entropy, perplexity
from torchgpt.model import GPTModel, load_numpy_params
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


def ordered_batches(dataset, batch_size: int) -> Callable[[], Iterable]:
    """An eval set: the batches of `dataset` in order (no shuffle, last short batch kept)."""
    return lambda: iterate_batches(dataset, batch_size, shuffle=False, drop_last=False)


# ---------------------------------------------------------------------------------------------------
# the loop
# ---------------------------------------------------------------------------------------------------

class Trainer:
    """Trains `model` (a GPTModel, or any nn.Module with .config for checkpoints) with AdamW.

    batches: TokenBatches / LoaderBatches (or anything with next_step, state_dict, load_state_dict,
    tokens_per_step). eval_sets: {name: () -> iterable of micro-batches}; each evaluation logs
    <name>_loss and <name>_perplexity, the mean loss over the examples of the first settings.eval_batches
    global batches (eval_batches x grad_accum_steps x processes micro-batches, on rank 0).
    extra_eval(model) -> dict adds more numbers at each evaluation (e.g. accuracy).
    run_log: the run folder (metrics, plot, checkpoints); None trains without writing anything.
    sample_fn(model) -> str: a generation logged at each evaluation (the model in eval mode). on_step(trainer): after every step.
    """

    def __init__(self, model: torch.nn.Module, batches, settings: TrainSettings, *,
                 loss_fn: Callable = next_token_loss, eval_sets: dict[str, Callable[[], Iterable]] | None = None,
                 extra_eval: Callable | None = None, runtime: RuntimeOptions = RuntimeOptions(),
                 device: torch.device | None = None, context: DistContext = DistContext(),
                 run_log: RunLog | None = None, metadata: dict | None = None, sample_fn: Callable | None = None,
                 on_step: Callable | None = None, progress: bool = True, peak_flops_per_device: float | None = None):
        from torchgpt import pick_device
        self.settings, self.batches, self.loss_fn = settings, batches, loss_fn
        self.eval_sets, self.extra_eval = dict(eval_sets or {}), extra_eval
        self.context, self.runtime = context, runtime
        self.device = device if device is not None else pick_device(runtime.device)
        self.run_log, self.metadata, self.sample_fn, self.on_step = run_log, dict(metadata or {}), sample_fn, on_step
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
            from torch.nn.parallel import DistributedDataParallel
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

        self.step, self.tokens_seen, self.elapsed = 0, 0, 0.0
        self._phase = "idle"        # "computing" a step (undoable on Ctrl-C) or "updating" the parameters
        self.last_checkpoint: Path | None = None
        self._session = {"steps": 0, "tokens": 0, "seconds": 0.0}   # timing of this process's steps, first excluded
        self._since_report = {"tokens": 0, "seconds": 0.0}           # steps since the last evaluation line
        config, windows = getattr(model, "config", None), getattr(batches, "dataset", None)
        self.flops_per_token = (flops_per_token(config, windows.max_length)
                                if config is not None and isinstance(windows, SlidingWindowDataset) else None)
        self.peak_flops = peak_flops_per_device or peak_flops(self.device)

    # ----- state -------------------------------------------------------------------------------------

    def _rng_state(self) -> dict:
        state = {"torch_cpu": torch.get_rng_state().numpy().copy()}
        if self.device.type == "cuda":
            state["torch_cuda"] = torch.cuda.get_rng_state(self.device).numpy().copy()
        return state

    def _set_rng_state(self, state: dict) -> None:
        torch.set_rng_state(torch.as_tensor(np.asarray(state["torch_cpu"]), dtype=torch.uint8))
        if self.device.type == "cuda" and state.get("torch_cuda") is not None:
            torch.cuda.set_rng_state(torch.as_tensor(np.asarray(state["torch_cuda"]), dtype=torch.uint8), self.device)

    def training_state(self) -> dict:
        """Everything but the model and optimizer that an exact resume needs (a collective under DDP)."""
        by_rank = gather_objects(self._rng_state(), self.context)
        rng = dict(by_rank[0])
        if self.context.is_distributed:
            rng["by_rank"] = by_rank
        return {"step": self.step, "backend": "torch", "scheduler": self.settings.schedule_state(), "rng": rng,
                "data": self.batches.state_dict(), "tokens_seen": self.tokens_seen, "elapsed_s": self.elapsed,
                "world_size": self.context.world_size, "settings": settings_dict(self.settings)}

    def save_checkpoint(self) -> Path | None:
        """A checkpoint of the current step in the run folder (every process must call it under DDP)."""
        from torchgpt.checkpoint import save_training_checkpoint
        state = self.training_state()
        if self.run_log is None or not self.context.is_main:
            return None
        path = save_training_checkpoint(checkpoint_path(self.run_log.run_dir, self.step), self.model, self.optimizer,
                                        training_state=state, metadata={"backend": "torch", **self.metadata})
        prune_checkpoints(self.run_log.run_dir, self.settings.keep_checkpoints)
        self.last_checkpoint = path
        return path

    def restore(self, checkpoint: str | Path) -> dict:
        """Model, optimizer, data position, RNG, step and counters from a checkpoint; returns its training state.

        A checkpoint from another process count restores rank 0's RNG on every process (exact only for the
        same count); the data position carries over whatever the count.
        """
        from torchgpt.checkpoint import load_training_checkpoint
        _, state = load_training_checkpoint(checkpoint, self.model, self.optimizer)
        if state is None or "step" not in state:
            raise ValueError(f"{checkpoint} holds no training state (model weights only); start a new run from it "
                             f"with --init-from instead of --resume")
        self.step, self.tokens_seen = int(state["step"]), int(state.get("tokens_seen", 0))
        self.elapsed = float(state.get("elapsed_s", 0.0))
        if "data" in state:
            self.batches.load_state_dict(state["data"])
        rng = state.get("rng") or {}
        by_rank = rng.get("by_rank")
        if by_rank and int(state.get("world_size", 1)) == self.context.world_size:
            self._set_rng_state(by_rank[self.context.rank])
        elif "torch_cpu" in rng:
            self._set_rng_state(rng)
        self.last_checkpoint = Path(checkpoint)
        return state

    # ----- one step, one evaluation ------------------------------------------------------------------------

    def train_step(self) -> dict:
        """One optimizer step; returns {loss, grad_norm, lr, tokens, seconds}. Raises NonFiniteLossError
        (parameters untouched) when the loss is NaN or inf."""
        started = time.perf_counter()
        if self._reduces is not None:
            self._reduces["reduces"] = 0
        micro_batches = self.batches.next_step()
        self.train_model.train()
        accum = len(micro_batches)
        total = torch.zeros((), device=self.device)
        for k, batch in enumerate(micro_batches):
            batch = to_device(batch, self.device)
            last = k == accum - 1
            # Under DDP the gradient all-reduce runs in backward; skip it for all but the last micro-batch.
            sync = self.ddp_model.no_sync() if self.ddp_model is not None and not last else nullcontext()
            with sync:
                with autocast(self.device, self.autocast_dtype):
                    loss = self.loss_fn(self.train_model, batch)
                (loss / accum).backward()
            total += loss.detach().float()
        loss_value = float(all_reduce_mean(total / accum, self.context).item())
        if not math.isfinite(loss_value):
            self.optimizer.zero_grad(set_to_none=True)
            raise NonFiniteLossError(nonfinite_message(loss_value, self.step + 1, self.run_log))
        grad_norm = None
        if self.settings.grad_clip is not None:
            grad_norm = float(clip_grad_norm(self.model.parameters(), self.settings.grad_clip))
        lr = self.settings.lr_at(self.step)
        set_lr(self.optimizer, lr)
        self._phase = "updating"
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.tokens_seen += self.batches.tokens_per_step
        self._phase = "idle"
        seconds = time.perf_counter() - started
        self.elapsed += seconds
        result = {"loss": loss_value, "grad_norm": grad_norm, "lr": lr, "tokens": self.batches.tokens_per_step,
                  "seconds": seconds}
        if self._reduces is not None:
            result["grad_reduces"] = self._reduces["reduces"]
        return result

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

    def _entry(self, result: dict) -> dict:
        tokens_per_sec = result["tokens"] / max(result["seconds"], 1e-9)
        entry = {"step": self.step, "epoch": getattr(self.batches, "epoch", None), "train_loss": result["loss"],
                 "train_perplexity": perplexity(result["loss"]), "lr": result["lr"], "grad_norm": result["grad_norm"],
                 "tokens_seen": self.tokens_seen, "tokens_per_sec": tokens_per_sec, "elapsed_s": self.elapsed}
        mfu = self.mfu(tokens_per_sec)
        if mfu is not None:
            entry["mfu"] = mfu
        if "grad_reduces" in result:
            entry["grad_reduces"] = result["grad_reduces"]
        return entry

    def mfu(self, tokens_per_sec: float) -> float | None:
        """Model FLOPs utilisation: achieved training FLOP/s per device over the device's bf16 peak."""
        if self.flops_per_token is None or self.peak_flops is None:
            return None
        return self.flops_per_token * tokens_per_sec / self.context.world_size / self.peak_flops

    def summary(self) -> dict:
        """Throughput of this session's steps (the first left out when there are more: compile/warm-up)."""
        seconds, tokens = self._session["seconds"], self._session["tokens"]
        tokens_per_sec = tokens / seconds if seconds > 0 else math.nan
        return {"steps": self._session["steps"], "tokens": tokens, "seconds": seconds,
                "tokens_per_sec": tokens_per_sec, "mfu": self.mfu(tokens_per_sec) if seconds > 0 else None}

    def _log(self, entry: dict, history: list, plot: bool) -> None:
        history.append(entry)
        if self.context.is_main and self.run_log is not None:
            self.run_log.log(entry)
            if plot:
                self.run_log.plot()

    def _evaluate_into(self, entry: dict) -> None:
        """Adds the evaluation (and the sample) to this step's entry and writes its console line (rank 0,
        progress on) with the throughput of the steps since the previous line."""
        entry.update(self.evaluate())
        if self.sample_fn is not None and self.context.is_main:
            self.model.eval()
            entry["sample"] = self.sample_fn(self.model)
            self.model.train()
        tokens_per_sec = self._since_report["tokens"] / max(self._since_report["seconds"], 1e-9)
        self._since_report = {"tokens": 0, "seconds": 0.0}
        if self.progress:
            tqdm.write(evaluation_line(entry, self.settings.max_steps, tokens_per_sec, self.mfu(tokens_per_sec)))

    # ----- the loop ----------------------------------------------------------------------------------

    def fit(self) -> list[dict]:
        """Steps until settings.max_steps; evaluates, logs, plots and checkpoints on the way; returns the
        logged entries. NaN/inf: NonFiniteLossError. Ctrl-C/SIGTERM: checkpoint, then TrainingInterrupted."""
        settings, history = self.settings, []
        bar = tqdm(total=settings.max_steps, initial=self.step, desc="torch train", disable=not self.progress,
                   leave=False)
        self._phase, first_step, unlogged = "idle", True, None
        with StopRequest() as stop:
            try:
                while self.step < settings.max_steps:
                    before = (self.batches.state_dict(), self._rng_state())
                    self._phase = "computing"
                    result = self.train_step()
                    if not first_step:
                        self._session["seconds"] += result["seconds"]
                        self._session["tokens"] += result["tokens"]
                    self._session["steps"] += 1
                    first_step = False
                    self._since_report["tokens"] += result["tokens"]
                    self._since_report["seconds"] += result["seconds"]
                    entry = unlogged = self._entry(result)
                    evaluated = self.step % settings.eval_interval == 0 or self.step == settings.max_steps
                    if evaluated:
                        self._evaluate_into(entry)
                    self._log(entry, history, plot=evaluated)
                    unlogged = None
                    if self.context.is_main:
                        bar.update(1)
                        bar.set_postfix(loss=f"{result['loss']:.3f}")
                    if self.step == settings.max_steps or (settings.checkpoint_interval and
                                                           self.step % settings.checkpoint_interval == 0):
                        self.save_checkpoint()
                    if self.on_step is not None:
                        self.on_step(self)
                    if any_process(stop.requested, self.context, self.device):
                        raise KeyboardInterrupt
            except KeyboardInterrupt as interrupt:
                bar.close()
                if self._phase == "updating" or self.run_log is None:
                    raise
                if self._phase == "computing":        # the interrupted step is redone on resume
                    self.batches.load_state_dict(before[0])
                    self._set_rng_state(before[1])
                    self.optimizer.zero_grad(set_to_none=True)
                elif unlogged is not None:            # stopped while evaluating: the step itself is done
                    self._log(unlogged, history, plot=False)
                path = self.save_checkpoint()
                raise TrainingInterrupted(f"stopped at step {self.step}; checkpoint saved to {path}; continue "
                                          f"with --resume {self.run_log.run_dir}") from interrupt
        bar.close()
        return history


# ---------------------------------------------------------------------------------------------------
# the torch twin of the lockstep demo (gptcore.engine.lockstep)
# ---------------------------------------------------------------------------------------------------

class TorchTwin:
    """The torch side of gptcore.engine.lockstep: a GPTModel holding a copy of the NumPy parameters, its AdamW."""

    def __init__(self, params: dict, config, settings: LockstepSettings, dtype=torch.float32):
        self.config = config
        self.model = load_numpy_params(GPTModel(config).to(dtype), params).train()
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
