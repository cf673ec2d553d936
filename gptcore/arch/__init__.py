"""One spec per architecture, chosen by config.arch: the seam through which both twins, the loaders,
checkpoint validation, LoRA and the FLOPs count see a model's parameters.

A spec is a module with NAME, HAS_POSITION_TABLE, EMBEDDINGS, TIED_HEAD, LORA_TARGET_GROUPS and the
functions block_param_shapes(config), param_shapes(config), init_rule(name, config) and
flops_per_token(config, context_length). Adding an architecture = a spec module listed in SPECS.
"""
from __future__ import annotations

import math

from gptcore.arch import gpt2
from gptcore.config import GPTConfig

SPECS = {gpt2.NAME: gpt2}


def spec_for(config: GPTConfig):
    """The spec module of config.arch."""
    return SPECS[config.arch]


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
