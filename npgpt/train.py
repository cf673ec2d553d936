"""The NumPy training loop: batches from the data pipeline, AdamW, clipping, a schedule, periodic eval.

    for each step:  loss, grads = loss_and_grads(params, X, Y)   ->  clip  ->  AdamW(lr(step))
    every eval_interval steps: mean loss on up to eval_batches train and validation batches

It is deliberately the same loop as torchgpt's, so the two can be compared step by step.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from tqdm.auto import tqdm

from npgpt import model
from npgpt.data import iterate_batches
from npgpt.loss import cross_entropy_forward, perplexity
from npgpt.optim import AdamW, clip_grad_norm, warmup_cosine_lr


@dataclass
class TrainSettings:
    max_steps: int = 100
    batch_size: int = 8
    lr: float = 4e-4
    min_lr: float = 0.0
    warmup_steps: int = 0
    cosine: bool = False            # False: constant lr after warmup; True: cosine decay to min_lr at max_steps
    weight_decay: float = 0.1
    betas: tuple = (0.9, 0.999)
    grad_clip: float | None = 1.0   # global-norm clipping, None to turn off
    eval_interval: int = 10
    eval_batches: int = 5
    seed: int = 123                 # batch order and dropout masks

    def __post_init__(self):
        for name in ("max_steps", "batch_size", "eval_interval", "eval_batches"):
            if getattr(self, name) <= 0:
                raise ValueError(f"TrainSettings.{name} must be positive, got {getattr(self, name)}")

    def lr_at(self, step):
        """Learning rate of optimizer step `step` (0-based)."""
        if self.cosine:
            return warmup_cosine_lr(step, max_lr=self.lr, warmup_steps=self.warmup_steps,
                                    max_steps=self.max_steps, min_lr=self.min_lr)
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        return self.lr


def endless_batches(dataset, batch_size, seed, start_epoch=0):
    """Batches epoch after epoch (a fresh shuffle each epoch), so max_steps may exceed one epoch."""
    epoch = start_epoch
    while True:
        produced = False
        for batch in iterate_batches(dataset, batch_size, shuffle=True, drop_last=True, seed=seed, epoch=epoch):
            produced = True
            yield epoch, batch
        if not produced:
            raise ValueError(
                f"the training set has {len(dataset)} windows, fewer than one batch of {batch_size}; "
                "lower --batch-size or the context length, or give more text"
            )
        epoch += 1


def evaluate_loss(params, config, dataset, batch_size, max_batches):
    """Mean cross-entropy over the first `max_batches` batches of `dataset` (in order, no dropout)."""
    losses = []
    for i, (X, Y) in enumerate(iterate_batches(dataset, batch_size, shuffle=False, drop_last=False)):
        if i >= max_batches:
            break
        logits, _ = model.forward(params, X, config)
        losses.append(cross_entropy_forward(logits, Y)[0])
    return float(np.mean(losses)) if losses else math.nan


def train(params, config, train_dataset, val_dataset, settings: TrainSettings, *, progress=True, on_log=None):
    """Trains `params` in place; returns the history, a list of dicts per logged step:
    {step, train_loss (the step's batch loss), lr, tokens_seen} plus, at eval steps,
    {eval_train_loss, val_loss, val_perplexity}. `on_log(entry)` is called for every entry.
    """
    optimizer = AdamW(lr=settings.lr, betas=settings.betas, weight_decay=settings.weight_decay)
    dropout_rng = np.random.default_rng(settings.seed)
    batches = endless_batches(train_dataset, settings.batch_size, settings.seed)
    history, tokens_seen = [], 0
    bar = tqdm(range(settings.max_steps), desc="numpy train", disable=not progress, leave=False)
    for step in bar:
        epoch, (X, Y) = next(batches)
        loss, grads = model.loss_and_grads(params, X, Y, config, train=True, rng=dropout_rng)
        if not math.isfinite(loss):
            raise FloatingPointError(f"loss became {loss} at step {step + 1}; lower the learning rate")
        if settings.grad_clip is not None:
            clip_grad_norm(grads, settings.grad_clip)
        lr = settings.lr_at(step)
        optimizer.step(params, grads, lr=lr)
        tokens_seen += X.size
        entry = {"step": step + 1, "epoch": epoch, "train_loss": loss, "lr": lr, "tokens_seen": tokens_seen}
        if (step + 1) % settings.eval_interval == 0 or step + 1 == settings.max_steps:
            entry["eval_train_loss"] = evaluate_loss(params, config, train_dataset, settings.batch_size, settings.eval_batches)
            if val_dataset is not None and len(val_dataset):
                entry["val_loss"] = evaluate_loss(params, config, val_dataset, settings.batch_size, settings.eval_batches)
                entry["val_perplexity"] = perplexity(entry["val_loss"])
            bar.set_postfix(train=f"{entry['eval_train_loss']:.3f}", val=f"{entry.get('val_loss', math.nan):.3f}")
        history.append(entry)
        if on_log:
            on_log(entry)
    return history


def settings_dict(settings: TrainSettings) -> dict:
    return asdict(settings)
