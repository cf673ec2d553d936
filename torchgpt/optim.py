"""AdamW with GPT-2 param groups and gradient clipping (twin of npgpt/optim.py; schedules: gptcore.engine.schedule).

torch.optim.AdamW's update, which npgpt.optim.AdamW reproduces step for step (t counts from 1):
    p <- p * (1 - lr * wd)                                   (decoupled weight decay, decayed params only)
    m <- beta1 m + (1 - beta1) g        v <- beta2 v + (1 - beta2) g^2
    p <- p - (lr / (1 - beta1^t)) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
"""
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
