"""AdamW and global-norm gradient clipping for flat parameter dicts (schedules: gptcore.engine.schedule).

The update is torch.optim.AdamW's, step for step (t counts from 1):
    p <- p * (1 - lr * wd)                                   (decoupled weight decay, decayed params only)
    m <- lerp(m, g, 1 - beta1)          v <- beta2 v + (1 - beta2) g^2
         (torch's lerp: m + w (g - m) for w < 0.5, else g - (1 - w)(g - m); the same in exact arithmetic)
    p <- p - (lr / (1 - beta1^t)) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
"""
import math

import numpy as np

from npgpt.speed.parallel import parallel_for
from gptcore.params import unique_arrays

# Elements per block of the AdamW update (512 KiB of float32 per array): the five arrays one block
# touches stay in the CPU cache (L2 and the shared L3) through the dozen passes of the update, and each of
# the ~14 ufunc calls per block does enough work to repay its ~3 us of Python and GIL hand-over, which both
# threads pay in turn. Measured here (2 cores, 1 MiB L2 each, whole-model step): SmolLM2-135M 0.23 s at
# 2**15, 0.174 s at 2**16, 0.163 s at 2**17, 0.180 s at 2**18, 0.245 s at 2**20 (GPT-2 124M: 0.202, 0.152,
# 0.141, 0.152, 0.189 s); an in-process A/B of whole SmolLM2 train steps: 0.978 of the time at 2**15.
ADAMW_BLOCK = 1 << 17


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
        self.t += 1
        beta1, beta2 = self.betas
        step_size = lr / (1.0 - beta1 ** self.t)
        inv_sqrt_bias_correction2 = 1.0 / math.sqrt(1.0 - beta2 ** self.t)
        for name, p in unique_arrays(params):
            if name not in self.m:
                self.m[name] = np.zeros_like(p)
                self.v[name] = np.zeros_like(p)
            # Each array in p's memory layout, so that _update steps them in blocks: state restored row by row
            # for a transposed p is relaid once and kept; a gradient made elsewhere is copied for this step.
            m = self.m[name] = laid_out_like(p, self.m[name])
            v = self.v[name] = laid_out_like(p, self.v[name])
            decayed = self.weight_decay and (self.decay_filter is None or self.decay_filter(name, p))
            decay_factor = 1.0 - lr * self.weight_decay if decayed else 1.0
            self._update(p, laid_out_like(p, grads[name]), m, v, decay_factor, step_size, inv_sqrt_bias_correction2)

    def _update(self, p, g, m, v, decay_factor, step_size, inv_sqrt_bias_correction2):
        """The AdamW formulas for one parameter, in place, on blocks of ADAMW_BLOCK elements on all cores.

        Speed: at GPT-2 124M every array here is up to 154 MiB. A dozen whole-array passes would each
        stream it through memory (and allocate a same-sized scratch); on a block of 2**15 elements the
        passes hit the CPU cache, and blocks are spread over the cores (npgpt.speed.parallel).
        """
        beta1, beta2 = self.betas
        eps = self.eps
        weight = 1.0 - beta1                              # torch: exp_avg.lerp_(grad, 1 - beta1)
        flat = blockable_views((p, g, m, v))          # views: writing them writes p, m, v
        if flat is None:                                  # a p with no blockable layout (a view at odd
            flat = [a[None] for a in (p, g, m, v)]        # strides): one block, correct but slow
            n, block = 1, 1
        else:                                             # blocks of about ADAMW_BLOCK elements
            n, block = flat[0].shape[0], max(1, ADAMW_BLOCK // max(1, flat[0][0].size))

        def update_block(start, stop):
            pb, gb, mb, vb = (a[start:stop] for a in flat)
            scratch = np.empty_like(pb)
            if decay_factor != 1.0:
                pb *= decay_factor                            # p <- p (1 - lr wd)
            np.subtract(gb, mb, out=scratch)                  # m <- lerp(m, g, w), w = 1 - beta1, as torch:
            if weight < 0.5:
                scratch *= weight
                mb += scratch                                 #   m + w (g - m)
            else:                                             #   g - (1 - w)(g - m): exact for w = 1 (beta1 = 0),
                scratch *= 1.0 - weight                       #   where m + (g - m) loses g's low bits next to
                np.subtract(gb, scratch, out=mb)              #   a large old m
            np.multiply(gb, gb, out=scratch)
            scratch *= 1.0 - beta2
            vb *= beta2
            vb += scratch                                     # v <- beta2 v + (1 - beta2) g^2
            np.sqrt(vb, out=scratch)
            scratch *= inv_sqrt_bias_correction2
            scratch += eps                                    # denominator
            np.divide(mb, scratch, out=scratch)
            scratch *= step_size
            pb -= scratch                                     # p <- p - step_size m / denominator

        parallel_for(update_block, n, block)

    def state_dict(self):
        return {"t": self.t, "m": self.m, "v": self.v, "lr": self.lr, "betas": self.betas, "eps": self.eps,
                "weight_decay": self.weight_decay}

    def load_state_dict(self, state):
        self.t, self.m, self.v = int(state["t"]), dict(state["m"]), dict(state["v"])


def blockable_views(arrays):
    """Views of the same-shaped arrays, element for element alike, that blocks along the first axis cut into
    pieces with a contiguous last axis: 1-D views of contiguous arrays (of the transposes of matrices stored
    transposed, npgpt.model's "fast" layout), else the (in, out) transposes of matrices stored transposed
    whose rows are contiguous but apart (a side-by-side group's column blocks, npgpt.linear.stored_transposed);
    None when the arrays are laid out differently from each other."""
    if all(a.flags.c_contiguous for a in arrays):
        return [a.reshape(-1) for a in arrays]
    if all(a.ndim == 2 and a.T.flags.c_contiguous for a in arrays):
        return [a.T.reshape(-1) for a in arrays]
    if all(a.ndim == 2 and a.strides[0] == a.itemsize and a.strides[1] >= a.shape[0] * a.itemsize
           for a in arrays):
        return [a.T for a in arrays]
    return None


def laid_out_like(p, values):
    """`values` itself when it and p can be stepped block by block together (blockable_views), else a copy of
    it in p's memory layout (same shape)."""
    if blockable_views((p, values)) is not None:
        return values
    out = np.empty_like(p)
    out[...] = values
    return out


def global_grad_norm(grads):
    """sqrt of the sum of squares of every gradient entry (a tied gradient counted once)."""
    total = 0.0
    for _, g in unique_arrays(grads):
        flat = g.ravel(order="K")                    # a view for C- and F-contiguous arrays, else a copy
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


