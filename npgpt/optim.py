"""AdamW, global-norm gradient clipping and learning-rate schedules for flat parameter dicts.

The update is torch.optim.AdamW's, step for step (t counts from 1):
    p <- p * (1 - lr * wd)                                   (decoupled weight decay, decayed params only)
    m <- m + (1 - beta1) (g - m)        v <- beta2 v + (1 - beta2) g^2
    p <- p - (lr / (1 - beta1^t)) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
"""
import math

import numpy as np

from npgpt.params import unique_arrays


def decay_matrices_only(name, value):
    """Weight decay on weight matrices and embeddings; none on biases and LayerNorm scale/shift."""
    return value.ndim >= 2


class AdamW:
    """In-place AdamW over a dict of arrays; tied arrays (one object under two names) are updated once.

    decay_filter(name, array) -> bool picks the parameters that get weight decay (None: all of them,
    like a single torch param group).
    """

    def __init__(self, lr=4e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1, decay_filter=decay_matrices_only):
        if lr < 0 or eps < 0 or weight_decay < 0 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"invalid AdamW settings lr={lr} betas={betas} eps={eps} weight_decay={weight_decay}")
        self.lr, self.betas, self.eps, self.weight_decay = lr, tuple(betas), eps, weight_decay
        self.decay_filter = decay_filter
        self.t = 0
        self.m = {}   # first-moment estimate per parameter name
        self.v = {}   # second-moment estimate per parameter name

    def step(self, params, grads, lr=None):
        """One update of every parameter from its gradient; `lr` overrides self.lr (schedules)."""
        lr = self.lr if lr is None else lr
        beta1, beta2 = self.betas
        self.t += 1
        step_size = lr / (1.0 - beta1 ** self.t)
        inv_sqrt_bias_correction2 = 1.0 / math.sqrt(1.0 - beta2 ** self.t)
        for name, p in unique_arrays(params):
            g = grads[name]
            if name not in self.m:
                self.m[name] = np.zeros_like(p)
                self.v[name] = np.zeros_like(p)
            m, v = self.m[name], self.v[name]
            if self.weight_decay and (self.decay_filter is None or self.decay_filter(name, p)):
                p *= 1.0 - lr * self.weight_decay
            scratch = g - m
            scratch *= 1.0 - beta1
            m += scratch                                     # m <- m + (1 - beta1)(g - m)
            np.multiply(g, g, out=scratch)
            scratch *= 1.0 - beta2
            v *= beta2
            v += scratch                                     # v <- beta2 v + (1 - beta2) g^2
            np.sqrt(v, out=scratch)
            scratch *= inv_sqrt_bias_correction2
            scratch += self.eps                              # denominator
            np.divide(m, scratch, out=scratch)
            scratch *= step_size
            p -= scratch

    def state_dict(self):
        return {"t": self.t, "m": self.m, "v": self.v, "lr": self.lr, "betas": self.betas, "eps": self.eps,
                "weight_decay": self.weight_decay}

    def load_state_dict(self, state):
        self.t, self.m, self.v = int(state["t"]), dict(state["m"]), dict(state["v"])


def global_grad_norm(grads):
    """sqrt of the sum of squares of every gradient entry (a tied gradient counted once)."""
    total = 0.0
    for _, g in unique_arrays(grads):
        flat = g.reshape(-1)
        total += float(np.dot(flat, flat))
    return math.sqrt(total)


def clip_grad_norm(grads, max_norm):
    """Scales all gradients in place by min(1, max_norm / (norm + 1e-6)); returns the norm before clipping.

    The same rule as torch.nn.utils.clip_grad_norm_.
    """
    total_norm = global_grad_norm(grads)
    clip_coef = max_norm / (total_norm + 1e-6)
    if clip_coef < 1.0:
        for _, g in unique_arrays(grads):
            g *= clip_coef
    return total_norm


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
