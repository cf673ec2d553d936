"""LayerNorm over the last axis, with a learned scale and shift (GPT-2: eps = 1e-5, biased variance)."""
from typing import NamedTuple

import numpy as np


class LayerNormCache(NamedTuple):
    """What layernorm_backward needs. xhat (the normalized input) is kept instead of x and mean: the forward
    computes it in x - mean's buffer anyway, and the backward reads it twice."""
    xhat: np.ndarray                 # (..., C)  (x - mean) * rstd
    rstd: np.ndarray                 # (..., 1)  1 / sqrt(var + eps), per row
    scale: np.ndarray                # (C,)


def layernorm_forward(x, scale, shift, eps=1e-5):
    """out = scale * (x - mean) / sqrt(var + eps) + shift, statistics over the last axis.

    x: (..., C); scale, shift: (C,) -> out: (..., C), LayerNormCache(xhat, rstd, scale)
    """
    mean = x.mean(axis=-1, keepdims=True)            # (..., 1)
    xc = x - mean                                    # (..., C)
    var = (xc * xc).mean(axis=-1, keepdims=True)     # (..., 1), biased like torch
    rstd = 1.0 / np.sqrt(var + eps)                  # (..., 1)
    xhat = xc                                        # reuse the buffer: xhat = (x - mean) * rstd
    xhat *= rstd
    out = xhat * scale + shift
    return out, LayerNormCache(xhat=xhat, rstd=rstd, scale=scale)


def layernorm_infer(x, scale, shift, eps=1e-5):
    """layernorm_forward's output without its cache (inference): the same operations in one buffer, so the
    values are equal to the forward's bit for bit.   x: (..., C); scale, shift: (C,) -> out: (..., C)."""
    mean = x.mean(axis=-1, keepdims=True)            # (..., 1)
    out = x - mean                                   # (..., C), the only new (..., C) array
    var = (out * out).mean(axis=-1, keepdims=True)   # (..., 1)
    out *= 1.0 / np.sqrt(var + eps)                  # xhat
    out *= scale
    out += shift
    return out


def layernorm_backward(dout, cache):
    """Gradients of out = scale * xhat + shift, xhat = (x - mean) * rstd.

    dout: (..., C) -> dx: (..., C), dscale: (C,), dshift: (C,)
        dxhat  = dout * scale
        dx     = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))     (means over C)
        dscale = sum(dout * xhat)      dshift = sum(dout)                      (sums over all rows)
    """
    xhat = cache.xhat
    C = xhat.shape[-1]
    rows_axes = tuple(range(dout.ndim - 1))
    dshift = dout.sum(axis=rows_axes)
    dscale = (dout * xhat).sum(axis=rows_axes)
    dxhat = dout * cache.scale
    mean_dxhat = dxhat.mean(axis=-1, keepdims=True)
    mean_dxhat_xhat = (dxhat * xhat).sum(axis=-1, keepdims=True) / C
    dx = dxhat
    dx -= mean_dxhat
    dx -= xhat * mean_dxhat_xhat
    dx *= cache.rstd
    return dx, dscale, dshift
