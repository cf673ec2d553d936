"""Learning-rate schedules (backend-neutral: TrainSettings.lr_at reads them for both loops)."""
import math


def constant_lr(step, lr):
    return lr


def warmup_cosine_lr(step, *, max_lr, warmup_steps, max_steps, min_lr=0.0):
    """Learning rate for optimizer step `step` (0-based):

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
