"""Linear layer y = x W^T + b, with W stored (out, in) as torch stores it."""


def linear_forward(x, weight, bias=None):
    """out = x @ weight.T + bias.

    x: (..., in); weight: (out, in); bias: (out,) or None -> out: (..., out).
    The leading dimensions are flattened so BLAS sees one large GEMM, not one per batch row.
    """
    x2d = x.reshape(-1, x.shape[-1])                 # (N, in)
    out = x2d @ weight.T                             # (N, out)
    if bias is not None:
        out += bias
    cache = (x, weight, bias is not None)
    return out.reshape(*x.shape[:-1], weight.shape[0]), cache


def linear_backward(dout, cache):
    """Gradients of out = x W^T + b.

    dout: (..., out) -> dx: (..., in), dweight: (out, in), dbias: (out,) or None
        dx = dout @ W        dW = dout^T @ x (summed over all leading positions)        db = sum dout
    """
    x, weight, has_bias = cache
    dout2d = dout.reshape(-1, dout.shape[-1])        # (N, out)
    x2d = x.reshape(-1, x.shape[-1])                 # (N, in)
    dx = (dout2d @ weight).reshape(x.shape)          # (N, in)
    dweight = dout2d.T @ x2d                         # (out, in)
    dbias = dout2d.sum(axis=0) if has_bias else None
    return dx, dweight, dbias
