"""Linear layer y = x W^T + b, with W stored (out, in) as torch stores it.

linear_forward/backward take the arrays; linear_layer_forward/backward take a parameter dict and a layer
name, which is how the model calls every linear layer, so a LoRA adapter stored next to the layer
(`name.lora_A`, see npgpt/lora.py) joins in without a second model implementation.
"""
from typing import NamedTuple, Optional

import numpy as np

from gptcore.lora import A_SUFFIX, B_SUFFIX, SCALING_SUFFIX
from npgpt.lora import LoRACache, lora_backward, lora_forward


class LinearCache(NamedTuple):
    """What linear_backward needs: the input (for dW) and the weight (for dx); the arrays themselves, no copies."""
    x: np.ndarray                    # (..., in)
    weight: np.ndarray               # (out, in)
    has_bias: bool


class LinearLayerCache(NamedTuple):
    """A named layer of a parameter dict: its name (to key the gradients), the base layer's cache, and the
    LoRA adapter's cache (None for a plain layer)."""
    name: str
    base: LinearCache
    lora: Optional[LoRACache]


def linear_forward(x, weight, bias=None):
    """out = x @ weight.T + bias.

    x: (..., in); weight: (out, in); bias: (out,) or None -> out: (..., out), LinearCache(x, weight, has_bias).
    The leading dimensions are flattened so BLAS sees one large GEMM, not one per batch row.
    """
    x2d = x.reshape(-1, x.shape[-1])                 # (N, in)
    out = x2d @ weight.T                             # (N, out)
    if bias is not None:
        out += bias
    cache = LinearCache(x=x, weight=weight, has_bias=bias is not None)
    return out.reshape(*x.shape[:-1], weight.shape[0]), cache


def linear_backward(dout, cache, frozen=False):
    """Gradients of out = x W^T + b.

    dout: (..., out) -> dx: (..., in), dweight: (out, in), dbias: (out,) or None
        dx = dout @ W        dW = dout^T @ x (summed over all leading positions)        db = sum dout
    frozen=True (a layer whose weights do not train, e.g. under a LoRA adapter): only dx is computed,
    dweight and dbias are None; that skips the dW GEMM, as costly as the forward's.
    """
    dout2d = dout.reshape(-1, dout.shape[-1])        # (N, out)
    dx = (dout2d @ cache.weight).reshape(cache.x.shape)     # (N, in) -> (..., in)
    if frozen:
        return dx, None, None
    x2d = cache.x.reshape(-1, cache.x.shape[-1])     # (N, in)
    if stored_transposed(cache.weight):              # the gradient in the weight's own layout, so that the
        dweight = (x2d.T @ dout2d).T                 # optimizer steps both row by row: (out, in) view of
    else:                                            # the contiguous dW^T = x^T dout (in, out)
        dweight = dout2d.T @ x2d                     # (out, in)
    dbias = dout2d.sum(axis=0) if cache.has_bias else None
    return dx, dweight, dbias


def stored_transposed(weight) -> bool:
    """Is the (out, in) weight stored as its transpose W^T (in, out), rows contiguous (npgpt.model's "fast"
    layout, alone or as a column block of a side-by-side group)? Its gradient is then made the same way."""
    return weight.ndim == 2 and not weight.flags.c_contiguous and weight.strides[0] == weight.itemsize


def linear_layer_forward(x, p, name):
    """The linear layer `name` of the parameter dict p: p["name.weight"] (out, in), optional p["name.bias"].

    If p also holds a LoRA adapter (name.lora_A, name.lora_B, name.lora_scaling) the layer computes
        out = x W^T + b + s * (x A^T) B^T
    with W and b frozen (see npgpt/lora.py). x: (..., in) -> out: (..., out), LinearLayerCache(name, base, lora).
    """
    out, base_cache = linear_forward(x, p[f"{name}.weight"], p.get(f"{name}.bias"))
    lora_cache = None
    if name + A_SUFFIX in p:
        delta, lora_cache = lora_forward(x, p[name + A_SUFFIX], p[name + B_SUFFIX], p[name + SCALING_SUFFIX])
        out += delta
    return out, LinearLayerCache(name=name, base=base_cache, lora=lora_cache)


def linear_layer_backward(dout, cache, frozen=False):
    """dout: (..., out) -> dx: (..., in), grads: {"name.weight", "name.bias"} for a plain layer, or
    {"name.lora_A", "name.lora_B"} for an adapted one (its base is frozen: dx = dout W + adapter's dx).
    frozen=True: a plain layer that is not trained this time gives dx only and no grads (no dW GEMM)."""
    name = cache.name
    if cache.lora is None:
        dx, dweight, dbias = linear_backward(dout, cache.base, frozen=frozen)
        if frozen:
            return dx, {}
        grads = {f"{name}.weight": dweight}
        if dbias is not None:
            grads[f"{name}.bias"] = dbias
        return dx, grads
    dx, _, _ = linear_backward(dout, cache.base, frozen=True)
    dx_lora, dA, dB = lora_backward(dout, cache.lora)
    dx += dx_lora
    return dx, {name + A_SUFFIX: dA, name + B_SUFFIX: dB}


# --------------------------------------------------------------------------------------------------------
# Layers that read the same input, stored side by side (npgpt.generate.decoding_layout)
# --------------------------------------------------------------------------------------------------------
def side_by_side(weights):
    """The (in, out_1 + ... + out_n) array whose column blocks are the weights' transposes, when the weights
    (out_i, in) are stored that way (views of the column blocks of one C-contiguous array, in order), else None."""
    together = weights[0].base
    n_in, total = weights[0].shape[1], sum(w.shape[0] for w in weights)
    if (together is None or together.shape != (n_in, total) or not together.flags.c_contiguous
            or together.dtype != weights[0].dtype):
        return None
    start, itemsize = together.__array_interface__["data"][0], together.itemsize
    for w in weights:
        if (w.base is not together or w.strides != (itemsize, total * itemsize)
                or w.__array_interface__["data"][0] != start):
            return None
        start += w.shape[0] * itemsize
    return together


def linear_layers_together(x, p, names):
    """[linear_layer_forward(x, p, name)[0] for name in names] (inference: no caches), by one product when the
    layers' weights are stored side by side (decoding_layout): one read of their weights, one larger product
    instead of several small ones. Layers with a LoRA adapter, or not stored so, are computed one by one.
    x: (..., in) -> [(..., out_i)], the outputs as column blocks of one array (views, not copies)."""
    together = None
    if not any(name + A_SUFFIX in p for name in names):
        together = side_by_side([p[f"{name}.weight"] for name in names])
    if together is None:
        return [linear_layer_forward(x, p, name)[0] for name in names]
    out = (x.reshape(-1, x.shape[-1]) @ together).reshape(*x.shape[:-1], together.shape[1])   # (..., total)
    outs, start = [], 0
    for name in names:
        block = out[..., start:start + p[f"{name}.weight"].shape[0]]
        if f"{name}.bias" in p:
            block += p[f"{name}.bias"]
        outs.append(block)
        start += block.shape[-1]
    return outs
