"""The Llama architecture's spec: canonical parameter names and shapes, the init rule, which linear layers
LoRA may wrap, and the FLOPs per token. Both twins, every loader (GGUF, Hugging Face Llama folders),
checkpoint validation and LoRA read these instead of typing the names.

    tok_emb.weight (V, C)                                   no position table: RoPE rotates queries and keys
    blocks.{i}.norm1.scale (C)                              RMSNorm before attention (no shift)
    blocks.{i}.att.W_query.weight (C, C)                    H query heads of width D = C / H
    blocks.{i}.att.W_key.weight (KV*D, C)   blocks.{i}.att.W_value.weight (KV*D, C)   KV = n_kv_heads
    blocks.{i}.att.out_proj.weight (C, C)
    blocks.{i}.norm2.scale (C)                              RMSNorm before the feed-forward
    blocks.{i}.ff.gate.weight (F, C)   blocks.{i}.ff.up.weight (F, C)   blocks.{i}.ff.down.weight (C, F)
    final_norm.scale (C)   out_head.weight (V, C)           (tied to tok_emb.weight when tie_weights)

No biases anywhere. Linear weights are stored (out, in), as torch stores them. Hugging Face's names map
one to one: model.embed_tokens -> tok_emb, model.layers.N.input_layernorm -> blocks.N.norm1,
self_attn.{q,k,v,o}_proj -> att.{W_query, W_key, W_value, out_proj}, post_attention_layernorm -> norm2,
mlp.{gate,up,down}_proj -> ff.{gate,up,down}, model.norm -> final_norm, lm_head -> out_head.
"""
from __future__ import annotations

import math

import numpy as np

from gptcore.config import GPTConfig
from gptcore.params import prefixed

NAME = "llama"
HAS_POSITION_TABLE = False               # positions enter as rotations of the queries and keys (RoPE)
EMBEDDINGS = ("tok_emb.weight",)         # looked up by rows, not multiplied
TIED_HEAD = ("out_head.weight", "tok_emb.weight")     # (head, embedding) when config.tie_weights
INIT_STD = 0.02                          # Hugging Face's initializer_range for Llama
# Linear layers of a block that read the same input (names as they end): a decoding layout may store each
# group side by side in one (in, sum of outs) matrix, read by one product (decoding_layout in both twins).
SHARED_INPUT_LAYERS = (("att.W_query", "att.W_key", "att.W_value"), ("ff.gate", "ff.up"))

# The linear layers LoRA may wrap, by group (names as they end: blocks.{i}.att.W_query, ...).
LORA_TARGET_GROUPS = {
    "attention": ("att.W_query", "att.W_key", "att.W_value", "att.out_proj"),
    "feedforward": ("ff.gate", "ff.up", "ff.down"),
    "head": ("out_head", "cls_head"),       # the language-model head, or a classifier's head
}


def block_param_shapes(config: GPTConfig) -> dict[str, tuple[int, ...]]:
    """Shapes of one block's parameters under their names inside the block."""
    C, F, KVD = config.emb_dim, config.ff_dim, config.kv_dim
    return {
        "norm1.scale": (C,),
        "att.W_query.weight": (C, C),
        "att.W_key.weight": (KVD, C),
        "att.W_value.weight": (KVD, C),
        "att.out_proj.weight": (C, C),
        "norm2.scale": (C,),
        "ff.gate.weight": (F, C),
        "ff.up.weight": (F, C),
        "ff.down.weight": (C, F),
    }


def param_shapes(config: GPTConfig) -> dict[str, tuple[int, ...]]:
    """Every canonical parameter name -> shape, in a fixed order (the order of initialization)."""
    V, C = config.vocab_size, config.emb_dim
    shapes = {"tok_emb.weight": (V, C)}
    for i in range(config.n_layers):
        shapes.update(prefixed(block_param_shapes(config), f"blocks.{i}."))
    shapes.update({"final_norm.scale": (C,), "out_head.weight": (V, C)})
    return shapes


def init_rule(name: str, config: GPTConfig) -> tuple[str, float]:
    """How parameter `name` starts, as Hugging Face's LlamaPreTrainedModel starts it: ("ones", 1) for the
    RMSNorm scales, else ("normal", 0.02) for every matrix and the embedding (no residual rescaling)."""
    if name.endswith(".scale"):
        return "ones", 1.0
    return "normal", INIT_STD


def flops_per_token(config: GPTConfig, context_length: int) -> float:
    """Training FLOPs per token, 6 N + 12 L C T: N counts the matrices that multiply (the head once; an untied
    token embedding is a lookup and is left out), 12 L C T is attention's score and weighted-sum matmuls
    (grouped-query attention shares keys and values, but every query head still scores T keys of width D)."""
    n = sum(math.prod(shape) for name, shape in param_shapes(config).items() if name != "tok_emb.weight")
    return 6.0 * n + 12.0 * config.n_layers * config.emb_dim * context_length


# ---- RoPE's frequencies (one formula for both twins: npgpt.rope and torchgpt.rope build their tables on it) ----

def inverse_frequencies(head_dim: int, theta: float, scaling: dict | None = None) -> np.ndarray:
    """RoPE's inv_freq_j = theta^(-2j / D), j = 0 .. D/2 - 1, in float64: (D/2,); with Llama 3's "llama3"
    scaling (llama3_scaled_frequencies) when `scaling` is given."""
    if head_dim % 2:
        raise ValueError(f"the rotary position embedding needs an even head width, got {head_dim}")
    inv_freq = 1.0 / (float(theta) ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    return inv_freq if scaling is None else llama3_scaled_frequencies(inv_freq, scaling)


def llama3_scaled_frequencies(inv_freq: np.ndarray, scaling: dict) -> np.ndarray:
    """Llama 3.1/3.2's "llama3" rope scaling of the inverse frequencies (D/2,) -> (D/2,), float64.

    With factor s, low_freq_factor l, high_freq_factor h and the pretraining context L
    (original_max_position_embeddings), each frequency's wavelength w = 2 pi / inv_freq decides:
        w < L / h   (fast, local)            inv_freq unchanged
        w > L / l   (slow, beyond L)         inv_freq / s: positions stretched s times, as if the context were s L
        between     smooth = (L / w - l) / (h - l),  (1 - smooth) inv_freq / s + smooth inv_freq
    so the rotations the model learnt for nearby tokens stay, while the slow ones reach s times further.
    The cos/sin tables are not rescaled (llama3's attention factor is 1).
    """
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind != "llama3":
        raise ValueError(f"rope scaling {kind!r} is not implemented; only 'llama3' is")
    factor, low, high = float(scaling["factor"]), float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
    context = float(scaling["original_max_position_embeddings"])
    wavelength = 2.0 * math.pi / inv_freq
    smooth = (context / wavelength - low) / (high - low)
    scaled = np.where(wavelength > context / low, inv_freq / factor, inv_freq)
    medium = (wavelength >= context / high) & (wavelength <= context / low)
    return np.where(medium, (1.0 - smooth) * inv_freq / factor + smooth * inv_freq, scaled)


def rope_inverse_frequencies(config: GPTConfig) -> np.ndarray:
    """The inverse frequencies (D/2,) float64 of a Llama config: its head width, rope_theta and rope_scaling."""
    return inverse_frequencies(config.head_dim, config.rope_theta, config.rope_scaling)
