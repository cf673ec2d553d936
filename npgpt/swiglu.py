"""The SwiGLU feed-forward of Llama: a gated unit with its own hidden width F (config.ff_dim).

    g = x Wg^T,  u = x Wu^T                       (B, T, F)   gate and up projections, no biases
    h = silu(g) * u,  silu(g) = g * sigmoid(g)    (B, T, F)
    out = h Wd^T                                  (B, T, C)   down projection
"""
from typing import NamedTuple

import numpy as np

from npgpt.linear import LinearLayerCache, linear_layer_backward, linear_layer_forward, linear_layers_together
from npgpt.speed.parallel import flat_views, parallel_for

SILU_BLOCK = 1 << 15   # elements per block: 128 KiB per float32 array


class SiLUCache(NamedTuple):
    """silu_backward's inputs: the pre-activation and its sigmoid."""
    g: np.ndarray                    # (..., F)
    sig: np.ndarray                  # (..., F) sigmoid(g)


class SwiGLUCache(NamedTuple):
    """The three projections' caches, the SiLU's, and the up projection's output (the gate's other factor)."""
    gate: LinearLayerCache
    up: LinearLayerCache
    silu: SiLUCache
    silu_out: np.ndarray             # (B, T, F) silu(g)
    u: np.ndarray                    # (B, T, F)
    down: LinearLayerCache


def sigmoid(g):
    """1 / (1 + exp(-g)), in g's dtype. g: any shape -> (same shape), C order.

    For g below about -88 (float32; -709 in float64) exp(-g) overflows to inf and the result is 1 / inf = 0,
    the limit (the true value is below the smallest normal number there), so the overflow is silenced, not
    avoided: the piecewise stable form needs a select on the sign, which costs more than the rest together.
    In blocks of SILU_BLOCK elements shared among the cores (npgpt.speed.parallel); the passes over a block
    stay in the CPU cache (at SmolLM2's B=4, T=256 the gate holds 1.6M numbers per block of the model)."""
    out = np.empty(g.shape, dtype=g.dtype)
    gf, of = flat_views(g, out)

    def sigmoid_block(start, stop):
        ob = of[start:stop]
        np.negative(gf[start:stop], out=ob)
        with np.errstate(over="ignore"):             # errstate is per thread: set here, in the worker
            np.exp(ob, out=ob)                       # exp(-g), inf where g < about -88
        ob += 1.0
        np.reciprocal(ob, out=ob)                    # 1 / (1 + exp(-g))

    parallel_for(sigmoid_block, gf.size, SILU_BLOCK)
    return out


def silu_forward(g):
    """silu(g) = g * sigmoid(g).   g: (..., F) -> out: (..., F), SiLUCache(g, sig)."""
    sig = sigmoid(g)
    return g * sig, SiLUCache(g=g, sig=sig)


def silu_backward(dout, cache):
    """dout: (..., F) -> dg: (..., F).

        silu'(g) = sig + g sig (1 - sig) = sig (1 + g (1 - sig))
    """
    dg = np.empty(dout.shape, dtype=np.result_type(dout, cache.sig))
    df, sf, gf, dgf = flat_views(dout, cache.sig, cache.g, dg)

    def silu_backward_block(start, stop):
        sb, dgb = sf[start:stop], dgf[start:stop]
        factor = 1.0 - sb
        factor *= gf[start:stop]
        factor += 1.0                                # 1 + g (1 - sig)
        np.multiply(df[start:stop], sb, out=dgb)     # dout sig
        dgb *= factor

    parallel_for(silu_backward_block, dgf.size, SILU_BLOCK)
    return dg


def swiglu_infer(x, p):
    """swiglu_forward's output without its cache (inference): silu(g) * u computed in the gate's buffer, which
    is dropped before the down projection's output exists.   x: (B, T, C) -> out: (B, T, C), equal to the
    forward's bit for bit (the same products in the same order)."""
    h, u = linear_layers_together(x, p, ("gate", "up"))        # (B, T, F) each: g, u (one product if side by side)
    h *= sigmoid(h)                                            # silu(g) = g * sigmoid(g), in place
    h *= u                                                     # silu(g) * u
    return linear_layer_forward(h, p, "down")[0]               # (B, T, C)


def swiglu_forward(x, p):
    """x: (B, T, C); p: {"gate.weight" (F, C), "up.weight" (F, C), "down.weight" (C, F)} (+ LoRA adapters)
    -> out: (B, T, C), SwiGLUCache."""
    g, gate_cache = linear_layer_forward(x, p, "gate")          # (B, T, F)
    u, up_cache = linear_layer_forward(x, p, "up")              # (B, T, F)
    s, silu_cache = silu_forward(g)                             # (B, T, F)
    out, down_cache = linear_layer_forward(s * u, p, "down")    # (B, T, C)
    return out, SwiGLUCache(gate=gate_cache, up=up_cache, silu=silu_cache, silu_out=s, u=u, down=down_cache)


def swiglu_backward(dout, cache):
    """dout: (B, T, C) -> dx: (B, T, C), grads under p's keys.

        dh = dout Wd                 dWd = dout^T h,  h = silu(g) * u
        du = dh * silu(g)            dg = dh * u * silu'(g)
        dx = dg Wg + du Wu           dWg = dg^T x,  dWu = du^T x
    """
    dh, grads = linear_layer_backward(dout, cache.down)         # (B, T, F)
    du = dh * cache.silu_out
    dg = silu_backward(dh * cache.u, cache.silu)
    dx, gate_grads = linear_layer_backward(dg, cache.gate)
    dx_up, up_grads = linear_layer_backward(du, cache.up)
    dx += dx_up
    grads.update(gate_grads)
    grads.update(up_grads)
    return dx, grads
