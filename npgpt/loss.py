"""Cross-entropy over logits (mean over non-ignored targets) and perplexity.

Speed: at GPT-2 124M with B*T = 1024 rows the logits are (1024, 50257), 196 MiB in float32, and the
softmax over them is the largest elementwise job of a train step (np.exp alone ~0.1 s on one core).
So the softmax runs in row blocks on every core (npgpt.speed.parallel), writes into one buffer (the logits
themselves when the caller allows it), and the fused cross_entropy_loss_and_grad() turns that buffer
into dlogits without further full passes.
"""
import math
from typing import NamedTuple

import numpy as np

from npgpt.speed.parallel import parallel_for

IGNORE_INDEX = -100

# Rows of the (N, V) logits per block of the row-parallel softmax: a few rows of V = 50257 (~200 KiB
# each) keep the five passes over a block in the CPU cache and the Python overhead per block small.
SOFTMAX_BLOCK_ROWS = 4


class CrossEntropyCache(NamedTuple):
    """What cross_entropy_backward needs; probs is the buffer the backward turns into dlogits in place."""
    probs: np.ndarray                # (N, V) softmax(logits), N = every position
    targets: np.ndarray              # (N,) target ids, ignored rows set to 0 (safe to index with)
    kept: np.ndarray                 # (N,) bool, False where the target was ignore_index
    n_kept: int                      # kept.sum(): the mean's denominator
    logits_shape: tuple              # (..., V), the shape dlogits is returned in


def _flatten_and_check(logits, targets, ignore_index):
    """logits (..., V) -> (N, V) view; targets -> (N,) ids with ignored rows set to 0, and the kept mask."""
    V = logits.shape[-1]
    logits2d = logits.reshape(-1, V)                 # (N, V)
    targets1d = np.asarray(targets).reshape(-1)      # (N,)
    if targets1d.shape[0] != logits2d.shape[0]:
        raise ValueError(f"targets shape {np.shape(targets)} does not match logits shape {logits.shape[:-1]}")
    kept = targets1d != ignore_index
    kept_targets = targets1d[kept]
    if kept_targets.size and (kept_targets.min() < 0 or kept_targets.max() >= V):
        raise ValueError(f"targets must be in [0, {V}) or {ignore_index}; got values {kept_targets.min()}..{kept_targets.max()}")
    safe_targets = np.where(kept, targets1d, 0)
    return logits2d, safe_targets, kept


def _softmax_rows(logits2d, out, row_scale=None):
    """out[i] = row_scale[i] * softmax(logits2d[i]) for every row (row_scale None: 1); out may BE logits2d.

    Returns row_max (N,) and row_sum (N,) = sum_j exp(logits[i, j] - row_max[i]) for the log-probabilities.
    Runs in blocks of rows on all cores; each row is computed exactly as an unsplit call would.
    """
    N = logits2d.shape[0]
    row_max = np.empty(N, dtype=logits2d.dtype)
    row_sum = np.empty(N, dtype=logits2d.dtype)

    def softmax_block(start, stop):
        x, y = logits2d[start:stop], out[start:stop]
        block_max = x.max(axis=-1, keepdims=True)                # (n, 1)
        np.subtract(x, block_max, out=y)
        np.exp(y, out=y)
        block_sum = y.sum(axis=-1, keepdims=True)                # (n, 1)
        if row_scale is None:
            y /= block_sum
        else:
            y *= row_scale[start:stop, None] / block_sum
        row_max[start:stop] = block_max[:, 0]
        row_sum[start:stop] = block_sum[:, 0]

    parallel_for(softmax_block, N, SOFTMAX_BLOCK_ROWS)
    return row_max, row_sum


def _mean_nll(target_logits, row_max, row_sum, kept):
    """-mean over kept rows of log p[target] = logit[target] - max - log(sum exp(logit - max)), summed in float64."""
    log_p_target = target_logits - row_max - np.log(row_sum)
    n_kept = int(kept.sum())
    return -float(log_p_target[kept].sum(dtype=np.float64)) / n_kept if n_kept else math.nan


def cross_entropy_forward(logits, targets, ignore_index=IGNORE_INDEX, *, overwrite_logits=False):
    """loss = -mean over kept positions of log softmax(logits)[target].

    logits: (..., V); targets: (...) integer, entries equal to ignore_index are left out of the mean.
    Returns (loss as a Python float, CrossEntropyCache). With every target ignored the loss is nan, as in torch.
    overwrite_logits=True computes the probabilities into the logits' own buffer (saves a 196 MiB
    allocation at GPT-2 size); the caller must not use the logits afterwards.
    """
    logits2d, safe_targets, kept = _flatten_and_check(logits, targets, ignore_index)
    target_logits = logits2d[np.arange(logits2d.shape[0]), safe_targets]          # (N,), read before overwriting
    probs = logits2d if overwrite_logits else np.empty_like(logits2d)             # (N, V)
    row_max, row_sum = _softmax_rows(logits2d, probs)
    loss = _mean_nll(target_logits, row_max, row_sum, kept)
    cache = CrossEntropyCache(probs=probs, targets=safe_targets, kept=kept, n_kept=int(kept.sum()),
                              logits_shape=logits.shape)
    return loss, cache


def cross_entropy_backward(cache, dloss=1.0):
    """dlogits = dloss * (softmax(logits) - onehot(target)) / n_kept on kept rows, 0 on ignored rows.

    Returns dlogits with the logits' shape. Reuses the forward's probability buffer: call it once per forward.
    """
    dlogits = cache.probs                            # (N, V), overwritten in place
    dlogits[np.arange(dlogits.shape[0]), cache.targets] -= 1.0
    if not cache.kept.all():
        dlogits[~cache.kept] = 0.0
    scale = dloss / max(cache.n_kept, 1)

    def scale_block(start, stop):
        dlogits[start:stop] *= scale

    parallel_for(scale_block, dlogits.shape[0], SOFTMAX_BLOCK_ROWS)
    return dlogits.reshape(cache.logits_shape)


def cross_entropy_loss_and_grad(logits, targets, ignore_index=IGNORE_INDEX, *, dloss=1.0, overwrite_logits=False):
    """cross_entropy_forward and _backward fused: (loss, dlogits) with dlogits shaped like logits.

    The same math with one pass less over (N, V): the softmax normalization of row i is multiplied by
    its share of the mean, s_i = dloss / n_kept (0 on ignored rows), so
        dlogits[i] = s_i * softmax(logits[i]) - s_i * onehot(target_i)
    comes out of the softmax pass directly. overwrite_logits=True reuses the logits buffer for dlogits.
    """
    logits2d, safe_targets, kept = _flatten_and_check(logits, targets, ignore_index)
    rows = np.arange(logits2d.shape[0])
    target_logits = logits2d[rows, safe_targets]                                  # (N,)
    n_kept = int(kept.sum())
    row_scale = np.where(kept, dloss / max(n_kept, 1), 0.0).astype(logits2d.dtype)   # (N,)
    dlogits = logits2d if overwrite_logits else np.empty_like(logits2d)           # (N, V)
    row_max, row_sum = _softmax_rows(logits2d, dlogits, row_scale)
    dlogits[rows, safe_targets] -= row_scale                                      # ignored rows: 0 - 0
    loss = _mean_nll(target_logits, row_max, row_sum, kept)
    return loss, dlogits.reshape(logits.shape)


def perplexity(loss):
    """exp(loss): the effective number of equally likely next tokens."""
    return math.exp(loss) if loss < 700 else math.inf
