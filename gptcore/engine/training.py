"""Training settings and the training loop, written once for every backend.

TrainSettings is validated here once; the loop below reads its schedule, cadences and batch sizes from it.
TrainingLoop is the whole loop apart from the math: NumPy (npgpt.train) and torch with DDP (torchgpt.train)
each plug a small backend into it, so step counting, the schedule, evaluation, logging, checkpoints, the
NaN stop, Ctrl-C and exact resume are written once.

    loop = TrainingLoop(backend, settings, run_log=RunLog("runs/a"))
    loop.resume(training_state)          # optional: a checkpoint's training state continues exactly
    history = loop.fit()

One step, the backend's calls in [brackets]:

    before = [data_state()], [rng_state()]                      kept to undo the step on Ctrl-C
    loss, tokens = [compute_gradients()]                        forward + backward over the step's micro-batches
    NaN/inf loss -> [discard_gradients()], NonFiniteLossError   before anything changed
    grad_norm = [clip_gradients(settings.grad_clip)]            unless grad_clip is None
    [apply_update(settings.lr_at(step))]                        AdamW; from here the step cannot be undone
    step % eval_interval == 0 or the last step: [evaluate()], [sample()], the console line
    log the entry (history, run folder, loss.png at evaluations, on_log)
    step % checkpoint_interval == 0 or the last step: [write_checkpoint(path, training_state)], prune
    on_step(step); [stop_everywhere(Ctrl-C/SIGTERM seen)] -> checkpoint, TrainingInterrupted

## The backend interface (TrainingBackend)

    name: str                                  "numpy" | "torch": the progress bar, a checkpoint's "backend"
    is_main: bool = True                       writes the run folder and the console (rank 0 under DDP)
    epoch -> int | None                        the data's epoch, logged with every step
    compute_gradients() -> (loss, tokens)      the next step's micro-batches: the mean loss of the global
                                               batch and its token count; the gradients stay in the backend
    clip_gradients(max_norm) -> float          global-norm clipping; returns the norm before it
    apply_update(lr)                           one optimizer step with this lr, then drops the gradients
    discard_gradients()                        drops them without an update (NaN, an undone step)
    evaluate() -> dict                         <name>_loss, <name>_perplexity, ... ({} on DDP ranks > 0)
    sample() -> str | None                     a generation logged at each evaluation, or None
    data_state() / load_data_state(state)      the position in the batch order
    rng_state() / set_rng_state(state)         this process's random generators (to undo a step)
    backend_state() -> dict                    its part of a checkpoint's training state ("rng", ...)
    load_backend_state(training_state)         ... restored on resume (the weights are loaded before)
    write_checkpoint(path, training_state) -> Path
    stop_everywhere(requested) -> bool         True on every process when any was asked to stop
    mfu(tokens_per_sec) -> float | None        model FLOPs utilisation, when known
    step_metrics() -> dict                     more numbers for the step's entry (DDP: grad_reduces)

npgpt.train.NumpyBackend and torchgpt.train.Trainer implement it. The settings classes of the other loops
(ClassifierSettings, LockstepSettings) validate with the check_* helpers here.
"""
from __future__ import annotations

import math
import numbers
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm.auto import tqdm

from gptcore.data import WindowStream
from gptcore.engine.schedule import warmup_cosine_lr
from gptcore.formats.runs import (NonFiniteLossError, RunLog, StopRequest, TrainingInterrupted, checkpoint_path,
                                  latest_checkpoint, prune_checkpoints)


def perplexity(loss):
    """exp(loss): the effective number of equally likely next tokens (both twins' loss modules use it)."""
    return math.exp(loss) if loss < 700 else math.inf


# ---------------------------------------------------------------------------------------------------
# settings checks (TrainSettings, ClassifierSettings, LockstepSettings): one message per kind of mistake
# ---------------------------------------------------------------------------------------------------

def check_positive(label: str, value) -> None:
    """value > 0 (a NaN is refused too)."""
    if not value > 0:
        raise ValueError(f"{label} must be positive, got {value}")


def check_positive_int(label: str, value) -> None:
    """An int >= 1 (True is not a count, 2.0 is not an int)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{label} must be a positive integer, got {value!r}")


def check_non_negative(label: str, value) -> None:
    if not value >= 0:
        raise ValueError(f"{label} must be >= 0, got {value}")


def check_positive_number(label: str, value) -> None:
    """A finite number > 0 (learning rates)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value < math.inf:
        raise ValueError(f"{label} must be a positive number, got {value!r}")


def check_grad_clip(label: str, value) -> None:
    """A global-norm bound > 0, or None for no clipping."""
    if value is not None and not value > 0:
        raise ValueError(f"{label} must be a positive norm or None (off), got {value!r}")


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
            check_positive(f"TrainSettings.{name}", getattr(self, name))
        for name in ("warmup_steps", "checkpoint_interval", "keep_checkpoints", "weight_decay"):
            check_non_negative(f"TrainSettings.{name}", getattr(self, name))
        if self.lr_decay_steps is not None:
            check_positive("TrainSettings.lr_decay_steps", self.lr_decay_steps)
        check_positive_number("TrainSettings.lr", self.lr)
        if not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"need 0 <= min_lr <= lr, got lr={self.lr} min_lr={self.min_lr}")
        check_grad_clip("TrainSettings.grad_clip", self.grad_clip)
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


# ---------------------------------------------------------------------------------------------------
# the backend interface
# ---------------------------------------------------------------------------------------------------

class TrainingBackend(ABC):
    """What TrainingLoop needs from a framework (see the module docstring for the calls of one step).

    The backend holds the model, the optimizer, the batch source, the random generators and, between
    compute_gradients and apply_update, the gradients; the loop holds the counters and decides when to do what.
    """

    name: str = "backend"
    is_main: bool = True                       # this process writes the run folder and the console

    @property
    def epoch(self) -> int | None:
        """The data's epoch, logged with every step (None: the batch source does not count epochs)."""
        return None

    # ----- one step ----------------------------------------------------------------------------------------

    @abstractmethod
    def compute_gradients(self) -> tuple[float, int]:
        """Forward and backward over the next step's micro-batches (the gradients of the mean loss, kept
        inside); returns (the mean loss over the global batch, the tokens of the global batch)."""

    @abstractmethod
    def clip_gradients(self, max_norm: float) -> float:
        """Scales the gradients to global norm <= max_norm; returns the norm before clipping."""

    @abstractmethod
    def apply_update(self, lr: float) -> None:
        """One optimizer step with learning rate `lr`; the gradients are dropped after it."""

    @abstractmethod
    def discard_gradients(self) -> None:
        """Drops the gradients without an update (a NaN loss, an interrupted step)."""

    # ----- measuring ---------------------------------------------------------------------------------------

    @abstractmethod
    def evaluate(self) -> dict:
        """<name>_loss and <name>_perplexity per evaluation set (and any extra numbers), in eval mode."""

    def sample(self) -> str | None:
        """A generation logged at each evaluation (`sample`), or None for none."""
        return None

    def mfu(self, tokens_per_sec: float) -> float | None:
        """Model FLOPs utilisation at this throughput, or None where unknown."""
        return None

    def step_metrics(self) -> dict:
        """More numbers of the step just taken, added to its entry."""
        return {}

    # ----- state -------------------------------------------------------------------------------------------

    @abstractmethod
    def data_state(self) -> dict:
        """The position in the batch order (JSON-able)."""

    @abstractmethod
    def load_data_state(self, state: dict) -> None:
        """Continue the batch order from data_state()'s value."""

    @abstractmethod
    def rng_state(self):
        """This process's random generators (dropout), to undo an interrupted step."""

    @abstractmethod
    def set_rng_state(self, state) -> None:
        """Puts back what rng_state() returned."""

    @abstractmethod
    def backend_state(self) -> dict:
        """The backend's own part of a checkpoint's training state: "rng" (and what else it needs to resume)."""

    @abstractmethod
    def load_backend_state(self, training_state: dict) -> None:
        """Restores that part from a whole training state (written by this or another backend)."""

    @abstractmethod
    def write_checkpoint(self, path: Path, training_state: dict) -> Path:
        """Writes the weights (and optimizer) with `training_state` as a checkpoint folder at `path`."""

    def stop_everywhere(self, requested: bool) -> bool:
        """True on every process when any process was asked to stop (all must take the same branch)."""
        return requested


# ---------------------------------------------------------------------------------------------------
# the loop
# ---------------------------------------------------------------------------------------------------

STEP_RESULT_KEYS = ("loss", "grad_norm", "lr", "tokens", "seconds")


class TrainingLoop:
    """Steps `backend` until settings.max_steps: schedule, evaluation, logging, checkpoints, the NaN stop,
    Ctrl-C and resume.

    run_log: the run folder (metrics, loss.png, checkpoints); None trains without writing anything.
    progress: the progress bar and the evaluation lines (main process only).
    on_log(entry): called with every logged entry. on_step(step): after every step (tests stop runs with it).

    step, tokens_seen and elapsed (seconds of steps, evaluation left out) count the whole run, across resumes;
    session counts this object's steps, the first one's tokens and seconds left out (compile, warm-up).
    """

    def __init__(self, backend: TrainingBackend, settings: TrainSettings, *, run_log: RunLog | None = None,
                 progress: bool = True, on_log=None, on_step=None):
        self.backend, self.settings, self.run_log = backend, settings, run_log
        self.progress = progress and backend.is_main
        self.on_log, self.on_step = on_log, on_step
        self.step, self.tokens_seen, self.elapsed = 0, 0, 0.0
        self.last_checkpoint: Path | None = None
        self.phase = "idle"        # "computing" a step (undone on Ctrl-C) or "updating" the parameters (not)
        self.session = {"steps": 0, "tokens": 0, "seconds": 0.0}
        self._since_report = {"tokens": 0, "seconds": 0.0}       # the steps since the last evaluation line

    # ----- state -------------------------------------------------------------------------------------------

    def resume(self, state: dict) -> None:
        """Continues from a checkpoint's training state: step, tokens seen, elapsed time, the data position and
        the backend's part (RNG, ...). The weights must already be loaded."""
        self.step, self.tokens_seen = int(state["step"]), int(state.get("tokens_seen", 0))
        self.elapsed = float(state.get("elapsed_s", 0.0))
        if "data" in state:
            self.backend.load_data_state(state["data"])
        self.backend.load_backend_state(state)

    def training_state(self) -> dict:
        """Everything but the weights that an exact resume needs (a collective under DDP)."""
        return {"step": self.step, "backend": self.backend.name, "scheduler": self.settings.schedule_state(),
                "data": self.backend.data_state(), "tokens_seen": self.tokens_seen, "elapsed_s": self.elapsed,
                "settings": settings_dict(self.settings), **self.backend.backend_state()}

    def save_checkpoint(self) -> Path | None:
        """A checkpoint of the current step in the run folder, the oldest beyond keep_checkpoints pruned;
        None without a run folder or off the main process (every process must call it under DDP)."""
        state = self.training_state()
        if self.run_log is None or not self.backend.is_main:
            return None
        path = self.backend.write_checkpoint(checkpoint_path(self.run_log.run_dir, self.step), state)
        prune_checkpoints(self.run_log.run_dir, self.settings.keep_checkpoints, newest_step=self.step)
        self.last_checkpoint = path
        return path

    # ----- one step ----------------------------------------------------------------------------------------

    def train_step(self) -> dict:
        """One optimizer step; returns {loss, grad_norm, lr, tokens, seconds} and the backend's step_metrics().
        Raises NonFiniteLossError (parameters untouched) when the loss is NaN or inf."""
        started = time.perf_counter()
        loss, tokens = self.backend.compute_gradients()
        if not math.isfinite(loss):
            self.backend.discard_gradients()
            raise NonFiniteLossError(nonfinite_message(loss, self.step + 1, self.run_log))
        clip = self.settings.grad_clip
        grad_norm = self.backend.clip_gradients(clip) if clip is not None else None
        lr = self.settings.lr_at(self.step)
        self.phase = "updating"
        self.backend.apply_update(lr)
        self.step += 1
        self.tokens_seen += tokens
        self.phase = "idle"
        seconds = time.perf_counter() - started
        self.elapsed += seconds
        return {"loss": loss, "grad_norm": grad_norm, "lr": lr, "tokens": tokens, "seconds": seconds,
                **self.backend.step_metrics()}

    def _count(self, result: dict, first_step: bool) -> None:
        """Adds the step to the session's throughput (not the first: compile, warm-up) and the next line's."""
        if not first_step:
            self.session["seconds"] += result["seconds"]
            self.session["tokens"] += result["tokens"]
        self.session["steps"] += 1
        self._since_report["tokens"] += result["tokens"]
        self._since_report["seconds"] += result["seconds"]

    def _entry(self, result: dict) -> dict:
        """The logged record of the step just taken."""
        tokens_per_sec = result["tokens"] / max(result["seconds"], 1e-9)
        entry = {"step": self.step, "epoch": self.backend.epoch, "train_loss": result["loss"],
                 "train_perplexity": perplexity(result["loss"]), "lr": result["lr"], "grad_norm": result["grad_norm"],
                 "tokens_seen": self.tokens_seen, "tokens_per_sec": tokens_per_sec, "elapsed_s": self.elapsed}
        mfu = self.backend.mfu(tokens_per_sec)
        if mfu is not None:
            entry["mfu"] = mfu
        entry.update({key: value for key, value in result.items() if key not in STEP_RESULT_KEYS})
        return entry

    def _evaluate_into(self, entry: dict) -> None:
        """Adds the evaluation (and the sample) to the step's entry and writes its console line with the
        throughput of the steps since the previous line."""
        entry.update(self.backend.evaluate())
        sample = self.backend.sample()
        if sample is not None:
            entry["sample"] = sample
        tokens_per_sec = self._since_report["tokens"] / max(self._since_report["seconds"], 1e-9)
        self._since_report = {"tokens": 0, "seconds": 0.0}
        if self.progress:
            tqdm.write(evaluation_line(entry, self.settings.max_steps, tokens_per_sec,
                                       self.backend.mfu(tokens_per_sec)))

    def _log(self, entry: dict, history: list, plot: bool) -> None:
        history.append(entry)
        if self.run_log is not None and self.backend.is_main:
            self.run_log.log(entry)
            if plot:
                self.run_log.plot()
        if self.on_log is not None:
            self.on_log(entry)

    def _checkpoint_due(self) -> bool:
        interval = self.settings.checkpoint_interval
        return self.step == self.settings.max_steps or bool(interval and self.step % interval == 0)

    # ----- the loop ----------------------------------------------------------------------------------------

    def fit(self) -> list[dict]:
        """Steps until settings.max_steps; returns the logged entries of this call.

        NaN/inf loss: NonFiniteLossError before the update. Ctrl-C/SIGTERM (deferred to the step boundary by
        StopRequest) or a KeyboardInterrupt: a step interrupted while computing is undone (its batch and dropout
        masks come again on resume), one interrupted during its evaluation is kept and logged; then a
        checkpoint, then TrainingInterrupted. Interrupted while updating, or without a run folder: re-raised.
        """
        settings, history = self.settings, []
        self.phase, first_step, before, unlogged = "idle", True, None, None
        with tqdm(total=settings.max_steps, initial=self.step, desc=f"{self.backend.name} train",
                  disable=not self.progress, leave=False) as bar, StopRequest() as stop:
            try:
                while self.step < settings.max_steps:
                    before = (self.backend.data_state(), self.backend.rng_state())
                    self.phase = "computing"
                    result = self.train_step()
                    self._count(result, first_step)
                    first_step = False
                    entry = unlogged = self._entry(result)
                    evaluated = self.step % settings.eval_interval == 0 or self.step == settings.max_steps
                    if evaluated:
                        self._evaluate_into(entry)
                    self._log(entry, history, plot=evaluated)
                    unlogged = None
                    bar.update(1)
                    bar.set_postfix(loss=f"{result['loss']:.3f}")
                    if self._checkpoint_due():
                        self.save_checkpoint()
                    if self.on_step is not None:
                        self.on_step(self.step)
                    if self.backend.stop_everywhere(stop.requested):
                        raise KeyboardInterrupt
            except KeyboardInterrupt as interrupt:
                if self.phase == "updating" or self.run_log is None:
                    raise
                if self.phase == "computing":                # the interrupted step's batch comes again
                    self.backend.load_data_state(before[0])
                    self.backend.set_rng_state(before[1])
                    self.backend.discard_gradients()
                elif unlogged is not None:                   # stopped while evaluating: the step itself is done
                    self._log(unlogged, history, plot=False)
                path = self.save_checkpoint()
                raise TrainingInterrupted(f"stopped at step {self.step}; checkpoint saved to {path}; continue "
                                          f"with --resume {self.run_log.run_dir}") from interrupt
        return history
