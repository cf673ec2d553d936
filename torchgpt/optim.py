"""AdamW with GPT-2 param groups, gradient clipping and learning-rate schedules (twin of npgpt/optim.py).

torch.optim.AdamW's update, which npgpt.optim.AdamW reproduces step for step (t counts from 1):
    p <- p * (1 - lr * wd)                                   (decoupled weight decay, decayed params only)
    m <- beta1 m + (1 - beta1) g        v <- beta2 v + (1 - beta2) g^2
    p <- p - (lr / (1 - beta1^t)) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
"""
import math

import torch

clip_grad_norm = torch.nn.utils.clip_grad_norm_


def param_groups(model, weight_decay: float, decay: str = "matrices"):
    """Two groups: weight decay on parameters with ndim >= 2 (linear weights, embeddings), none on biases
    and LayerNorm scale/shift (decay="matrices"); or one group that decays everything (decay="all").

    A tied weight appears once (named_parameters deduplicates), like npgpt's unique_arrays.
    """
    named = list(model.named_parameters())
    if decay == "all":
        return [{"params": [p for _, p in named], "weight_decay": weight_decay}]
    if decay != "matrices":
        raise ValueError(f"decay must be 'matrices' or 'all', got {decay!r}")
    return [
        {"params": [p for _, p in named if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for _, p in named if p.ndim < 2], "weight_decay": 0.0},
    ]


def make_adamw(model, lr: float = 4e-4, weight_decay: float = 0.1, betas=(0.9, 0.999), eps: float = 1e-8,
               decay: str = "matrices", **kwargs) -> torch.optim.AdamW:
    """torch.optim.AdamW over the model's parameters with the groups of param_groups()."""
    return torch.optim.AdamW(param_groups(model, weight_decay, decay), lr=lr, betas=tuple(betas), eps=eps, **kwargs)


def set_lr(optimizer, lr: float) -> None:
    """Sets the learning rate of every param group (call before optimizer.step() with a schedule's value)."""
    for group in optimizer.param_groups:
        group["lr"] = lr


def constant_lr(step, lr):
    return lr


def warmup_cosine_lr(step, *, max_lr, warmup_steps, max_steps, min_lr=0.0):
    """Learning rate for optimizer step `step` (0-based), the same formula as npgpt.optim:

        step < warmup_steps:            max_lr * (step + 1) / warmup_steps        (linear warmup)
        warmup_steps <= step < max:     min_lr + (max_lr - min_lr) * (1 + cos(pi * progress)) / 2,
                                        progress = (step - warmup_steps) / (max_steps - warmup_steps)
        step >= max_steps:              min_lr
    """
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step >= max_steps:
        return min_lr
    progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
    return min_lr + 0.5 * (max_lr - min_lr) * (1.0 + math.cos(math.pi * progress))
