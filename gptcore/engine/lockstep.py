"""Train the NumPy model and its torch twin in lockstep from identical weights (the `gpt2 demo` engine).

Both twins start from the same parameters (npgpt.train.NumpyTwin holds them, torchgpt.train.TorchTwin a
GPTModel loaded with a copy), see the same batches in the same order (gptcore.data), and take the same
AdamW step (decay on matrices only, torch.optim.AdamW's update rule) with the same gradient clipping.
With dropout off, the two loss curves differ only by floating-point rounding: in float32 the two libraries
sum in different orders, and the small differences grow slowly as training amplifies them.

    numpy_twin = NumpyTwin(copy_params(params), config, settings)
    torch_twin = TorchTwin(params, config, settings, dtype=torch.float64)
    history = train_side_by_side(numpy_twin, torch_twin, train_set, val_set, settings)
    history[k] == {"step", "numpy_loss", "torch_loss", "abs_diff", ("numpy_val_loss", "torch_val_loss")}

A twin is anything with step(X, Y) -> loss before the update, evaluate(dataset, batch_size, max_batches)
-> mean loss, and .config.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from gptcore.data import SlidingWindowDataset
from gptcore.engine.training import (check_grad_clip, check_non_negative, check_positive, check_positive_number,
                                     endless_batches)


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
            check_positive(name, getattr(self, name))
        check_positive_number("lr", self.lr)
        check_non_negative("weight_decay", self.weight_decay)
        check_grad_clip("grad_clip", self.grad_clip)

def train_side_by_side(numpy_twin, torch_twin, train_set: SlidingWindowDataset, val_set: SlidingWindowDataset | None,
                       settings: LockstepSettings, *, on_step=None) -> list[dict]:
    """Steps both twins on the same batches; returns the history (one entry per step).

    The twins' config.drop_rate must be 0: dropout masks are random per backend, so with dropout the
    curves would differ by more than rounding. on_step(entry) is called after every step (printing,
    progress bars).
    """
    for twin in (numpy_twin, torch_twin):
        if twin.config.drop_rate != 0.0:
            raise ValueError(f"side-by-side training needs drop_rate=0 (got {twin.config.drop_rate}); "
                             f"use config.replace(drop_rate=0.0)")
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
    return history


def copy_params(params: dict) -> dict:
    """A deep copy of a parameter dict that keeps tied arrays tied (one copy per distinct array)."""
    copies: dict[int, np.ndarray] = {}
    return {name: copies.setdefault(id(value), value.copy()) for name, value in params.items()}
