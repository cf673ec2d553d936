"""LoRA in PyTorch (twin of npgpt/lora.py): LoRALinear wraps an nn.Linear, add_lora() wraps a model's layers.

    out = x W^T + b + s * (x A^T) B^T        s = alpha / r;  W, b frozen;  A (r, in), B (out, r) trained

LoRALinear keeps the wrapped layer's own Parameters as `weight` and `bias` (no extra nesting), so its
state_dict keys are exactly npgpt's names: `blocks.0.att.W_query.weight`, `.lora_A`, `.lora_B` and the
buffer `.lora_scaling`. One parameter dict (base + adapters) therefore loads into both backends with
load_numpy_params(). A tied head (out_head.weight IS tok_emb.weight) stays tied under its adapter.

The adapter settings (LoRAConfig), target selection and the adapter file format are npgpt's; save_lora and
load_lora here convert to and from NumPy and use them.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from gptcore import lora as core_lora
from gptcore.lora import A_SUFFIX, B_SUFFIX, DEFAULT_TARGETS, LoRAConfig, select_layers
from torchgpt.linear import Linear, linear

__all__ = ["LoRALinear", "LoRAConfig", "DEFAULT_TARGETS", "add_lora", "merge_lora", "unmerge_lora",
           "lora_state_dict", "count_trainable_params", "save_lora", "load_lora", "lora_layers",
           "trainable_summary", "attach_lora", "lora"]


def lora(x: torch.Tensor, lora_A: torch.Tensor, lora_B: torch.Tensor, scaling) -> torch.Tensor:
    """The adapter's term, delta = s * (x A^T) B^T, added to the base layer's output (npgpt's lora_forward).

    x: (..., in); lora_A: (r, in); lora_B: (out, r); scaling: s = alpha / r -> delta: (..., out).
    Two thin matmuls through the rank-r bottleneck x A^T; B A is never formed.
    """
    return (x @ lora_A.T) @ lora_B.T * scaling


class LoRALinear(nn.Module):
    """A frozen nn.Linear plus a trainable rank-r update: forward = linear(x) + s * (x A^T) B^T.

    A is drawn like nn.Linear's default weight init (kaiming_uniform_ with a = sqrt(5), i.e.
    U(-1/sqrt(in), 1/sqrt(in))) from `generator`; B starts at zero, so the wrapped layer's output is
    unchanged until B is trained. merge()/unmerge() fold s B A into the weight and back.
    """

    def __init__(self, linear: nn.Linear, rank: int, alpha: float, generator: torch.Generator | None = None):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight                  # the SAME Parameter (keeps a tied head tied)
        self.bias = linear.bias
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        factory = {"dtype": linear.weight.dtype, "device": linear.weight.device}
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, **factory))
        # Drawn on the CPU (device-independent values), then copied to the layer's device.
        draw = torch.empty(rank, self.in_features, dtype=torch.float32)
        nn.init.kaiming_uniform_(draw, a=math.sqrt(5), generator=generator)
        with torch.no_grad():
            self.lora_A.copy_(draw)
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, **factory))
        # A buffer (not a Parameter): follows .to(dtype/device), lives in the state_dict, never trains.
        self.register_buffer("lora_scaling", torch.tensor(alpha / rank, **factory))
        self.merged = False

    @property
    def rank(self) -> int:
        return self.lora_A.shape[0]

    def delta_weight(self) -> torch.Tensor:
        """s * B A: (out, r) @ (r, in) -> (out, in)."""
        return (self.lora_B @ self.lora_A) * self.lora_scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., in) -> (..., out)."""
        out = linear(x, self.weight, self.bias)
        if self.merged:
            return out
        return out + lora(x, self.lora_A, self.lora_B, self.lora_scaling)

    @torch.no_grad()
    def merge(self) -> None:
        """W <- W + s B A; forward then skips the adapter (same output, no extra cost)."""
        if not self.merged:
            self.weight += self.delta_weight()
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """W <- W - s B A: the base weight back, up to float rounding."""
        if self.merged:
            self.weight -= self.delta_weight()
            self.merged = False

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
                f"scaling={float(self.lora_scaling):g}, merged={self.merged}")


def linear_layer_names(model: nn.Module) -> list[str]:
    """Names of the model's nn.Linear (or LoRALinear) modules, in model order (npgpt's linear_layer_names)."""
    return [name for name, module in model.named_modules() if isinstance(module, (nn.Linear, LoRALinear))]


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    return {name: module for name, module in model.named_modules() if isinstance(module, LoRALinear)}


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def add_lora(model: nn.Module, lora_config: LoRAConfig, seed: int | None = 0) -> nn.Module:
    """Freezes every parameter of `model`, then wraps the targeted nn.Linear layers in LoRALinear (in place).

    Afterwards only the adapters' lora_A / lora_B have requires_grad. A is drawn layer by layer in model
    order from one torch.Generator seeded with `seed` (None: torch's global generator).
    """
    if lora_layers(model):
        raise ValueError("the model already carries LoRA adapters; merge_lora() them or build a fresh model")
    for param in model.parameters():
        param.requires_grad_(False)
    generator = torch.Generator().manual_seed(int(seed)) if seed is not None else None
    for name in select_layers(linear_layer_names(model), lora_config.targets):
        linear = model.get_submodule(name)
        _set_submodule(model, name, LoRALinear(linear, lora_config.rank, lora_config.alpha, generator=generator))
    return model


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters' tensors under their canonical names (lora_A, lora_B, lora_scaling), detached."""
    return {name: tensor.detach() for name, tensor in model.state_dict().items() if core_lora.is_adapter_name(name)}


def count_trainable_params(model: nn.Module) -> int:
    """Numbers the optimizer updates: parameters with requires_grad (a tied one counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def merge_lora(model: nn.Module) -> nn.Module:
    """Folds every adapter into its weight and replaces the LoRALinear with a plain nn.Linear (in place).

    The result is a plain GPTModel (npgpt's merge_lora gives the same parameters). Keep lora_state_dict(model)
    from before if you want to unmerge_lora later. Parameters stay frozen.
    """
    for name, layer in lora_layers(model).items():
        if name == "out_head" and getattr(model, "tok_emb", None) is not None and layer.weight is model.tok_emb.weight:
            raise ValueError("out_head is tied to tok_emb, so merging its adapter would change the embedding too; "
                             "build the model with tie_weights=False or leave 'head' out of the LoRA targets")
        layer.merge()
        plain = Linear(layer.in_features, layer.out_features, bias=layer.bias is not None,
                          device=layer.weight.device, dtype=layer.weight.dtype)
        plain.weight, plain.bias = layer.weight, layer.bias
        _set_submodule(model, name, plain)
    return model


def unmerge_lora(model: nn.Module, adapters: dict) -> nn.Module:
    """The inverse of merge_lora: wraps the adapted layers again with the given adapters (tensors or arrays under
    canonical names) and subtracts s B A from their weights (in place)."""
    layers = core_lora.adapted_layers(adapters)
    for name in layers:
        linear = model.get_submodule(name)
        A, B = (torch.as_tensor(np.asarray(adapters[name + s])) for s in (A_SUFFIX, B_SUFFIX))
        rank = A.shape[0]
        scaling = float(np.asarray(adapters[name + core_lora.SCALING_SUFFIX]))
        layer = LoRALinear(linear, rank, alpha=scaling * rank)
        if tuple(A.shape) != tuple(layer.lora_A.shape) or tuple(B.shape) != tuple(layer.lora_B.shape):
            raise ValueError(f"adapter for {name} has lora_A {tuple(A.shape)} and lora_B {tuple(B.shape)}; the layer "
                             f"needs ({rank}, {layer.in_features}) and ({layer.out_features}, {rank})")
        with torch.no_grad():
            layer.lora_A.copy_(A)
            layer.lora_B.copy_(B)
        layer.merged = True
        layer.unmerge()
        _set_submodule(model, name, layer)
    return model


def save_lora(path, model: nn.Module, lora_config: LoRAConfig, metadata: dict | None = None):
    """Writes the model's adapters alone (npgpt's format: adapter.safetensors + adapter_config.json)."""
    adapters = {name: tensor.cpu().numpy() for name, tensor in lora_state_dict(model).items()}
    return core_lora.save_lora(path, adapters, lora_config, metadata=metadata)


def attach_lora(model: nn.Module, adapters: dict, lora_config: LoRAConfig | None = None) -> nn.Module:
    """Wraps the layers named in `adapters` (arrays or tensors under canonical names, e.g. from npgpt's
    init_lora or load_lora) and gives them exactly these values; the rest of the model is frozen (add_lora).

    lora_config supplies rank and alpha (default: read from the adapters' shapes and scaling).
    """
    layers = core_lora.adapted_layers(adapters)
    if not layers:
        raise ValueError("no adapters given: expected names ending in .lora_A / .lora_B / .lora_scaling")
    rank = int(np.shape(adapters[layers[0] + A_SUFFIX])[0])
    if lora_config is None:
        scaling = float(np.asarray(adapters[layers[0] + core_lora.SCALING_SUFFIX]))
        lora_config = LoRAConfig(rank=rank, alpha=scaling * rank)
    # seed=0: the draw is overwritten below; a private generator leaves torch's global RNG untouched.
    add_lora(model, LoRAConfig(lora_config.rank, lora_config.alpha, targets=tuple(layers)), seed=0)
    wrapped = lora_layers(model)
    for name in layers:
        layer = wrapped[name]
        A, B = (np.asarray(adapters[name + suffix]) for suffix in (A_SUFFIX, B_SUFFIX))
        if A.shape != tuple(layer.lora_A.shape) or B.shape != tuple(layer.lora_B.shape):
            raise ValueError(f"adapter for {name} has lora_A {A.shape} and lora_B {B.shape}; the model's layer "
                             f"needs {tuple(layer.lora_A.shape)} and {tuple(layer.lora_B.shape)}: the adapters "
                             f"were made for another model size")
        with torch.no_grad():
            layer.lora_A.copy_(torch.from_numpy(A))
            layer.lora_B.copy_(torch.from_numpy(B))
    return model


def load_lora(path, model: nn.Module) -> nn.Module:
    """Adds the adapters saved at `path` (save_lora's folder) to a base model, with their saved values."""
    lora_config, adapters = core_lora.load_lora(path)
    return attach_lora(model, adapters, lora_config)


def trainable_summary(model: nn.Module) -> dict:
    """{"trainable": n, "total": n, "fraction": n / total} for a report line."""
    trainable = count_trainable_params(model)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable": trainable, "total": total, "fraction": trainable / total if total else 0.0}
