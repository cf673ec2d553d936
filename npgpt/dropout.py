"""Inverted dropout with the mask drawn from a passed numpy.random.Generator (reproducible runs)."""
from typing import NamedTuple

import numpy as np


class DropoutCache(NamedTuple):
    """What dropout_backward needs: the keep-mask and 1 / (1 - p). No cache at all (None) means identity."""
    mask: np.ndarray                 # bool, the input's shape: True where the element was kept
    keep_scale: float                # 1 / (1 - p)


def dropout_mask(shape, p, rng):
    """Boolean keep-mask: True where rng.random() >= p (so each element is kept with probability 1 - p)."""
    return rng.random(shape) >= p


def dropout_forward(x, p, *, rng=None, mask=None):
    """out = x * keep / (1 - p).  x: any shape; keep: bool, same shape (drawn from `rng` unless given).

    p == 0 with no mask is the identity (evaluation, or a model without dropout): cache None.
    Otherwise the cache is DropoutCache(mask, keep_scale).
    """
    if mask is None:
        if p == 0.0:
            return x, None
        if rng is None:
            raise ValueError("dropout with p > 0 needs a numpy.random.Generator (rng=...) or an explicit mask")
        mask = dropout_mask(x.shape, p, rng)
    if mask.shape != x.shape:
        raise ValueError(f"dropout mask shape {mask.shape} does not match input shape {x.shape}")
    keep_scale = 1.0 / (1.0 - p)
    out = x * mask
    out *= keep_scale
    return out, DropoutCache(mask=mask, keep_scale=keep_scale)


def dropout_backward(dout, cache):
    """dx = dout * keep / (1 - p): the same mask and scale as the forward."""
    if cache is None:
        return dout
    dx = dout * cache.mask
    dx *= cache.keep_scale
    return dx
