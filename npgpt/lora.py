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

Targets name the layers to adapt: the groups "attention" (W_query, W_key, W_value, out_proj),
"feedforward" (fc1, fc2) and "head" (out_head, or a classifier's cls_head), a short layer name ("W_query", "fc2"), or a glob over
layer names ("blocks.0.att.*"). Saved adapters are a folder with adapter.safetensors (lora_A and lora_B
only) and adapter_config.json (rank, alpha, targets, the adapted layers).
"""
from __future__ import annotations

import fnmatch
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from npgpt.checkpoint import write_safetensors
from npgpt.fileio import atomic_write_json

A_SUFFIX, B_SUFFIX, SCALING_SUFFIX = ".lora_A", ".lora_B", ".lora_scaling"
TARGET_GROUPS = {
    "attention": ("att.W_query", "att.W_key", "att.W_value", "att.out_proj"),
    "feedforward": ("ff.fc1", "ff.fc2"),
    "head": ("out_head", "cls_head"),       # the language-model head, or a classifier's head
}
DEFAULT_TARGETS = ("attention", "feedforward")
ADAPTER_FORMAT = "gpt2-twice-lora"
ADAPTER_WEIGHTS_FILE = "adapter.safetensors"
ADAPTER_CONFIG_FILE = "adapter_config.json"
EMBEDDINGS = ("tok_emb.weight", "pos_emb.weight")


# ---------------------------------------------------------------------------------------------------
# the adapter: forward and backward of delta = s * (x A^T) B^T
# ---------------------------------------------------------------------------------------------------

def lora_forward(x, lora_A, lora_B, scaling):
    """The adapter's term, delta = s * (x A^T) B^T, added to the base layer's output.

    x: (..., in); lora_A: (r, in); lora_B: (out, r); scaling: s = alpha / r -> delta: (..., out).
    Two thin GEMMs through the rank-r bottleneck h = x A^T (N, r); B A is never formed.
    """
    scaling = float(scaling)                         # a Python float keeps float32 float32 (NumPy 2 promotion)
    x2d = x.reshape(-1, x.shape[-1])                 # (N, in)
    h = x2d @ lora_A.T                               # (N, r)
    delta = h @ lora_B.T                             # (N, out)
    delta *= scaling
    cache = (x, h, lora_A, lora_B, scaling)
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
    x, h, lora_A, lora_B, scaling = cache
    ddelta2d = ddelta.reshape(-1, ddelta.shape[-1])  # (N, out)
    x2d = x.reshape(-1, x.shape[-1])                 # (N, in)
    dB = ddelta2d.T @ h                              # (out, r)
    dB *= scaling
    dh = ddelta2d @ lora_B                           # (N, r)
    dh *= scaling
    dA = dh.T @ x2d                                  # (r, in)
    dx = (dh @ lora_A).reshape(x.shape)              # (N, in) -> (..., in)
    return dx, dA, dB


# ---------------------------------------------------------------------------------------------------
# settings shared by both backends
# ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LoRAConfig:
    """rank r, alpha (scaling = alpha / r) and the targets (group names, short layer names or globs)."""
    rank: int = 8
    alpha: float = 16.0
    targets: tuple = field(default=DEFAULT_TARGETS)

    def __post_init__(self):
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank <= 0:
            raise ValueError(f"LoRA rank must be a positive integer, got {self.rank!r}; try --lora-rank 8")
        if not isinstance(self.alpha, (int, float)) or not math.isfinite(self.alpha) or self.alpha <= 0:
            raise ValueError(f"LoRA alpha must be a positive number, got {self.alpha!r}; try --lora-alpha 16")
        targets = (self.targets,) if isinstance(self.targets, str) else tuple(self.targets)
        if not targets or not all(isinstance(t, str) and t for t in targets):
            raise ValueError(f"LoRA targets must be non-empty names, got {self.targets!r}; "
                             f"use groups {sorted(TARGET_GROUPS)}, layer names or globs")
        object.__setattr__(self, "targets", targets)
        object.__setattr__(self, "alpha", float(self.alpha))

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    def to_dict(self) -> dict:
        return {"rank": self.rank, "alpha": self.alpha, "targets": list(self.targets)}

    @classmethod
    def from_dict(cls, values: dict) -> "LoRAConfig":
        return cls(rank=values["rank"], alpha=values["alpha"], targets=tuple(values["targets"]))


def linear_layer_names(params) -> list[str]:
    """Names (without .weight) of the linear layers in a parameter dict: every 2-D `.weight` but embeddings."""
    return [name[:-len(".weight")] for name, value in params.items()
            if name.endswith(".weight") and name not in EMBEDDINGS and np.ndim(value) == 2]


def select_layers(layer_names, targets) -> list[str]:
    """The layers (in model order) that the targets pick; ValueError for a target that picks nothing."""
    chosen = set()
    for target in targets:
        if target in TARGET_GROUPS:
            suffixes = TARGET_GROUPS[target]
            picked = {n for n in layer_names if any(n == s or n.endswith("." + s) for s in suffixes)}
        else:
            picked = {n for n in layer_names if fnmatch.fnmatchcase(n, target) or n.endswith("." + target)}
        if not picked:
            raise ValueError(f"LoRA target {target!r} matches no linear layer; use a group "
                             f"{sorted(TARGET_GROUPS)}, a short name like 'W_query' or a glob like "
                             f"'blocks.0.att.*' (layers: {layer_names[:4]} ...)")
        chosen |= picked
    return [n for n in layer_names if n in chosen]


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


def is_adapter_name(name: str) -> bool:
    return name.endswith((A_SUFFIX, B_SUFFIX, SCALING_SUFFIX))


def is_trainable_name(name: str) -> bool:
    """Under LoRA only the adapters' A and B train (the scaling is a constant)."""
    return name.endswith((A_SUFFIX, B_SUFFIX))


def split_lora(params) -> tuple[dict, dict]:
    """(base params, adapters) from a dict that holds both."""
    base = {name: value for name, value in params.items() if not is_adapter_name(name)}
    adapters = {name: value for name, value in params.items() if is_adapter_name(name)}
    return base, adapters


def adapted_layers(adapters) -> list[str]:
    return [name[:-len(A_SUFFIX)] for name in adapters if name.endswith(A_SUFFIX)]


def trainable_params(params) -> dict:
    """The adapters' A and B arrays (the same objects): hand these to the optimizer."""
    return {name: value for name, value in params.items() if is_trainable_name(name)}


def trainable_grads(grads) -> dict:
    """The gradients of A and B out of a model.backward() result (the frozen base's gradients dropped)."""
    return {name: value for name, value in grads.items() if is_trainable_name(name)}


def count_trainable_params(params) -> int:
    """Numbers LoRA trains: the sizes of every lora_A and lora_B."""
    return sum(int(value.size) for value in trainable_params(params).values())


def check_adapters(base, adapters):
    """Every adapter belongs to a linear layer of `base`, with matching widths; ValueError naming the mismatch."""
    for layer in adapted_layers(adapters):
        weight = base.get(f"{layer}.weight")
        if weight is None:
            raise ValueError(f"adapter for {layer}: the model has no layer {layer}.weight; load the adapters "
                             f"into the model (config) they were trained on")
        n_out, n_in = weight.shape
        A, B = adapters[layer + A_SUFFIX], adapters.get(layer + B_SUFFIX)
        if B is None or layer + SCALING_SUFFIX not in adapters:
            raise ValueError(f"adapter for {layer} is incomplete: it needs lora_A, lora_B and lora_scaling")
        if A.ndim != 2 or B.ndim != 2 or A.shape[1] != n_in or B.shape[0] != n_out or A.shape[0] != B.shape[1]:
            raise ValueError(f"adapter for {layer} has lora_A {A.shape} and lora_B {B.shape}, but the layer's weight "
                             f"is {weight.shape} (needs A (r, {n_in}), B ({n_out}, r)); the adapters were "
                             f"trained on another model size")


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


# ---------------------------------------------------------------------------------------------------
# save and load the adapters alone
# ---------------------------------------------------------------------------------------------------

def save_lora(path, params_or_adapters, lora_config: LoRAConfig, metadata: dict | None = None) -> Path:
    """Writes the adapters (A and B only) to path/adapter.safetensors and the settings to
    path/adapter_config.json, each atomically. `params_or_adapters` may also hold the base (ignored)."""
    path = Path(path)
    _, adapters = split_lora(params_or_adapters)
    layers = adapted_layers(adapters)
    if not layers:
        raise ValueError("no LoRA adapters to save: add them with add_lora() first")
    path.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for layer in layers:
        for suffix in (A_SUFFIX, B_SUFFIX):
            tensors[layer + suffix] = np.ascontiguousarray(adapters[layer + suffix])
    temp = path / f".{ADAPTER_WEIGHTS_FILE}.tmp"
    write_safetensors(temp, tensors, metadata={"format": ADAPTER_FORMAT})
    os.replace(temp, path / ADAPTER_WEIGHTS_FILE)
    atomic_write_json(path / ADAPTER_CONFIG_FILE, {
        "format": ADAPTER_FORMAT, **lora_config.to_dict(), "scaling": lora_config.scaling,
        "layers": layers, "trainable_params": count_trainable_params(tensors), "metadata": metadata or {}})
    return path


def load_lora(path) -> tuple[LoRAConfig, dict]:
    """(lora_config, adapters with their scaling restored) from a folder written by save_lora."""
    from safetensors.numpy import load_file

    path = Path(path)
    config_file, weights_file = path / ADAPTER_CONFIG_FILE, path / ADAPTER_WEIGHTS_FILE
    for file in (config_file, weights_file):
        if not file.is_file():
            raise FileNotFoundError(f"missing {file}: {path} is not a LoRA adapter folder (write one with save_lora "
                                    f"or a finetuning run with --lora-rank)")
    try:
        values = json.loads(config_file.read_text(encoding="utf-8"))
        if values.get("format") != ADAPTER_FORMAT:
            raise ValueError(f"format {values.get('format')!r} is not {ADAPTER_FORMAT!r}")
        lora_config = LoRAConfig.from_dict(values)
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{config_file} is not a valid adapter config ({error}); save the adapters again") from error
    try:
        tensors = load_file(str(weights_file))
    except Exception as error:  # safetensors raises its own error types for corrupt files
        raise ValueError(f"{weights_file} is not a readable safetensors file ({error}); save the adapters again") from error
    adapters = {}
    for layer in values.get("layers", []):
        for suffix in (A_SUFFIX, B_SUFFIX):
            if layer + suffix not in tensors:
                raise ValueError(f"{weights_file} lacks {layer + suffix} listed in {config_file}; save the adapters again")
            adapters[layer + suffix] = tensors[layer + suffix]
        adapters[layer + SCALING_SUFFIX] = np.array(lora_config.scaling, dtype=tensors[layer + A_SUFFIX].dtype)
    return lora_config, adapters
