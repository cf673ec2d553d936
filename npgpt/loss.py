"""Cross-entropy over logits (mean over non-ignored targets) and perplexity."""
import math

import numpy as np

IGNORE_INDEX = -100


def cross_entropy_forward(logits, targets, ignore_index=IGNORE_INDEX):
    """loss = -mean over kept positions of log softmax(logits)[target].

    logits: (..., V); targets: (...) integer, entries equal to ignore_index are left out of the mean.
    Returns (loss as a Python float, cache). With every target ignored the loss is nan, as in torch.
    """
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
    # probs = softmax(logits), computed into one new (N, V) buffer that the backward reuses.
    row_max = logits2d.max(axis=-1, keepdims=True)   # (N, 1)
    probs = logits2d - row_max
    np.exp(probs, out=probs)
    row_sum = probs.sum(axis=-1, keepdims=True)      # (N, 1)
    probs /= row_sum
    rows = np.arange(logits2d.shape[0])
    # log p[target] = logit[target] - max - log(sum exp(logit - max)); the sum over kept rows in float64.
    log_p_target = logits2d[rows, safe_targets] - row_max[:, 0] - np.log(row_sum[:, 0])
    n_kept = int(kept.sum())
    loss = -float(log_p_target[kept].sum(dtype=np.float64)) / n_kept if n_kept else math.nan
    cache = (probs, safe_targets, kept, n_kept, logits.shape)
    return loss, cache


def cross_entropy_backward(cache, dloss=1.0):
    """dlogits = dloss * (softmax(logits) - onehot(target)) / n_kept on kept rows, 0 on ignored rows.

    Returns dlogits with the logits' shape. Reuses the forward's probability buffer: call it once per forward.
    """
    probs, safe_targets, kept, n_kept, logits_shape = cache
    dlogits = probs                                  # (N, V), overwritten in place
    dlogits[np.arange(dlogits.shape[0]), safe_targets] -= 1.0
    if not kept.all():
        dlogits[~kept] = 0.0
    dlogits *= dloss / max(n_kept, 1)
    return dlogits.reshape(logits_shape)


def perplexity(loss):
    """exp(loss): the effective number of equally likely next tokens."""
    return math.exp(loss) if loss < 700 else math.inf
