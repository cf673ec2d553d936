"""Rotary position embedding (RoPE), the rotate-half convention of Hugging Face's Llama.

A query or key vector of width D is cut into its two halves (x1, x2) = (x[:D/2], x[D/2:]); pair j of
the position-p vector, (x1_j, x2_j), is rotated by the angle p * inv_freq_j:

    inv_freq_j = theta^(-2j / D)                  j = 0 .. D/2 - 1   (theta: the config's rope_theta)
    out1 = x1 cos - x2 sin                        out2 = x2 cos + x1 sin
    i.e. out = x * cos + rotate_half(x) * sin,    rotate_half(x) = (-x2, x1),  cos/sin tables (T, D)

Queries and keys are both rotated, so their dot product depends only on the positions' difference.
The rotation is orthogonal: its backward is the rotation by -angle (sin -> -sin).
Positions are absolute: with a KV cache the new tokens sit after the cached ones (rope_tables(positions)).
Llama 3's "llama3" scaling changes only the frequencies (gptcore.arch.llama.inverse_frequencies, shared with
the torch twin); the rotation and its backward stay.
"""
from typing import NamedTuple

import numpy as np

from gptcore.arch.llama import inverse_frequencies
from npgpt.speed.parallel import parallel_for


class RopeCache(NamedTuple):
    """The tables the forward rotated with; the backward rotates back with the same ones."""
    cos: np.ndarray                  # broadcastable to x: (T, D) or (B, 1, T, D)
    sin: np.ndarray


def rope_inverse_frequencies(head_dim, theta, scaling=None):
    """inv_freq_j = theta^(-2j / D), j = 0 .. D/2 - 1, in float64: (D/2,); scaled by Llama 3's rule when
    `scaling` is a "llama3" dict (config.rope_scaling)."""
    return inverse_frequencies(head_dim, theta, scaling)


def rope_tables(positions, head_dim, theta, dtype=np.float32, scaling=None):
    """cos and sin of every (position, frequency) angle, each half of D repeated (the rotate-half layout).

    positions: (T,) or (B, T) integers -> cos, sin: (T, D), or (B, 1, T, D) (broadcast over the heads) in
    `dtype`. The angles are computed in float64 and rounded once, so both twins get the same tables.
    scaling: config.rope_scaling (None, or Llama 3's "llama3" dict).
    """
    positions = np.asarray(positions)
    inv_freq = rope_inverse_frequencies(head_dim, theta, scaling)                                # (D/2,)
    angles = positions[..., None].astype(np.float64) * inv_freq                                 # (..., T, D/2)
    angles = np.concatenate([angles, angles], axis=-1)                                          # (..., T, D)
    if angles.ndim == 3:
        angles = angles[:, None]                     # (B, 1, T, D): one row of positions per batch row
    return np.cos(angles).astype(dtype), np.sin(angles).astype(dtype)


def _rotate(x, cos, sin):
    """x * cos + rotate_half(x) * sin for x (..., T, D): out1 = x1 cos - x2 sin, out2 = x2 cos + x1 sin.

    Slab by slab along the first axis (a batch row of (H, T, D) for the model's (B, H, T, D)), the slabs shared
    among the cores (npgpt.speed.parallel): the five passes over a slab stay in the CPU cache."""
    half = x.shape[-1] // 2
    out = np.empty(np.broadcast_shapes(x.shape, cos.shape), dtype=np.result_type(x, cos, sin))

    def along_first_axis(t, start, stop):            # tables with their own first axis go slab by slab too
        return t[start:stop] if t.ndim == out.ndim and t.shape[0] == out.shape[0] else t

    def rotate_slabs(start, stop):
        xs, os = along_first_axis(x, start, stop), out[start:stop]
        cs, ss = along_first_axis(cos, start, stop), along_first_axis(sin, start, stop)
        np.multiply(xs, cs, out=os)
        os[..., :half] -= xs[..., half:] * ss[..., :half]
        os[..., half:] += xs[..., :half] * ss[..., half:]

    parallel_for(rotate_slabs, out.shape[0], 1)
    return out


def rope_forward(x, cos, sin):
    """x: (B, H, T, D) queries or keys; cos, sin: rope_tables(...) for these T positions
    -> out: (B, H, T, D), RopeCache(cos, sin)."""
    return _rotate(x, cos, sin), RopeCache(cos=cos, sin=sin)


def rope_backward(dout, cache):
    """dout: (B, H, T, D) -> dx: (B, H, T, D).

    The forward is out = R(angle) x with R orthogonal (each pair rotated in its plane), so
        dx = R(angle)^T dout = R(-angle) dout:   dx1 = d1 cos + d2 sin,   dx2 = d2 cos - d1 sin
    """
    return _rotate(dout, cache.cos, -cache.sin)
