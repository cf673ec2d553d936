"""Train the NumPy model and its torch twin in lockstep from identical weights (the `gpt2 demo` engine).

Both backends see the same initial parameters (drawn by npgpt.model.init_params and loaded into
torchgpt.GPTModel), the same batches in the same order (npgpt.data.iterate_batches), the same AdamW
(decay on matrices only, torch.optim.AdamW's update rule) and the same gradient clipping. With dropout
off, the two loss curves differ only by floating-point rounding: in float32 the two libraries sum in
different orders, and the small differences grow slowly as training amplifies them.

    history = train_side_by_side(params, config, train_set, val_set, LockstepSettings(steps=100))
    history[k] == {"step", "numpy_loss", "torch_loss", "abs_diff", ("numpy_val_loss", "torch_val_loss")}
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from npgpt import model as npmodel
from npgpt.data import SlidingWindowDataset, iterate_batches
from npgpt.memory import keep_freed_memory
from npgpt.optim import AdamW, clip_grad_norm
from npgpt.train import endless_batches, evaluate_loss
from torchgpt.loss import cross_entropy
from torchgpt.model import GPTModel, load_numpy_params
from torchgpt.optim import make_adamw


@dataclass
class LockstepSettings:
    steps: int = 100
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.1
    grad_clip: float | None = 1.0
    eval_interval: int = 10
    eval_batches: int = 4
    seed: int = 123               # batch order

    def __post_init__(self):
        for name in ("steps", "batch_size", "eval_interval", "eval_batches"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")


class TorchTwin:
    """The torch side of the lockstep: a GPTModel holding a copy of the NumPy parameters, its AdamW."""

    def __init__(self, params: dict, config, settings: LockstepSettings, dtype=torch.float32):
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
        """Mean loss over the first max_batches batches in order (eval mode), as npgpt.train.evaluate_loss."""
        self.model.eval()
        losses = []
        for i, (X, Y) in enumerate(iterate_batches(dataset, batch_size, shuffle=False, drop_last=False)):
            if i >= max_batches:
                break
            losses.append(float(cross_entropy(self.model(torch.from_numpy(X)), torch.from_numpy(Y))))
        self.model.train()
        return float(np.mean(losses)) if losses else math.nan


class NumpyTwin:
    """The NumPy side: the parameter dict itself (updated in place) and npgpt's AdamW."""

    def __init__(self, params: dict, config, settings: LockstepSettings):
        self.params, self.config = params, config
        self.optimizer = AdamW(lr=settings.lr, weight_decay=settings.weight_decay)
        self.grad_clip = settings.grad_clip

    def step(self, X: np.ndarray, Y: np.ndarray) -> float:
        loss, grads = npmodel.loss_and_grads(self.params, X, Y, self.config)
        if self.grad_clip is not None:
            clip_grad_norm(grads, self.grad_clip)
        self.optimizer.step(self.params, grads)
        return loss

    def evaluate(self, dataset, batch_size: int, max_batches: int) -> float:
        return evaluate_loss(self.params, self.config, dataset, batch_size, max_batches)


def train_side_by_side(params: dict, config, train_set: SlidingWindowDataset, val_set: SlidingWindowDataset | None,
                       settings: LockstepSettings, *, on_step=None) -> tuple[list[dict], NumpyTwin, TorchTwin]:
    """Trains copies of `params` in NumPy and torch in lockstep; returns (history, numpy_twin, torch_twin).

    params: canonical NumPy parameters (float32 or float64; the torch twin takes the same dtype).
    config.drop_rate must be 0: dropout masks are random per backend, so with dropout the curves would
    differ by more than rounding. on_step(entry) is called after every step (printing, progress bars).
    """
    if config.drop_rate != 0.0:
        raise ValueError(f"side-by-side training needs drop_rate=0 (got {config.drop_rate}); "
                         f"use config.replace(drop_rate=0.0)")
    keep_freed_memory()   # both backends reuse each step's freed activations instead of faulting them in again
    dtype = next(iter(params.values())).dtype
    torch_dtype = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}[dtype]
    torch_twin = TorchTwin(params, config, settings, dtype=torch_dtype)
    numpy_twin = NumpyTwin(copy_params(params), config, settings)
    batches = endless_batches(train_set, settings.batch_size, settings.seed)
    history = []
    for step in range(1, settings.steps + 1):
        _, (X, Y) = next(batches)
        started = time.perf_counter()
        numpy_loss = numpy_twin.step(X, Y)
        numpy_seconds = time.perf_counter() - started
        started = time.perf_counter()
        torch_loss = torch_twin.step(X, Y)
        torch_seconds = time.perf_counter() - started
        entry = {"step": step, "numpy_loss": numpy_loss, "torch_loss": torch_loss,
                 "abs_diff": abs(numpy_loss - torch_loss), "numpy_seconds": numpy_seconds,
                 "torch_seconds": torch_seconds, "tokens_seen": step * X.size}
        if val_set is not None and (step % settings.eval_interval == 0 or step == settings.steps):
            entry["numpy_val_loss"] = numpy_twin.evaluate(val_set, settings.batch_size, settings.eval_batches)
            entry["torch_val_loss"] = torch_twin.evaluate(val_set, settings.batch_size, settings.eval_batches)
        history.append(entry)
        if on_step is not None:
            on_step(entry)
    return history, numpy_twin, torch_twin


def copy_params(params: dict) -> dict:
    """A deep copy of a parameter dict that keeps tied arrays tied (one copy per distinct array)."""
    copies: dict[int, np.ndarray] = {}
    return {name: copies.setdefault(id(value), value.copy()) for name, value in params.items()}
