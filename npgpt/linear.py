"""Linear layer y = x W^T + b, with W stored (out, in) as torch stores it.

linear_forward/backward take the arrays; linear_layer_forward/backward take a parameter dict and a layer
name, which is how the model calls every linear layer, so a LoRA adapter stored next to the layer
(`name.lora_A`, see npgpt/lora.py) joins in without a second model implementation.
"""
from gptcore.lora import A_SUFFIX, B_SUFFIX, SCALING_SUFFIX
from npgpt.lora import lora_backward, lora_forward


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


def linear_backward(dout, cache, frozen=False):
    """Gradients of out = x W^T + b.

    dout: (..., out) -> dx: (..., in), dweight: (out, in), dbias: (out,) or None
        dx = dout @ W        dW = dout^T @ x (summed over all leading positions)        db = sum dout
    frozen=True (a layer whose weights do not train, e.g. under a LoRA adapter): only dx is computed,
    dweight and dbias are None; that skips the dW GEMM, as costly as the forward's.
    """
    x, weight, has_bias = cache
    dout2d = dout.reshape(-1, dout.shape[-1])        # (N, out)
    dx = (dout2d @ weight).reshape(x.shape)          # (N, in)
    if frozen:
        return dx, None, None
    x2d = x.reshape(-1, x.shape[-1])                 # (N, in)
    dweight = dout2d.T @ x2d                         # (out, in)
    dbias = dout2d.sum(axis=0) if has_bias else None
    return dx, dweight, dbias


def linear_layer_forward(x, p, name):
    """The linear layer `name` of the parameter dict p: p["name.weight"] (out, in), optional p["name.bias"].

    If p also holds a LoRA adapter (name.lora_A, name.lora_B, name.lora_scaling) the layer computes
        out = x W^T + b + s * (x A^T) B^T
    with W and b frozen (see npgpt/lora.py). x: (..., in) -> out: (..., out).
    """
    out, base_cache = linear_forward(x, p[f"{name}.weight"], p.get(f"{name}.bias"))
    lora_cache = None
    if name + A_SUFFIX in p:
        delta, lora_cache = lora_forward(x, p[name + A_SUFFIX], p[name + B_SUFFIX], p[name + SCALING_SUFFIX])
        out += delta
    return out, (name, base_cache, lora_cache)


def linear_layer_backward(dout, cache):
    """dout: (..., out) -> dx: (..., in), grads: {"name.weight", "name.bias"} for a plain layer, or
    {"name.lora_A", "name.lora_B"} for an adapted one (its base is frozen: dx = dout W + adapter's dx)."""
    name, base_cache, lora_cache = cache
    if lora_cache is None:
        dx, dweight, dbias = linear_backward(dout, base_cache)
        grads = {f"{name}.weight": dweight}
        if dbias is not None:
            grads[f"{name}.bias"] = dbias
        return dx, grads
    dx, _, _ = linear_backward(dout, base_cache, frozen=True)
    dx_lora, dA, dB = lora_backward(dout, lora_cache)
    dx += dx_lora
    return dx, {name + A_SUFFIX: dA, name + B_SUFFIX: dB}
