"""GELU, tanh approximation, as GPT-2 uses it.

Speed: at GPT-2 124M the feed-forward hidden layer is (B*T, 4C) = 3M numbers per block, and np.tanh is
the costliest ufunc there. The formulas below run in blocks of GELU_BLOCK elements (the several passes
over a block stay in the CPU cache) shared among the cores (npgpt.speed.parallel).
"""
import math
from typing import NamedTuple

import numpy as np

from npgpt.speed.parallel import flat_views, parallel_for

# Python floats, not NumPy float64 scalars: they keep float32 arrays float32 (NumPy 2 promotion).
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
GELU_CUBIC = 0.044715

GELU_BLOCK = 1 << 15   # float32 elements per block: 128 KiB per array


class GeluCache(NamedTuple):
    """What gelu_backward needs: the input and tanh(u), so the backward computes no tanh again."""
    x: np.ndarray                    # any shape
    tanh_u: np.ndarray               # same shape, C order


def gelu_forward(x):
    """out = 0.5 x (1 + tanh(u)),  u = sqrt(2/pi) (x + 0.044715 x^3).

    x: any shape -> out: same shape, GeluCache(x, tanh_u).
    """
    out = np.empty(x.shape, dtype=x.dtype)           # C order, so the flat views below are views
    tanh_u = np.empty(x.shape, dtype=x.dtype)
    xf, of, tf = flat_views(x, out, tanh_u)

    def gelu_block(start, stop):
        xb, ob, tb = xf[start:stop], of[start:stop], tf[start:stop]
        np.multiply(xb, xb, out=tb)                  # x*x*x, not x**3: NumPy fast-paths only **2
        tb *= SQRT_2_OVER_PI * GELU_CUBIC
        tb += SQRT_2_OVER_PI
        tb *= xb                                     # u = sqrt(2/pi) (x + 0.044715 x^3)
        np.tanh(tb, out=tb)
        np.add(tb, 1.0, out=ob)
        ob *= xb
        ob *= 0.5                                    # 0.5 x (1 + tanh u)

    parallel_for(gelu_block, xf.size, GELU_BLOCK)
    return out, GeluCache(x=x, tanh_u=tanh_u)


def gelu_infer(x):
    """gelu_forward's output without its cache (inference), written INTO x: no tanh(u) array is kept and no
    output array allocated, only one GELU_BLOCK temporary per block. The same operations in the same order
    as gelu_forward, so the values are equal bit for bit.   x: any shape, C-contiguous, owned by the caller
    (the fc1 output of npgpt.feedforward.feedforward_infer) -> x, overwritten by gelu(x).
    """
    if not x.flags.c_contiguous:
        raise ValueError("gelu_infer works in place and needs a C-contiguous array")
    xf = x.reshape(-1)

    def gelu_block_in_place(start, stop):
        xb = xf[start:stop]
        tb = xb * xb                                 # the block's one temporary
        tb *= SQRT_2_OVER_PI * GELU_CUBIC
        tb += SQRT_2_OVER_PI
        tb *= xb                                     # u
        np.tanh(tb, out=tb)
        tb += 1.0
        xb *= tb                                     # x (1 + tanh u)
        xb *= 0.5

    parallel_for(gelu_block_in_place, xf.size, GELU_BLOCK)
    return x


def gelu_backward(dout, cache):
    """dx = dout * [0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) sqrt(2/pi) (1 + 3 * 0.044715 x^2)].

    dout: same shape as x -> dx: same shape.
    """
    dx = np.empty(cache.x.shape, dtype=np.result_type(dout, cache.x))
    xf, tf, df, dxf = flat_views(cache.x, cache.tanh_u, dout, dx)

    def gelu_backward_block(start, stop):
        xb, tb, db, dxb = xf[start:stop], tf[start:stop], df[start:stop], dxf[start:stop]
        du_dx = xb * xb
        du_dx *= 3.0 * GELU_CUBIC * SQRT_2_OVER_PI
        du_dx += SQRT_2_OVER_PI                      # du/dx = sqrt(2/pi) (1 + 3 * 0.044715 x^2)
        np.multiply(tb, tb, out=dxb)
        np.subtract(1.0, dxb, out=dxb)               # 1 - tanh^2 u
        dxb *= xb
        dxb *= du_dx                                 # x (1 - tanh^2 u) du/dx
        dxb += tb
        dxb += 1.0
        dxb *= 0.5                                   # d gelu / dx
        dxb *= db

    parallel_for(gelu_backward_block, xf.size, GELU_BLOCK)
    return dx
