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
    parallel_for(lambda start, stop: _sigmoid_into(gf[start:stop], of[start:stop]), gf.size, SILU_BLOCK)
    return out


def _sigmoid_into(g, out):
    """out = 1 / (1 + exp(-g)) for one block (1-D arrays of one length; out may be g)."""
    np.negative(g, out=out)
    with np.errstate(over="ignore"):                 # errstate is per thread: set here, in the worker
        np.exp(out, out=out)                         # exp(-g), inf where g < about -88
    out += 1.0
    np.reciprocal(out, out=out)                      # 1 / (1 + exp(-g))


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
    parallel_for(lambda start, stop: _silu_backward_into(df[start:stop], gf[start:stop], sf[start:stop],
                                                         dgf[start:stop]), dgf.size, SILU_BLOCK)
    return dg


def _silu_backward_into(dout, g, sig, out):
    """out = dout * silu'(g) = (dout sig) (1 + g (1 - sig)) for one block (out may be dout)."""
    factor = 1.0 - sig
    factor *= g
    factor += 1.0                                    # 1 + g (1 - sig)
    np.multiply(dout, sig, out=out)                  # dout sig
    out *= factor


def swiglu_infer(x, p):
    """swiglu_forward's output without its cache (inference): silu(g) * u computed in the gate's buffer, which
    is dropped before the down projection's output exists.   x: (B, T, C) -> out: (B, T, C), equal to the
    forward's bit for bit (the same products in the same order)."""
    h, u = linear_layers_together(x, p, ("gate", "up"))        # (B, T, F) each: g, u (one product if side by side)
    h *= sigmoid(h)                                            # silu(g) = g * sigmoid(g), in place
    h *= u                                                     # silu(g) * u
    return linear_layer_forward(h, p, "down")[0]               # (B, T, C)


def gated_silu(g, u):
    """The gate of SwiGLU: sig = sigmoid(g), s = silu(g) = g * sig, h = s * u, each (..., F) like g.

    Written as silu_forward followed by s * u, but in cache-sized blocks on every core: the four passes over a
    block stay in the CPU cache instead of streaming (B, T, F) arrays through memory (bit-equal: the same
    operations in the same order)."""
    sig, s, h = (np.empty(g.shape, dtype=np.result_type(g, u)) for _ in range(3))
    gf, uf, sigf, sf, hf = flat_views(g, u, sig, s, h)

    def gate_block(start, stop):
        sig_b, s_b = sigf[start:stop], sf[start:stop]
        _sigmoid_into(gf[start:stop], sig_b)
        np.multiply(gf[start:stop], sig_b, out=s_b)  # silu(g)
        np.multiply(s_b, uf[start:stop], out=hf[start:stop])

    parallel_for(gate_block, gf.size, SILU_BLOCK)
    return sig, s, h


def gated_silu_backward(dh, g, u, sig, s):
    """gated_silu's backward: dh (..., F) -> du = dh * s, dg = (dh * u) * silu'(g), both (..., F), computed in
    cache-sized blocks on every core (bit-equal to dh * s and silu_backward(dh * u, ...))."""
    du, dg = (np.empty(dh.shape, dtype=np.result_type(dh, s)) for _ in range(2))
    dhf, gf, uf, sigf, sf, duf, dgf = flat_views(dh, g, u, sig, s, du, dg)

    def gate_backward_block(start, stop):
        dh_b, dg_b = dhf[start:stop], dgf[start:stop]
        np.multiply(dh_b, sf[start:stop], out=duf[start:stop])          # du = dh * silu(g)
        np.multiply(dh_b, uf[start:stop], out=dg_b)                     # dh * u: silu's upstream gradient
        _silu_backward_into(dg_b, gf[start:stop], sigf[start:stop], dg_b)   # (dh u) silu'(g)

    parallel_for(gate_backward_block, dhf.size, SILU_BLOCK)
    return du, dg


def swiglu_forward(x, p):
    """x: (B, T, C); p: {"gate.weight" (F, C), "up.weight" (F, C), "down.weight" (C, F)} (+ LoRA adapters)
    -> out: (B, T, C), SwiGLUCache."""
    g, gate_cache = linear_layer_forward(x, p, "gate")          # (B, T, F)
    u, up_cache = linear_layer_forward(x, p, "up")              # (B, T, F)
    sig, s, h = gated_silu(g, u)                                # (B, T, F): sigmoid(g), silu(g), silu(g) * u
    out, down_cache = linear_layer_forward(h, p, "down")        # (B, T, C)
    return out, SwiGLUCache(gate=gate_cache, up=up_cache, silu=SiLUCache(g=g, sig=sig), silu_out=s, u=u,
                            down=down_cache)


def swiglu_backward(dout, cache):
    """dout: (B, T, C) -> dx: (B, T, C), grads under p's keys.

        dh = dout Wd                 dWd = dout^T h,  h = silu(g) * u
        du = dh * silu(g)            dg = dh * u * silu'(g)
        dx = dg Wg + du Wu           dWg = dg^T x,  dWu = du^T x
    """
    dh, grads = linear_layer_backward(dout, cache.down)         # (B, T, F)
    du, dg = gated_silu_backward(dh, cache.silu.g, cache.u, cache.silu.sig, cache.silu_out)
    dx, gate_grads = linear_layer_backward(dg, cache.gate)
    dx_up, up_grads = linear_layer_backward(du, cache.up)
    dx += dx_up
    grads.update(gate_grads)
    grads.update(up_grads)
    return dx, grads
