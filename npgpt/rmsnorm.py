"""RMSNorm over the last axis, with a learned scale and no shift (Llama):

    out = x / sqrt(mean(x^2) + eps) * scale          statistics over the last axis (C)

Unlike LayerNorm it does not subtract the mean: only the root mean square is normalized away.
"""
from typing import NamedTuple

import numpy as np


class RMSNormCache(NamedTuple):
    """What rmsnorm_backward needs: the normalized input and the per-row reciprocal RMS."""
    xhat: np.ndarray                 # (..., C)  x * rstd
    rstd: np.ndarray                 # (..., 1)  1 / sqrt(mean(x^2) + eps), per row
    scale: np.ndarray                # (C,)


def rmsnorm_forward(x, scale, eps=1e-5):
    """out = scale * x * rstd, rstd = 1 / sqrt(mean(x^2) + eps) over the last axis.

    x: (..., C); scale: (C,); eps: a Python float (the config's norm_eps) -> out: (..., C), RMSNormCache.
    """
    ms = (x * x).mean(axis=-1, keepdims=True)        # (..., 1), stays in x's dtype
    rstd = 1.0 / np.sqrt(ms + eps)                   # (..., 1); eps a Python float: no float64 promotion
    xhat = x * rstd                                  # (..., C)
    return xhat * scale, RMSNormCache(xhat=xhat, rstd=rstd, scale=scale)


def rmsnorm_infer(x, scale, eps=1e-5):
    """rmsnorm_forward's output without its cache (inference): the same operations in one buffer, so the
    values equal the forward's bit for bit.   x: (..., C); scale: (C,) -> out: (..., C)."""
    ms = (x * x).mean(axis=-1, keepdims=True)        # (..., 1)
    out = x * (1.0 / np.sqrt(ms + eps))              # xhat, the only new (..., C) array
    out *= scale
    return out


def rmsnorm_backward(dout, cache):
    """Gradients of out = scale * xhat, xhat = x * rstd, rstd = (mean(x^2) + eps)^(-1/2).

    dout: (..., C) -> dx: (..., C), dscale: (C,)
        dxhat  = dout * scale
        d rstd / dx_j = -rstd^3 x_j / C = -rstd^2 xhat_j / C, so
        dx     = rstd * (dxhat - xhat * mean(dxhat * xhat))        (mean over C; LayerNorm's without mean(dxhat))
        dscale = sum(dout * xhat)                                  (sum over all rows)
    """
    xhat = cache.xhat
    rows_axes = tuple(range(dout.ndim - 1))
    dscale = (dout * xhat).sum(axis=rows_axes)
    dxhat = dout * cache.scale                       # (..., C)
    mean_dxhat_xhat = (dxhat * xhat).mean(axis=-1, keepdims=True)   # (..., 1)
    dx = dxhat
    dx -= xhat * mean_dxhat_xhat
    dx *= cache.rstd
    return dx, dscale
