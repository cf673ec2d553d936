"""The NumPy backend of the training loop (gptcore.engine.training.TrainingLoop): batches from the data
pipeline, hand-written gradients, clipping, npgpt's AdamW, checkpoints with the full training state.

    history = train(params, config, train_set, val_set, TrainSettings(max_steps=100), run_log=RunLog("runs/a"))

One step of NumpyBackend, as the loop calls it:
    compute_gradients:  for each of A micro-batches: loss, grads = loss_and_grads(params, X, Y)  (summed / A)
    clip_gradients:     the global norm scaled to <= grad_clip
    apply_update:       AdamW(lr(step)), the parameter arrays updated in place

The loop itself (schedule, evaluation cadence, logging, checkpoints, NaN stop, Ctrl-C, resume) is the one
torchgpt.train.Trainer runs too, so the two backends can be compared step by step: both take their windows
from gptcore.data.WindowStream and their settings from gptcore.engine.training.TrainSettings.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from gptcore.data import WindowStream, iterate_batches
from gptcore.engine.lockstep import LockstepSettings
from gptcore.engine.training import TrainingBackend, TrainingLoop, TrainSettings
from gptcore.formats.checkpoint import save_checkpoint
from gptcore.formats.runs import RunLog
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
        logits = model.infer(params, X, config)      # no cache for a backward: each block's activations freed as it goes
        total += float(cross_entropy_forward(logits, Y)[0]) * len(X)
        count += len(X)
    return total / count if count else math.nan


def summed_loss(params, config, X: np.ndarray, Y: np.ndarray) -> float:
    """The SUM of the next-token cross-entropy over a (B, T) batch (gptcore.engine.lm_evaluation's backend
    function): the mean over its B*T targets times their count, from the cache-free forward."""
    logits = model.infer(params, X, config)                                   # (B, T, V)
    return float(cross_entropy_forward(logits, Y, overwrite_logits=True)[0]) * Y.size


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


class NumpyOptimizerState:
    """What every NumPy training backend saves and restores beside the weights: its AdamW state and its dropout
    RNG (self.optimizer: npgpt.optim.AdamW, self.dropout_rng: a numpy Generator, self.settings: TrainSettings).
    A checkpoint without a NumPy RNG (a torch run's) gets a fresh stream that depends on the seed and the step."""

    def rng_state(self) -> dict:
        return self.dropout_rng.bit_generator.state

    def set_rng_state(self, state: dict) -> None:
        self.dropout_rng.bit_generator.state = state

    def backend_state(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "rng": {"numpy": self.rng_state()}}

    def load_backend_state(self, training_state: dict) -> None:
        self.optimizer.load_state_dict(training_state["optimizer"])
        saved_rng = (training_state.get("rng") or {}).get("numpy")
        if saved_rng is not None:
            self.set_rng_state(saved_rng)
        else:                   # a torch checkpoint: its generators are torch's; a fresh, step-dependent stream
            self.dropout_rng = np.random.default_rng([self.settings.seed, int(training_state["step"])])


class NumpyBackend(NumpyOptimizerState, TrainingBackend):
    """The parameter dict (trained in place), npgpt's AdamW, the dropout generator and the window order."""

    name = "numpy"

    def __init__(self, params: dict, config, train_dataset, val_dataset, settings: TrainSettings, *,
                 metadata: dict | None = None, sample_fn=None):
        # The same layout whatever the weights came from (init_params, a loader, a checkpoint): a resumed run
        # then repeats the original's GEMMs bit for bit. The dict's entries are replaced, not its values.
        self.params = model.relay_in_place(params, config)
        self.config, self.settings = config, settings
        self.train_dataset, self.val_dataset = train_dataset, val_dataset
        self.metadata, self.sample_fn = dict(metadata or {}), sample_fn
        self.optimizer = AdamW(lr=settings.lr, betas=settings.betas, weight_decay=settings.weight_decay)
        self.dropout_rng = np.random.default_rng(settings.seed)
        self.stream = WindowStream(len(train_dataset), settings.windows_per_step(), seed=settings.seed)
        self.grads: dict | None = None          # between compute_gradients and apply_update

    @property
    def epoch(self) -> int:
        return self.stream.epoch

    # ----- one step ----------------------------------------------------------------------------------------

    def compute_gradients(self) -> tuple[float, int]:
        accum = self.settings.grad_accum_steps
        indices = self.stream.next_step()                      # (A * B,) window indices of the global batch
        loss, grads = 0.0, None
        for micro in range(accum):
            X, Y = self.train_dataset.batch(WindowStream.shard(indices, micro, 0, 1, self.settings.batch_size))
            micro_loss, micro_grads = model.loss_and_grads(self.params, X, Y, self.config, train=True,
                                                           rng=self.dropout_rng)
            loss += micro_loss
            if grads is None:
                grads = micro_grads
            else:
                _accumulate(grads, micro_grads)
        if accum > 1:                            # the mean over micro-batches, as one big batch would give
            loss /= accum
            for _, g in unique_arrays(grads):
                g /= accum
        self.grads = grads
        return float(loss), indices.size * self.train_dataset.max_length

    def clip_gradients(self, max_norm: float) -> float:
        return clip_grad_norm(self.grads, max_norm)

    def apply_update(self, lr: float) -> None:
        self.optimizer.step(self.params, self.grads, lr=lr)
        self.grads = None

    def discard_gradients(self) -> None:
        self.grads = None

    # ----- measuring ---------------------------------------------------------------------------------------

    def evaluate(self) -> dict:
        return evaluate(self.params, self.config, self.train_dataset, self.val_dataset, self.settings)

    def sample(self) -> str | None:
        return self.sample_fn(self.params) if self.sample_fn is not None else None

    # ----- state -------------------------------------------------------------------------------------------

    def data_state(self) -> dict:
        return self.stream.state_dict()

    def load_data_state(self, state: dict) -> None:
        self.stream.load_state_dict(state)

    def write_checkpoint(self, path: Path, training_state: dict) -> Path:
        return save_checkpoint(path, self.params, self.config, training_state=training_state,
                               metadata={"backend": "numpy", **self.metadata})


def train(params, config, train_dataset, val_dataset, settings: TrainSettings, *, progress=True, on_log=None,
          run_log: RunLog | None = None, resume_state: dict | None = None, on_step=None, metadata=None,
          sample_fn=None):
    """Trains `params` in place (first put in npgpt.model's "fast" layout: the dict's matrices in another layout
    are replaced by same-valued arrays); returns the history, a list of dicts per logged step:
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
    backend = NumpyBackend(params, config, train_dataset, val_dataset, settings, metadata=metadata,
                           sample_fn=sample_fn)
    loop = TrainingLoop(backend, settings, run_log=run_log, progress=progress, on_log=on_log, on_step=on_step)
    if resume_state is not None:
        loop.resume(resume_state)
    return loop.fit()


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
