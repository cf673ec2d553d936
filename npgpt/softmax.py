"""Softmax along one axis, numerically stable (the row maximum is subtracted first).

Along the last axis the rows are computed in blocks on all cores (npgpt.speed.parallel): the attention
softmax of GPT-2 124M at B=4, T=256 is 3M numbers per layer, and np.exp runs on one core.
"""
from typing import NamedTuple

import numpy as np

from npgpt.speed.parallel import parallel_for, rows_per_block


class SoftmaxCache(NamedTuple):
    """What softmax_backward needs: the output y (the Jacobian is diag(y) - y y^T) and the axis."""
    probs: np.ndarray                # y, the softmax output (the very array the forward returned)
    axis: int


def _softmax_into(x, out, axis):
    """out = exp(x - max x) / sum exp(x - max x) along `axis`; out may be x itself."""
    row_max = x.max(axis=axis, keepdims=True)
    np.subtract(x, row_max, out=out)
    np.exp(out, out=out)
    out /= out.sum(axis=axis, keepdims=True)


def _last_axis_rows(arrays, axis):
    """(N, n) row views of arrays when `axis` is the last one and all are C-contiguous, else None."""
    first = arrays[0]
    if axis not in (-1, first.ndim - 1) or first.ndim == 0 or not all(a.flags.c_contiguous for a in arrays):
        return None
    return [a.reshape(-1, first.shape[-1]) for a in arrays]


def softmax_forward(x, axis=-1, *, out=None):
    """out = exp(x - max x) / sum exp(x - max x) along `axis`.  x: any shape -> out: same.

    out: optional array to write into (may be x itself, for an in-place softmax).
    Returns out, SoftmaxCache(probs=out, axis).
    Rows that are all -inf are not supported (every causal row keeps its diagonal).
    """
    if out is None:
        out = np.empty_like(x)
    rows = _last_axis_rows((x, out), axis)
    if rows is None:
        _softmax_into(x, out, axis)
    else:
        x2d, out2d = rows                            # (N, n)
        parallel_for(lambda start, stop: _softmax_into(x2d[start:stop], out2d[start:stop], -1),
                     x2d.shape[0], rows_per_block(x2d.shape[1]))
    return out, SoftmaxCache(probs=out, axis=axis)


def _softmax_backward_into(dout, y, dx, axis):
    """dx = y * (dout - sum(dout * y)); dx may be dout itself."""
    dot = np.multiply(dout, y).sum(axis=axis, keepdims=True)    # sum_j dout_j y_j
    np.subtract(dout, dot, out=dx)
    dx *= y


def softmax_backward(dout, cache, *, out=None):
    """dx = y * (dout - sum(dout * y))  along the softmax axis (the Jacobian diag(y) - y y^T applied to dout).

    out: optional array to write dx into (may be dout itself).
    """
    y, axis = cache.probs, cache.axis
    dx = np.empty(y.shape, dtype=np.result_type(dout, y)) if out is None else out
    if y.flags.c_contiguous and dx.flags.c_contiguous:
        dout = np.ascontiguousarray(dout)            # for the row blocks below (no copy if it already is)
    rows = _last_axis_rows((dout, y, dx), axis)
    if rows is None:
        _softmax_backward_into(dout, y, dx, axis)
    else:
        dout2d, y2d, dx2d = rows
        parallel_for(lambda start, stop: _softmax_backward_into(dout2d[start:stop], y2d[start:stop],
                                                                dx2d[start:stop], -1),
                     dout2d.shape[0], rows_per_block(dout2d.shape[1]))
    return dx
