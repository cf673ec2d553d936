"""Softmax along one axis, numerically stable (the row maximum is subtracted first)."""
import numpy as np


def softmax_forward(x, axis=-1):
    """out = exp(x - max x) / sum exp(x - max x) along `axis`.  x: any shape -> out: same.

    Rows that are all -inf are not supported (every causal row keeps its diagonal).
    """
    out = x - x.max(axis=axis, keepdims=True)
    np.exp(out, out=out)
    out /= out.sum(axis=axis, keepdims=True)
    return out, (out, axis)


def softmax_backward(dout, cache):
    """dx = y * (dout - sum(dout * y))  along the softmax axis (the Jacobian diag(y) - y y^T applied to dout)."""
    y, axis = cache
    dx = dout * y
    dx -= y * dx.sum(axis=axis, keepdims=True)
    return dx
