"""The NumPy training loop: batches from the data pipeline, AdamW, clipping, a schedule, periodic eval,
checkpoints with the full training state, exact resume, metrics in a run folder.

    for each step:  for each of A micro-batches: loss, grads = loss_and_grads(params, X, Y)  (summed / A)
                    ->  stop on a NaN/inf loss  ->  clip  ->  AdamW(lr(step))
    every eval_interval steps: mean loss on up to eval_batches train and validation batches
    every checkpoint_interval steps and at the end: a checkpoint (when a run folder is given)

It is deliberately the same loop as torchgpt.train's, so the two can be compared step by step: both
take their windows from gptcore.data.WindowStream and their settings from gptcore.engine.training.TrainSettings.
"""
from __future__ import annotations

import math
import time

import numpy as np
from tqdm.auto import tqdm

from gptcore.data import WindowStream, iterate_batches
from gptcore.engine.lockstep import LockstepSettings
from gptcore.engine.training import TrainSettings, evaluation_line, nonfinite_message, settings_dict
from gptcore.formats.checkpoint import save_checkpoint
from gptcore.formats.runs import (NonFiniteLossError, RunLog, StopRequest, TrainingInterrupted, checkpoint_path,
                                  prune_checkpoints)
from gptcore.params import unique_arrays
from npgpt import model
from npgpt.loss import cross_entropy_forward, perplexity
from npgpt.optim import AdamW, clip_grad_norm
from npgpt.speed.memory import keep_freed_memory


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
    keep_freed_memory()   # reuse each step's activation memory instead of faulting it in again (npgpt.speed.memory)
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


class NumpyTwin:
    """The NumPy side of gptcore.engine.lockstep: the parameter dict itself (updated in place) and npgpt's AdamW."""

    def __init__(self, params: dict, config, settings: LockstepSettings):
        keep_freed_memory()   # reuse each step's freed activations instead of faulting them in again
        self.params, self.config = params, config
        self.optimizer = AdamW(lr=settings.lr, weight_decay=settings.weight_decay)
        self.grad_clip = settings.grad_clip

    def step(self, X: np.ndarray, Y: np.ndarray) -> float:
        loss, grads = model.loss_and_grads(self.params, X, Y, self.config)
        if self.grad_clip is not None:
            clip_grad_norm(grads, self.grad_clip)
        self.optimizer.step(self.params, grads)
        return loss

    def evaluate(self, dataset, batch_size: int, max_batches: int) -> float:
        return evaluate_loss(self.params, self.config, dataset, batch_size, max_batches)
