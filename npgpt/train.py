"""The NumPy training loop: batches from the data pipeline, AdamW, clipping, a schedule, periodic eval,
checkpoints with the full training state, exact resume, metrics in a run folder.

    for each step:  for each of A micro-batches: loss, grads = loss_and_grads(params, X, Y)  (summed / A)
                    ->  stop on a NaN/inf loss  ->  clip  ->  AdamW(lr(step))
    every eval_interval steps: mean loss on up to eval_batches train and validation batches
    every checkpoint_interval steps and at the end: a checkpoint (when a run folder is given)

It is deliberately the same loop as torchgpt.train's, so the two can be compared step by step: both
take their windows from npgpt.data.WindowStream and their settings from TrainSettings.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import numpy as np
from tqdm.auto import tqdm

from npgpt import model
from npgpt.data import WindowStream, iterate_batches
from npgpt.loss import cross_entropy_forward, perplexity
from npgpt.memory import keep_freed_memory
from npgpt.optim import AdamW, clip_grad_norm, warmup_cosine_lr
from npgpt.params import unique_arrays
from npgpt.runs import NonFiniteLossError, RunLog, StopRequest, TrainingInterrupted, checkpoint_path, \
    latest_checkpoint, prune_checkpoints


@dataclass
class TrainSettings:
    """Optimisation settings shared by the NumPy and the torch loop (framework-free)."""
    max_steps: int = 100
    batch_size: int = 8             # micro-batch of one process
    lr: float = 4e-4
    min_lr: float = 0.0
    warmup_steps: int = 0
    cosine: bool = False            # False: constant lr after warmup; True: cosine decay to min_lr at lr_decay_steps
    lr_decay_steps: int | None = None   # the cosine's horizon; None means max_steps
    weight_decay: float = 0.1
    betas: tuple = (0.9, 0.999)
    grad_clip: float | None = 1.0   # global-norm clipping, None to turn off
    grad_accum_steps: int = 1       # micro-batches per optimizer step
    eval_interval: int = 10
    eval_batches: int = 5
    checkpoint_interval: int = 0    # steps between checkpoints; 0: only at the end (and on Ctrl-C)
    keep_checkpoints: int = 2       # newest checkpoints kept in the run folder; 0 keeps all
    seed: int = 123                 # batch order and dropout masks

    def __post_init__(self):
        for name in ("max_steps", "batch_size", "eval_interval", "eval_batches", "grad_accum_steps"):
            if getattr(self, name) <= 0:
                raise ValueError(f"TrainSettings.{name} must be positive, got {getattr(self, name)}")
        for name in ("warmup_steps", "checkpoint_interval", "keep_checkpoints"):
            if getattr(self, name) < 0:
                raise ValueError(f"TrainSettings.{name} must be >= 0, got {getattr(self, name)}")
        if self.lr_decay_steps is not None and self.lr_decay_steps <= 0:
            raise ValueError(f"TrainSettings.lr_decay_steps must be positive, got {self.lr_decay_steps}")
        if self.lr <= 0 or self.min_lr < 0 or self.min_lr > self.lr:
            raise ValueError(f"need 0 <= min_lr <= lr and lr > 0, got lr={self.lr} min_lr={self.min_lr}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ValueError(f"grad_clip must be positive or None (off), got {self.grad_clip}")
        self.betas = tuple(self.betas)

    @property
    def decay_steps(self) -> int:
        return self.lr_decay_steps or self.max_steps

    def lr_at(self, step):
        """Learning rate of optimizer step `step` (0-based)."""
        if self.cosine:
            return warmup_cosine_lr(step, max_lr=self.lr, warmup_steps=self.warmup_steps,
                                    max_steps=self.decay_steps, min_lr=self.min_lr)
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        return self.lr

    def schedule_state(self) -> dict:
        """The scheduler entry of a checkpoint's training state (the lr follows from it and the step)."""
        return {"name": "warmup_cosine" if self.cosine else "warmup_constant", "max_lr": self.lr,
                "min_lr": self.min_lr, "warmup_steps": self.warmup_steps, "decay_steps": self.decay_steps}

    def windows_per_step(self, world_size: int = 1) -> int:
        """The global batch in windows: micro-batch x accumulation x processes."""
        return self.batch_size * self.grad_accum_steps * world_size


def settings_dict(settings: TrainSettings) -> dict:
    values = asdict(settings)
    values["betas"] = list(settings.betas)
    return values


def settings_from_dict(values: dict) -> TrainSettings:
    """Inverse of settings_dict; unknown keys are an error that names them."""
    known = set(TrainSettings.__dataclass_fields__)
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown training settings {unknown}; known: {sorted(known)}")
    return TrainSettings(**values)


def endless_batches(dataset, batch_size, seed, start_epoch=0):
    """(epoch, (X, Y)) batches epoch after epoch (a fresh shuffle each epoch), so max_steps may exceed one
    epoch: the batches of iterate_batches(dataset, batch_size, seed=seed, epoch=e) for e = start_epoch, ..."""
    stream = WindowStream(len(dataset), batch_size, seed=seed, epoch=start_epoch)
    while True:
        indices = stream.next_step()
        yield stream.epoch, dataset.batch(indices)


def evaluate_loss(params, config, dataset, batch_size, max_batches):
    """Mean cross-entropy over the windows of the first `max_batches` batches of `dataset` (in order, no
    dropout; a short last batch weighted by its rows)."""
    total, count = 0.0, 0
    for i, (X, Y) in enumerate(iterate_batches(dataset, batch_size, shuffle=False, drop_last=False)):
        if i >= max_batches:
            break
        logits, _ = model.forward(params, X, config)
        total += float(cross_entropy_forward(logits, Y)[0]) * len(X)
        count += len(X)
    return total / count if count else math.nan


def evaluate(params, config, train_dataset, val_dataset, settings: TrainSettings) -> dict:
    """eval_train_loss/perplexity and val_loss/perplexity (when there are validation windows) over the first
    settings.eval_batches GLOBAL batches, so the windows do not depend on how a step is split."""
    micro_batches = settings.eval_batches * settings.grad_accum_steps
    results = {}
    for name, dataset in (("eval_train", train_dataset), ("val", val_dataset)):
        if dataset is not None and len(dataset):
            results[f"{name}_loss"] = evaluate_loss(params, config, dataset, settings.batch_size, micro_batches)
            results[f"{name}_perplexity"] = perplexity(results[f"{name}_loss"])
    return results


def _accumulate(total, grads):
    """total += grads for every distinct array (a tied gradient is one array under two names)."""
    for name, g in unique_arrays(total):
        g += grads[name]


def train(params, config, train_dataset, val_dataset, settings: TrainSettings, *, progress=True, on_log=None,
          run_log: RunLog | None = None, resume_state: dict | None = None, on_step=None, metadata=None,
          sample_fn=None):
    """Trains `params` in place; returns the history, a list of dicts per logged step:
    {step, epoch, train_loss (the step's mean micro-batch loss), train_perplexity, lr, grad_norm, tokens_seen,
    tokens_per_sec, elapsed_s} plus, at eval steps, {eval_train_loss, eval_train_perplexity, val_loss,
    val_perplexity}.

    on_log(entry) is called for every entry; on_step(step) after each completed step (tests use it to stop).
    sample_fn(params) -> str: a generation logged (`sample`) at each evaluation.
    run_log: the run folder for metrics, loss.png and checkpoints (training state included).
    resume_state: the training state of a checkpoint (load params from it first): continues exactly.
    A NaN/inf loss raises NonFiniteLossError before the update; Ctrl-C saves a checkpoint, then raises
    TrainingInterrupted.
    """
    keep_freed_memory()   # reuse each step's activation memory instead of faulting it in again (npgpt.memory)
    optimizer = AdamW(lr=settings.lr, betas=settings.betas, weight_decay=settings.weight_decay)
    dropout_rng = np.random.default_rng(settings.seed)
    stream = WindowStream(len(train_dataset), settings.windows_per_step(), seed=settings.seed)
    step, tokens_seen, elapsed = 0, 0, 0.0
    if resume_state is not None:
        optimizer.load_state_dict(resume_state["optimizer"])
        saved_rng = (resume_state.get("rng") or {}).get("numpy")
        if saved_rng is not None:
            dropout_rng.bit_generator.state = saved_rng
        else:                   # a torch checkpoint: its generators are torch's; a fresh, step-dependent stream
            dropout_rng = np.random.default_rng([settings.seed, int(resume_state["step"])])
        stream.load_state_dict(resume_state["data"])
        step, tokens_seen = int(resume_state["step"]), int(resume_state["tokens_seen"])
        elapsed = float(resume_state.get("elapsed_s", 0.0))

    def training_state():
        return {"step": step, "backend": "numpy", "optimizer": optimizer.state_dict(),
                "scheduler": settings.schedule_state(), "rng": {"numpy": dropout_rng.bit_generator.state},
                "data": stream.state_dict(), "tokens_seen": tokens_seen, "elapsed_s": elapsed,
                "settings": settings_dict(settings)}

    def save():
        if run_log is None:
            return None
        from npgpt.checkpoint import save_checkpoint
        path = save_checkpoint(checkpoint_path(run_log.run_dir, step), params, config,
                               training_state=training_state(), metadata={"backend": "numpy", **(metadata or {})})
        prune_checkpoints(run_log.run_dir, settings.keep_checkpoints)
        return path

    history = []

    def log(entry):
        history.append(entry)
        if run_log is not None:
            run_log.log(entry)
            if "eval_train_loss" in entry:
                run_log.plot()
        if on_log:
            on_log(entry)

    bar = tqdm(total=settings.max_steps, initial=step, desc="numpy train", disable=not progress, leave=False)
    phase, before, unlogged = "idle", None, None   # phase: "computing" a step (undoable), "updating" params (not)
    since_report = [0, 0.0]                          # tokens and step seconds since the last evaluation line
    with StopRequest() as stop:
        try:
            while step < settings.max_steps:
                before = (stream.state_dict(), dropout_rng.bit_generator.state)   # to undo an interrupted step
                phase = "computing"
                started = time.perf_counter()
                indices = stream.next_step()
                loss, grads = 0.0, None
                for micro in range(settings.grad_accum_steps):
                    X, Y = train_dataset.batch(WindowStream.shard(indices, micro, 0, 1, settings.batch_size))
                    micro_loss, micro_grads = model.loss_and_grads(params, X, Y, config, train=True, rng=dropout_rng)
                    loss += micro_loss
                    if grads is None:
                        grads = micro_grads
                    else:
                        _accumulate(grads, micro_grads)
                if settings.grad_accum_steps > 1:      # the mean over micro-batches, as one big batch would give
                    loss /= settings.grad_accum_steps
                    for _, g in unique_arrays(grads):
                        g /= settings.grad_accum_steps
                if not math.isfinite(loss):
                    raise NonFiniteLossError(nonfinite_message(loss, step + 1, run_log))
                grad_norm = clip_grad_norm(grads, settings.grad_clip) if settings.grad_clip is not None else None
                lr = settings.lr_at(step)
                phase = "updating"
                optimizer.step(params, grads, lr=lr)
                step += 1
                tokens_seen += indices.size * train_dataset.max_length
                phase = "idle"
                seconds = time.perf_counter() - started
                elapsed += seconds
                entry = unlogged = {"step": step, "epoch": stream.epoch, "train_loss": float(loss),
                         "train_perplexity": perplexity(loss), "lr": lr, "grad_norm": grad_norm,
                         "tokens_seen": tokens_seen,
                         "tokens_per_sec": indices.size * train_dataset.max_length / max(seconds, 1e-9),
                         "elapsed_s": elapsed}
                since_report[0] += indices.size * train_dataset.max_length
                since_report[1] += seconds
                if step % settings.eval_interval == 0 or step == settings.max_steps:
                    entry.update(evaluate(params, config, train_dataset, val_dataset, settings))
                    if sample_fn is not None:
                        entry["sample"] = sample_fn(params)
                    if progress:
                        tokens_per_sec = since_report[0] / max(since_report[1], 1e-9)
                        tqdm.write(evaluation_line(entry, settings.max_steps, tokens_per_sec))
                    since_report = [0, 0.0]
                log(entry)
                unlogged = None
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}")
                if step == settings.max_steps or (settings.checkpoint_interval
                                                  and step % settings.checkpoint_interval == 0):
                    save()
                if on_step:
                    on_step(step)
                if stop.requested:
                    raise KeyboardInterrupt
        except KeyboardInterrupt as interrupt:
            bar.close()
            if phase == "updating" or run_log is None:
                raise
            if phase == "computing":                       # the interrupted step's batch comes again
                stream.load_state_dict(before[0])
                dropout_rng.bit_generator.state = before[1]
            elif unlogged is not None:                     # stopped while evaluating: the step itself is done
                log(unlogged)
            path = save()
            raise TrainingInterrupted(f"stopped at step {step}; checkpoint saved to {path}; continue with "
                                      f"--resume {run_log.run_dir}") from interrupt
    bar.close()
    return history


def evaluation_line(entry: dict, max_steps: int, tokens_per_sec: float, mfu: float | None = None) -> str:
    """The console line of one evaluation (both loops): step, train and val loss with perplexity, tokens seen,
    throughput, lr, and the sample if any. The train loss is the evaluated one (same windows each time, no
    dropout) when there is one, else the step's."""
    parts = [f"step {entry['step']}/{max_steps}"]
    for label, name in (("train", "eval_train"), ("val", "val")):
        loss = entry.get(f"{name}_loss", entry["train_loss"] if label == "train" else None)
        if loss is not None:
            parts.append(f"{label} loss {loss:.3f} (ppl {perplexity(loss):,.1f})")
    parts += [f"{entry['tokens_seen']:,} tokens seen", f"{tokens_per_sec:,.0f} tokens/s"]
    if mfu is not None:
        parts.append(f"MFU {mfu:.1%}")
    parts.append(f"lr {entry['lr']:.2e}")
    line = ", ".join(parts)
    return line + (f"\n  sample: {entry['sample']!r}" if "sample" in entry else "")


def nonfinite_message(loss, step, run_log: RunLog | None) -> str:
    """The error for a NaN/inf loss: the step, the last good checkpoint, and what to try."""
    where = ""
    if run_log is not None:
        last = latest_checkpoint(run_log.run_dir)
        where = (f"; the last good checkpoint is {last} (resume with --resume {run_log.run_dir})" if last
                 else "; no checkpoint was written yet")
    return (f"the loss became {loss} at step {step}{where}. Lower --lr, raise --warmup-steps or keep "
            f"--grad-clip on")
