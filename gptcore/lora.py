"""LoRA, backend-neutral: the adapter names, the settings, which layers the targets pick, and the
adapter files (save_lora / load_lora). The math (forward, backward, init, merge) is in npgpt/lora.py and
torchgpt/lora.py.

Naming (the state_dict keys of torchgpt.lora.LoRALinear too): an adapter lives in the model's flat
parameter dict next to the layer it adapts, under the layer's canonical name:

    blocks.0.att.W_query.weight          (C, C)   base weight, frozen
    blocks.0.att.W_query.lora_A          (r, C)   trained
    blocks.0.att.W_query.lora_B          (C, r)   trained
    blocks.0.att.W_query.lora_scaling    ()       alpha / r, a constant (never trained)

Targets name the layers to adapt: the groups of the architecture's spec ("attention", "feedforward",
"head": gptcore.arch), a short layer name ("W_query", "fc2"), or a glob over layer names
("blocks.0.att.*"). Saved adapters are a folder with adapter.safetensors (lora_A and lora_B only) and
adapter_config.json (rank, alpha, targets, the adapted layers).
"""
from __future__ import annotations

import fnmatch
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gptcore.arch import embedding_names, lora_target_groups
from gptcore.config import GPTConfig
from gptcore.fileio import atomic_write_json
from gptcore.formats.safetensors import write_safetensors

A_SUFFIX, B_SUFFIX, SCALING_SUFFIX = ".lora_A", ".lora_B", ".lora_scaling"
DEFAULT_TARGETS = ("attention", "feedforward")
ADAPTER_FORMAT = "gpt2-twice-lora"
ADAPTER_WEIGHTS_FILE = "adapter.safetensors"
ADAPTER_CONFIG_FILE = "adapter_config.json"


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
                             f"use groups {sorted(lora_target_groups())}, layer names or globs")
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


def linear_layer_names(params, config: GPTConfig | None = None) -> list[str]:
    """Names (without .weight) of the linear layers in a parameter dict: every 2-D `.weight` but the
    embeddings of `config`'s architecture (gptcore.arch.embedding_names; any architecture's without a config)."""
    embeddings = embedding_names(config)
    return [name[:-len(".weight")] for name, value in params.items()
            if name.endswith(".weight") and name not in embeddings and np.ndim(value) == 2]


def select_layers(layer_names, targets, config: GPTConfig | None = None) -> list[str]:
    """The layers (in model order) that the targets pick; ValueError for a target that picks nothing.

    Group names are those of `config`'s architecture spec (gptcore.arch.lora_target_groups), or of every
    architecture without a config.
    """
    groups = lora_target_groups(config)
    chosen = set()
    for target in targets:
        if target in groups:
            suffixes = groups[target]
            picked = {n for n in layer_names if any(n == s or n.endswith("." + s) for s in suffixes)}
        else:
            picked = {n for n in layer_names if fnmatch.fnmatchcase(n, target) or n.endswith("." + target)}
        if not picked:
            raise ValueError(f"LoRA target {target!r} matches no linear layer; use a group "
                             f"{sorted(groups)}, a short name like 'W_query' or a glob like "
                             f"'blocks.0.att.*' (layers: {layer_names[:4]} ...)")
        chosen |= picked
    return [n for n in layer_names if n in chosen]


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
