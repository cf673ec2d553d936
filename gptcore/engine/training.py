"""Training settings and the pieces of the training loop that do not depend on a backend.

TrainSettings is validated here once; both loops (npgpt.train, torchgpt.train) read their schedule,
cadences and batch sizes from it, and print and stop with the same evaluation_line and nonfinite_message.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from gptcore.data import WindowStream
from gptcore.engine.schedule import warmup_cosine_lr
from gptcore.formats.runs import RunLog, latest_checkpoint


def perplexity(loss):
    """exp(loss): the effective number of equally likely next tokens (both twins' loss modules use it)."""
    return math.exp(loss) if loss < 700 else math.inf


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
