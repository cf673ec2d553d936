"""LoRA: low-rank adapters on frozen linear layers (Hu et al., 2021), forward and backward by hand.

An adapted linear layer computes

    out = x W^T + b  +  s * (x A^T) B^T          s = alpha / r   (the "scaling")

with the base weight W (out, in) and bias b (out,) frozen, and only A (r, in) and B (out, r) trained.
A starts Kaiming-uniform (as torch's kaiming_uniform_(a=sqrt(5)): U(-1/sqrt(in), 1/sqrt(in))), B starts at
zero, so an adapted model computes exactly what its base model computes until the first update. The
update s * B A has rank <= r: for a (768, 768) projection and r = 8 that is 12,288 trained numbers
instead of 589,824.

Naming (shared with torchgpt/lora.py, whose LoRALinear has the same state_dict keys): an adapter lives in
the model's flat parameter dict next to the layer it adapts, under the layer's canonical name:

    blocks.0.att.W_query.weight          (C, C)   base weight, frozen
    blocks.0.att.W_query.lora_A          (r, C)   trained
    blocks.0.att.W_query.lora_B          (C, r)   trained
    blocks.0.att.W_query.lora_scaling    ()       alpha / r, a constant (never trained)

Every linear layer of the model runs through npgpt.linear.linear_layer_forward(x, p, name), which adds
the adapter's term when p holds `name.lora_A`. So `forward({**params, **adapters}, idx, config)` runs the
adapted model with the same model code, and backward() returns gradients for lora_A / lora_B of adapted
layers instead of their (frozen) weight and bias. trainable_grads() keeps the adapter gradients only.

The names, the settings (LoRAConfig), target selection and the adapter files are backend-neutral:
gptcore/lora.py.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from gptcore.lora import (A_SUFFIX, B_SUFFIX, SCALING_SUFFIX, LoRAConfig, adapted_layers, check_adapters,
                          linear_layer_names, select_layers, split_lora)


# ---------------------------------------------------------------------------------------------------
# the adapter: forward and backward of delta = s * (x A^T) B^T
# ---------------------------------------------------------------------------------------------------

class LoRACache(NamedTuple):
    """What lora_backward needs: the input, the rank-r bottleneck h = x A^T, both factors and s."""
    x: np.ndarray                    # (..., in)
    h: np.ndarray                    # (N, r)
    lora_A: np.ndarray               # (r, in)
    lora_B: np.ndarray               # (out, r)
    scaling: float                   # s = alpha / r



def lora_forward(x, lora_A, lora_B, scaling):
    """The adapter's term, delta = s * (x A^T) B^T, added to the base layer's output.

    x: (..., in); lora_A: (r, in); lora_B: (out, r); scaling: s = alpha / r -> delta: (..., out), LoRACache.
    Two thin GEMMs through the rank-r bottleneck h = x A^T (N, r); B A is never formed.
    """
    scaling = float(scaling)                         # a Python float keeps float32 float32 (NumPy 2 promotion)
    x2d = x.reshape(-1, x.shape[-1])                 # (N, in)
    h = x2d @ lora_A.T                               # (N, r)
    delta = h @ lora_B.T                             # (N, out)
    delta *= scaling
    cache = LoRACache(x=x, h=h, lora_A=lora_A, lora_B=lora_B, scaling=scaling)
    return delta.reshape(*x.shape[:-1], lora_B.shape[0]), cache


def lora_backward(ddelta, cache):
    """Gradients of delta = s * h B^T with h = x A^T.

    ddelta: (..., out) -> dx: (..., in), dA: (r, in), dB: (out, r)
        dh = s * ddelta B          (N, r)
        dB = s * ddelta^T h        (out, r)      summed over all N positions
        dA = dh^T x                (r, in)
        dx = dh A                  (N, in)
    With B = 0 (the start of training) dA and dx are 0 and only B moves on the first step.
    """
    ddelta2d = ddelta.reshape(-1, ddelta.shape[-1])  # (N, out)
    x2d = cache.x.reshape(-1, cache.x.shape[-1])     # (N, in)
    dB = ddelta2d.T @ cache.h                        # (out, r)
    dB *= cache.scaling
    dh = ddelta2d @ cache.lora_B                     # (N, r)
    dh *= cache.scaling
    dA = dh.T @ x2d                                  # (r, in)
    dx = (dh @ cache.lora_A).reshape(cache.x.shape)  # (N, in) -> (..., in)
    return dx, dA, dB


# ---------------------------------------------------------------------------------------------------
# adapters on a parameter dict
# ---------------------------------------------------------------------------------------------------

def kaiming_uniform_bound(fan_in: int) -> float:
    """torch's kaiming_uniform_(a=sqrt(5)) bound: gain sqrt(2 / (1 + a^2)) = sqrt(1/3), bound = gain * sqrt(3 / fan_in)
    = 1 / sqrt(fan_in) (nn.Linear's default init, which LoRA's A reuses)."""
    gain = math.sqrt(2.0 / (1.0 + 5.0))
    return gain * math.sqrt(3.0 / fan_in)


def init_lora(params, lora_config: LoRAConfig, seed: int = 0, dtype=None) -> dict:
    """Fresh adapters for the targeted layers of `params`: {layer.lora_A, layer.lora_B, layer.lora_scaling}.

    A ~ U(-1/sqrt(in), 1/sqrt(in)) drawn layer by layer in model order from one seeded generator, B = 0.
    dtype defaults to each base weight's dtype.
    """
    if any(name.endswith(A_SUFFIX) for name in params):
        raise ValueError("these parameters already carry LoRA adapters; split_lora() them off first")
    rng = np.random.default_rng(seed)
    adapters = {}
    for layer in select_layers(linear_layer_names(params), lora_config.targets):
        weight = params[f"{layer}.weight"]
        n_out, n_in = weight.shape
        layer_dtype = weight.dtype if dtype is None else np.dtype(dtype)
        bound = kaiming_uniform_bound(n_in)
        adapters[layer + A_SUFFIX] = rng.uniform(-bound, bound, size=(lora_config.rank, n_in)).astype(layer_dtype)
        adapters[layer + B_SUFFIX] = np.zeros((n_out, lora_config.rank), dtype=layer_dtype)
        adapters[layer + SCALING_SUFFIX] = np.array(lora_config.scaling, dtype=layer_dtype)
    return adapters


def add_lora(params, lora_config: LoRAConfig, seed: int = 0) -> dict:
    """A new dict: the base params (the same arrays) plus fresh adapters; run it with npgpt.model.forward."""
    return {**params, **init_lora(params, lora_config, seed=seed)}


def attach_lora(base, adapters) -> dict:
    """{**base, **adapters} after check_adapters."""
    check_adapters(base, adapters)
    return {**base, **adapters}


# ---------------------------------------------------------------------------------------------------
# merge and unmerge
# ---------------------------------------------------------------------------------------------------

def _delta_weight(adapters, layer):
    """s * B A: (out, r) @ (r, in) -> (out, in), the update the adapter makes to W."""
    A, B = adapters[layer + A_SUFFIX], adapters[layer + B_SUFFIX]
    delta = B @ A
    delta *= float(adapters[layer + SCALING_SUFFIX])
    return delta


def _refuse_tied_head(params, layers):
    if "out_head" in layers and params.get("out_head.weight") is params.get("tok_emb.weight"):
        raise ValueError("out_head is tied to tok_emb, so merging its adapter would change the embedding too; "
                         "untie first (params['out_head.weight'] = params['tok_emb.weight'].copy() and "
                         "config.replace(tie_weights=False)) or leave 'head' out of the LoRA targets")


def merge_lora(params) -> dict:
    """A plain parameter dict (no adapters) whose adapted weights are W + s B A; the input is not changed.

    The merged model computes what the adapted one does, with no adapter cost at inference.
    """
    base, adapters = split_lora(params)
    layers = adapted_layers(adapters)
    check_adapters(base, adapters)
    _refuse_tied_head(base, layers)
    merged = dict(base)
    for layer in layers:
        merged[f"{layer}.weight"] = base[f"{layer}.weight"] + _delta_weight(adapters, layer)
    return merged


def unmerge_lora(merged, adapters) -> dict:
    """The inverse of merge_lora: base weights W = W_merged - s B A, returned with the adapters attached.

    Round trip: unmerge_lora(merge_lora(p), split_lora(p)[1]) equals p up to float rounding (one add and
    one subtract of s B A).
    """
    check_adapters(merged, adapters)
    layers = adapted_layers(adapters)
    _refuse_tied_head(merged, layers)
    base = dict(merged)
    for layer in layers:
        base[f"{layer}.weight"] = merged[f"{layer}.weight"] - _delta_weight(adapters, layer)
    return {**base, **adapters}
