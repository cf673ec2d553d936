"""The parameters of any torchgpt model, architecture-neutral (the spec in gptcore.arch names them):

    init_weights(model, seed)            the architecture's init rule, drawn device-independently
    count_params(model)                  trainable numbers, a tied weight once
    load_numpy_params(model, params)     a NumPy dict under the canonical names -> into the model
    to_numpy_params(model)               the model's state_dict as NumPy arrays (a tie stays one array)

The models call init_weights when built; torchgpt.model re-exports all four next to build_model.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from gptcore.arch import spec_for


@torch.no_grad()
def init_weights(model: nn.Module, seed: int | None = None) -> nn.Module:
    """The init of model.config's architecture, in place (gptcore.arch: init_rule; GPT-2: weights ~ N(0, std),
    biases 0, LayerNorm scale 1 and shift 0).

    Draws on the CPU from one torch.Generator seeded with `seed` (None: the global generator), in
    named_parameters() order with a tied weight drawn once, so the values do not depend on the device.
    """
    generator = None
    if seed is not None:
        generator = torch.Generator().manual_seed(int(seed))
    for name, param in model.named_parameters():    # a tied Parameter appears once
        kind, value = spec_for(model.config).init_rule(name, model.config)
        if kind == "ones":
            param.fill_(1.0)
        elif kind == "zeros":
            param.zero_()
        else:
            draw = torch.randn(param.shape, generator=generator, dtype=torch.float32)
            param.copy_(draw * value)
    return model


def count_params(model: nn.Module) -> int:
    """Number of trainable numbers, a tied weight counted once (parameters() already deduplicates)."""
    return sum(p.numel() for p in model.parameters())


def load_numpy_params(model: nn.Module, params: dict) -> nn.Module:
    """Copies a dict of NumPy arrays under the canonical names into the model (in its dtype and device).

    Raises ValueError listing missing/unexpected names or mismatched shapes, and when a tied model is
    given two different arrays for tok_emb.weight and out_head.weight.
    """
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    missing = sorted(set(expected) - set(params))
    unexpected = sorted(set(params) - set(expected))
    if missing or unexpected:
        raise ValueError(f"parameter names do not match the model: missing {missing[:5]}, unexpected "
                         f"{unexpected[:5]}; build the model with the config the parameters were made for")
    for name, shape in expected.items():
        if tuple(np.shape(params[name])) != shape:
            raise ValueError(f"parameter {name} has shape {tuple(np.shape(params[name]))}, the model needs "
                             f"{shape}; check the config (emb_dim, vocab_size, context_length, ...)")
    tied = getattr(getattr(model, "config", None), "tie_weights", False)
    if tied and params["out_head.weight"] is not params["tok_emb.weight"] and not np.array_equal(
            params["out_head.weight"], params["tok_emb.weight"]):
        raise ValueError("the model ties out_head.weight to tok_emb.weight but the parameters hold two "
                         "different arrays; build the model with tie_weights=False")
    model.load_state_dict({name: torch.from_numpy(np.ascontiguousarray(value)) for name, value in params.items()})
    return model


def to_numpy_params(model: nn.Module) -> dict:
    """The model's state_dict as NumPy arrays (copies, on the CPU); tied keys hold the SAME array object."""
    arrays, by_storage = {}, {}
    for name, tensor in model.state_dict().items():
        key = (tensor.device, tensor.data_ptr(), tuple(tensor.shape), tuple(tensor.stride()))
        if key not in by_storage:
            value = tensor.detach().cpu()
            if value.dtype == torch.bfloat16:        # NumPy has no bfloat16: widen (exactly) to float32
                value = value.float()
            by_storage[key] = value.numpy().copy()
        arrays[name] = by_storage[key]
    return arrays
