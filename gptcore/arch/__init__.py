"""One spec per architecture, chosen by config.arch: the seam through which both twins, the loaders,
checkpoint validation, LoRA and the FLOPs count see a model's parameters.

A spec is a module with NAME, HAS_POSITION_TABLE, EMBEDDINGS, TIED_HEAD, LORA_TARGET_GROUPS and the
functions block_param_shapes(config), param_shapes(config), init_rule(name, config) and
flops_per_token(config, context_length). Adding an architecture = a spec module listed in SPECS.
"""
from __future__ import annotations

import math

from gptcore.arch import gpt2, llama
from gptcore.config import GPTConfig

SPECS = {gpt2.NAME: gpt2, llama.NAME: llama}


def spec_for(config: GPTConfig):
    """The spec module of config.arch."""
    return SPECS[config.arch]


def lora_target_groups(config: GPTConfig | None = None) -> dict[str, tuple[str, ...]]:
    """LoRA's target groups (group -> layer-name endings) of `config`'s architecture; without a config, every
    architecture's groups merged (a caller holding only parameter names: an ending of another architecture
    matches no layer of this one, so the merge picks exactly the spec's layers)."""
    if config is not None:
        return spec_for(config).LORA_TARGET_GROUPS
    merged: dict[str, tuple[str, ...]] = {}
    for spec in SPECS.values():
        for group, endings in spec.LORA_TARGET_GROUPS.items():
            merged[group] = merged.get(group, ()) + tuple(e for e in endings if e not in merged.get(group, ()))
    return merged


def embedding_names(config: GPTConfig | None = None) -> tuple[str, ...]:
    """The parameters looked up by rows rather than multiplied, for `config`'s architecture; without a
    config, those of every architecture (the names mean an embedding in any of them)."""
    specs = [spec_for(config)] if config is not None else list(SPECS.values())
    return tuple(dict.fromkeys(name for spec in specs for name in spec.EMBEDDINGS))


def param_shapes(config: GPTConfig) -> dict[str, tuple[int, ...]]:
    """Every canonical parameter name -> shape for `config`'s architecture, in initialization order."""
    return spec_for(config).param_shapes(config)


def block_param_shapes(config: GPTConfig) -> dict[str, tuple[int, ...]]:
    """One block's parameter names (inside the block) -> shapes."""
    return spec_for(config).block_param_shapes(config)


def count_params_for(config: GPTConfig) -> int:
    """The number of trainable numbers of the model `config` describes, from the shapes alone (nothing
    allocated, so it is instant for gpt2-xl's 1.6B); a tied head shares the embedding and is not counted again."""
    head, _ = spec_for(config).TIED_HEAD
    return sum(math.prod(shape) for name, shape in param_shapes(config).items()
               if not (name == head and config.tie_weights))


def flops_per_token(config: GPTConfig, context_length: int) -> float:
    """Training FLOPs per token of `config`'s architecture at context `context_length`."""
    return spec_for(config).flops_per_token(config, context_length)
