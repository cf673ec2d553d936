"""The GPT-2 architecture's spec: canonical parameter names and shapes, the init rule, which linear layers
LoRA may wrap, and the FLOPs per token. Both twins, every loader, checkpoint validation and LoRA read
these instead of typing the names.

    tok_emb.weight (V, C)   pos_emb.weight (T_max, C)
    blocks.{i}.norm1.scale / .shift (C)
    blocks.{i}.att.W_query.weight (C, C)   ...W_key, W_value (+ .bias when qkv_bias)
    blocks.{i}.att.out_proj.weight (C, C) / .bias (C)
    blocks.{i}.norm2.scale / .shift (C)
    blocks.{i}.ff.fc1.weight (F, C) / .bias (F)   blocks.{i}.ff.fc2.weight (C, F) / .bias (C)
    final_norm.scale / .shift (C)   out_head.weight (V, C)  (tied to tok_emb.weight when tie_weights)

Linear weights are stored (out, in), as torch stores them.
"""
from __future__ import annotations

import math

from gptcore.config import GPTConfig
from gptcore.params import prefixed

NAME = "gpt2"
HAS_POSITION_TABLE = True                # a learned pos_emb.weight; Llama rotates queries and keys instead
EMBEDDINGS = ("tok_emb.weight", "pos_emb.weight")     # looked up by rows, not multiplied
TIED_HEAD = ("out_head.weight", "tok_emb.weight")     # (head, embedding) when config.tie_weights
INIT_STD = 0.02
RESIDUAL_PROJECTIONS = ("att.out_proj", "ff.fc2")     # write into the residual stream: std / sqrt(2 L)
# Linear layers of a block that read the same input (names as they end): a decoding layout may store each
# group side by side in one (in, sum of outs) matrix, read by one product (decoding_layout in both twins).
SHARED_INPUT_LAYERS = (("att.W_query", "att.W_key", "att.W_value"),)

# The linear layers LoRA may wrap, by group (names as they end: blocks.{i}.att.W_query, ...).
LORA_TARGET_GROUPS = {
    "attention": ("att.W_query", "att.W_key", "att.W_value", "att.out_proj"),
    "feedforward": ("ff.fc1", "ff.fc2"),
    "head": ("out_head", "cls_head"),       # the language-model head, or a classifier's head
}


def block_param_shapes(config: GPTConfig) -> dict[str, tuple[int, ...]]:
    """Shapes of one block's parameters under their names inside the block."""
    C, F = config.emb_dim, config.ff_dim
    shapes = {"norm1.scale": (C,), "norm1.shift": (C,)}
    for proj in ("W_query", "W_key", "W_value"):
        shapes[f"att.{proj}.weight"] = (C, C)
        if config.qkv_bias:
            shapes[f"att.{proj}.bias"] = (C,)
    shapes.update({
        "att.out_proj.weight": (C, C), "att.out_proj.bias": (C,),
        "norm2.scale": (C,), "norm2.shift": (C,),
        "ff.fc1.weight": (F, C), "ff.fc1.bias": (F,),
        "ff.fc2.weight": (C, F), "ff.fc2.bias": (C,),
    })
    return shapes


def param_shapes(config: GPTConfig) -> dict[str, tuple[int, ...]]:
    """Every canonical parameter name -> shape, in a fixed order (the order of initialization)."""
    V, C = config.vocab_size, config.emb_dim
    shapes = {"tok_emb.weight": (V, C), "pos_emb.weight": (config.context_length, C)}
    for i in range(config.n_layers):
        shapes.update(prefixed(block_param_shapes(config), f"blocks.{i}."))
    shapes.update({"final_norm.scale": (C,), "final_norm.shift": (C,), "out_head.weight": (V, C)})
    return shapes


def init_rule(name: str, config: GPTConfig) -> tuple[str, float]:
    """How parameter `name` starts: ("ones", 1) for norm scales, ("zeros", 0) for shifts and biases, else
    ("normal", std) with std 0.02, the projections into the residual stream scaled by 1/sqrt(2 L)."""
    if name.endswith(".scale"):
        return "ones", 1.0
    if name.endswith((".shift", ".bias")):
        return "zeros", 0.0
    if any(name.endswith(f"{proj}.weight") for proj in RESIDUAL_PROJECTIONS):
        return "normal", INIT_STD / math.sqrt(2 * config.n_layers)
    return "normal", INIT_STD


def flops_per_token(config: GPTConfig, context_length: int) -> float:
    """Training FLOPs per token, 6 N + 12 L C T (forward + backward through the weights, plus attention's
    score and weighted-sum matmuls), N counting a tied weight once and leaving out the position embedding
    (a lookup, not a matmul)."""
    n = sum(math.prod(shape) for name, shape in param_shapes(config).items()
            if name != "pos_emb.weight" and not (config.tie_weights and name == "out_head.weight"))
    return 6.0 * n + 12.0 * config.n_layers * config.emb_dim * context_length
