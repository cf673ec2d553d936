"""GPT-2's released layout, shared by OpenAI's TF checkpoints and Hugging Face's GPT-2 files: its tensor names,
its shapes, and the map to and from the canonical parameters of gptcore.arch.gpt2. No file is read here;
gptcore.formats.weights reads and writes the containers and looks this module up by architecture (a Llama
release layout would sit beside it, registered under "llama").

Logical names (the container's own spelling is a function of them: openai_tf_name, hf_tensor_name):

    wte (V, C)   wpe (T, C)
    h{i}.ln_1.g / .b (C)
    h{i}.attn.c_attn.w (C, 3C) / .b (3C)    query | key | value fused along the output axis
    h{i}.attn.c_proj.w (C, C) / .b (C)
    h{i}.ln_2.g / .b (C)
    h{i}.mlp.c_fc.w (C, F) / .b (F)   h{i}.mlp.c_proj.w (F, C) / .b (C)
    ln_f.g / .b (C)

Every `.w` is a Conv1D weight stored (in, out), the transpose of the canonical (out, in); the head is tied to
wte (Hugging Face files may carry it as lm_head.weight). The shapes are derived from
gptcore.arch.param_shapes(config) through the name map below, so the two cannot drift apart:

    c_attn.w (C, 3C) <-> W_query = w[:, :C].T, W_key = w[:, C:2C].T, W_value = w[:, 2C:].T   (C, C) each
    c_proj.w (C, C) <-> out_proj.weight = w.T        mlp.c_fc.w (C, F) <-> ff.fc1.weight = w.T (F, C)
    mlp.c_proj.w (F, C) <-> ff.fc2.weight = w.T (C, F)      ln_1.g / ln_1.b <-> norm1.scale / norm1.shift
"""
from __future__ import annotations

import numpy as np

from gptcore.arch import gpt2 as spec
from gptcore.arch import param_shapes
from gptcore.config import ConfigError, GPTConfig
from gptcore.formats.safetensors import WeightsError
from gptcore.params import check_param_shapes

ARCH = spec.NAME
DISPLAY_NAME = "GPT-2"
HF_MODEL_TYPE = "gpt2"
HF_ARCHITECTURE = "GPT2LMHeadModel"
HF_PREFIX = "transformer."           # GPT2LMHeadModel's names; GPT2Model's have none
HF_HEAD = "lm_head.weight"
EMBEDDING = "wte"                    # the logical tensor the head is tied to
ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh")   # the tanh GELU both backends implement
LAYER_NORM_EPS = 1e-5

# GPT-2's widths and head counts; used only when a bare .safetensors file comes without a config.json.
HEADS_BY_WIDTH = {768: 12, 1024: 16, 1280: 20, 1600: 25}

# Logical name -> the canonical names it holds, fused along the output axis when there are several.
# Outside the blocks, then inside block i (after "h{i}." / "blocks.{i}."), then after the blocks.
_BEFORE_BLOCKS = {"wte": ("tok_emb.weight",), "wpe": ("pos_emb.weight",)}
_BLOCK = {
    "ln_1.g": ("norm1.scale",), "ln_1.b": ("norm1.shift",),
    "attn.c_attn.w": ("att.W_query.weight", "att.W_key.weight", "att.W_value.weight"),
    "attn.c_attn.b": ("att.W_query.bias", "att.W_key.bias", "att.W_value.bias"),
    "attn.c_proj.w": ("att.out_proj.weight",), "attn.c_proj.b": ("att.out_proj.bias",),
    "ln_2.g": ("norm2.scale",), "ln_2.b": ("norm2.shift",),
    "mlp.c_fc.w": ("ff.fc1.weight",), "mlp.c_fc.b": ("ff.fc1.bias",),
    "mlp.c_proj.w": ("ff.fc2.weight",), "mlp.c_proj.b": ("ff.fc2.bias",),
}
_AFTER_BLOCKS = {"ln_f.g": ("final_norm.scale",), "ln_f.b": ("final_norm.shift",)}


def is_conv1d_weight(logical: str) -> bool:
    """A `.w` tensor: a linear layer's weight stored (in, out), the transpose of the canonical (out, in)."""
    return logical.endswith(".w")


def layout_names(config: GPTConfig) -> dict[str, tuple[str, ...]]:
    """Logical name -> the canonical parameter names it holds, in the release's order (the head excluded)."""
    names = dict(_BEFORE_BLOCKS)
    for i in range(config.n_layers):
        names.update({f"h{i}.{logical}": tuple(f"blocks.{i}.{name}" for name in canonical)
                      for logical, canonical in _BLOCK.items()})
    names.update(_AFTER_BLOCKS)
    return names


def check_release_config(config: GPTConfig) -> None:
    """WeightsError unless `config` is a model the released layout can hold: a GPT-2 with query/key/value
    biases (the fused c_attn.b always holds them)."""
    if config.arch != ARCH:
        raise WeightsError(f"the GPT-2 release layout holds GPT-2 models, not {config.arch!r}")
    if not config.qkv_bias:
        raise WeightsError("the GPT-2 release layout always stores query/key/value biases (c_attn.b); this model "
                           "has none (qkv_bias=False): save it as our checkpoint instead")


def layout_shapes(config: GPTConfig) -> dict[str, tuple[int, ...]]:
    """Logical name -> shape in the released layout (Conv1D weights (in, out), no TF leading 1), derived
    from gptcore.arch.param_shapes(config): fused names add up along the output axis."""
    check_release_config(config)
    canonical = param_shapes(config)
    shapes = {}
    for logical, names in layout_names(config).items():
        parts = [canonical[name] for name in names]
        if is_conv1d_weight(logical):                        # (out_k, in) each -> (in, sum out_k)
            shapes[logical] = (parts[0][1], sum(part[0] for part in parts))
        else:                                                # vectors add up; an embedding stays as it is
            shapes[logical] = (sum(part[0] for part in parts),) + parts[0][1:]
    return shapes


def _owned_float32(array: np.ndarray, transpose: bool = False) -> np.ndarray:
    """A C-contiguous float32 array that owns its memory (one copy; reads straight from a memory map)."""
    source = array.T if transpose else array
    out = np.empty(source.shape, dtype=np.float32)
    out[...] = source
    return out


def canonical_from_layout(read, config: GPTConfig, lm_head: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Canonical params (float32, C-contiguous, in gptcore.arch.param_shapes order) from a reader of the
    released layout.

    read(logical_name) -> array with the shape layout_shapes(config)[logical_name] (checked by the reader).
    lm_head: a separate (V, C) output head, or None for the tied head (out_head.weight is tok_emb.weight).
    Tensors are read one at a time, so loading holds the final params plus one tensor in flight.
    """
    canonical = param_shapes(config)
    head, embedding = spec.TIED_HEAD
    params = {}
    for logical, names in layout_names(config).items():
        stored = read(logical)
        transpose = is_conv1d_weight(logical)
        start = 0
        for name in names:           # fused parts follow each other along the last (output) axis
            width = canonical[name][0]
            part = stored[..., start:start + width] if len(names) > 1 else stored
            params[name] = _owned_float32(part, transpose=transpose)
            start += width
        del stored
    params[head] = params[embedding] if lm_head is None else _owned_float32(lm_head)
    check_param_shapes(params, canonical, what="the GPT-2 release's tensors")
    return {name: params[name] for name in canonical}


def layout_from_canonical(params: dict[str, np.ndarray], config: GPTConfig) -> dict[str, np.ndarray]:
    """The released layout's tensors (logical name -> array, C-contiguous, the params' dtype) from canonical
    params: the inverse of canonical_from_layout. The head is not included (write it only when untied)."""
    check_release_config(config)
    try:
        check_param_shapes(params, param_shapes(config), what="the parameters")
    except ValueError as error:
        raise WeightsError(f"{error}; only a language model's parameters fit the GPT-2 release layout (merge "
                           f"LoRA adapters first; a classifier has no released form)") from error
    tensors = {}
    for logical, names in layout_names(config).items():
        parts = [params[name].T if is_conv1d_weight(logical) else params[name] for name in names]
        tensors[logical] = np.ascontiguousarray(parts[0] if len(parts) == 1 else np.concatenate(parts, axis=-1))
    return tensors


def release_config(*, vocab_size, context_length, emb_dim, n_heads, n_layers, tie_weights, source) -> GPTConfig:
    """The GPTConfig of a released GPT-2 (qkv_bias, drop_rate 0.0 for inference); errors name `source`.

    drop_rate is 0.0 because dropout is a training choice, not part of the weights; finetuning sets it with
    config.replace(drop_rate=0.1).
    """
    try:
        return GPTConfig(vocab_size=vocab_size, context_length=context_length, emb_dim=emb_dim, n_heads=n_heads,
                         n_layers=n_layers, drop_rate=0.0, qkv_bias=True, tie_weights=tie_weights)
    except ConfigError as error:
        raise WeightsError(f"{source} describes an impossible model: {error}") from error


# ---------------------------------------------------------------------------------------------------
# OpenAI's spelling: hparams.json and TF variable names
# ---------------------------------------------------------------------------------------------------

HPARAMS_KEYS = ("n_vocab", "n_ctx", "n_embd", "n_head", "n_layer")


def openai_tf_name(logical: str) -> str:
    """'h3.attn.c_attn.w' -> 'model/h3/attn/c_attn/w'."""
    return "model/" + logical.replace(".", "/")


def config_from_hparams(hparams: dict, source) -> GPTConfig:
    """The GPTConfig of an OpenAI hparams.json (the head is always tied)."""
    return release_config(vocab_size=hparams["n_vocab"], context_length=hparams["n_ctx"], emb_dim=hparams["n_embd"],
                          n_heads=hparams["n_head"], n_layers=hparams["n_layer"], tie_weights=True, source=source)


def hparams_from_config(config: GPTConfig) -> dict:
    """The hparams.json values of `config` (inverse of config_from_hparams)."""
    return {"n_vocab": config.vocab_size, "n_ctx": config.context_length, "n_embd": config.emb_dim,
            "n_head": config.n_heads, "n_layer": config.n_layers}


# ---------------------------------------------------------------------------------------------------
# Hugging Face's spelling: config.json and safetensors keys
# ---------------------------------------------------------------------------------------------------

def hf_key_prefix(keys) -> str:
    """'transformer.' when the file uses GPT2LMHeadModel's names, '' for GPT2Model's."""
    return HF_PREFIX if f"{HF_PREFIX}wte.weight" in keys else ""


def hf_tensor_name(logical: str, prefix: str) -> str:
    """'h3.attn.c_attn.w' -> 'transformer.h.3.attn.c_attn.weight'; 'ln_f.g' -> 'ln_f.weight'."""
    if logical in ("wte", "wpe"):
        return f"{prefix}{logical}.weight"
    head, _, leaf = logical.rpartition(".")
    leaf = "bias" if leaf == "b" else "weight"  # LayerNorm gain g and Conv1D w are both `.weight`
    if head[0] == "h" and head[1].isdigit():
        layer, _, rest = head[1:].partition(".")
        head = f"h.{layer}.{rest}"
    return f"{prefix}{head}.{leaf}"


def is_hf_buffer(key: str) -> bool:
    """The attention-mask buffers some Hub files carry: h.{i}.attn.bias (1,1,T,T) and h.{i}.attn.masked_bias."""
    parts = key.split(".")
    return len(parts) >= 4 and parts[-1] in ("bias", "masked_bias") and parts[-2] == "attn"


def check_hf_config(values: dict, file) -> None:
    """WeightsError unless a Hugging Face GPT-2 config.json describes what both backends implement."""
    activation = values.get("activation_function", "gelu_new")
    if activation not in ACTIVATIONS:
        raise WeightsError(f"{file}: activation_function {activation!r} differs from GPT-2's tanh GELU (gelu_new) "
                           f"that both backends implement")
    eps = values.get("layer_norm_epsilon", LAYER_NORM_EPS)
    if abs(eps - LAYER_NORM_EPS) > 1e-12:
        raise WeightsError(f"{file}: layer_norm_epsilon {eps} differs from the {LAYER_NORM_EPS} both backends use")
    missing = [key for key in ("n_embd", "n_head", "n_layer") if key not in values]
    if missing or not ({"vocab_size", "n_vocab"} & set(values)) or not ({"n_positions", "n_ctx"} & set(values)):
        raise WeightsError(f"{file} lacks GPT-2 fields: needs vocab_size, n_positions, n_embd, n_head, n_layer")


def config_from_hf(values: dict, tie_weights: bool, source) -> GPTConfig:
    """The GPTConfig of a checked Hugging Face GPT-2 config.json."""
    return release_config(vocab_size=values.get("vocab_size", values.get("n_vocab")),
                          context_length=values.get("n_positions", values.get("n_ctx")),
                          emb_dim=values["n_embd"], n_heads=values["n_head"], n_layers=values["n_layer"],
                          tie_weights=tie_weights, source=source)


def hf_config_from_config(config: GPTConfig) -> dict:
    """A config.json that transformers' GPT2LMHeadModel loads (inverse of config_from_hf)."""
    return {"architectures": [HF_ARCHITECTURE], "model_type": HF_MODEL_TYPE, "activation_function": ACTIVATIONS[0],
            "layer_norm_epsilon": LAYER_NORM_EPS, "vocab_size": config.vocab_size,
            "n_positions": config.context_length, "n_ctx": config.context_length, "n_embd": config.emb_dim,
            "n_head": config.n_heads, "n_layer": config.n_layers, "tie_word_embeddings": config.tie_weights}


def config_from_hf_tensors(shape_of, keys, prefix: str, tie_weights: bool, source) -> GPTConfig:
    """Config from tensor shapes alone (a bare .safetensors file): needs a released GPT-2 width for the
    number of heads. shape_of(key) -> the stored shape."""
    for key in ("wte.weight", "wpe.weight"):
        if prefix + key not in keys:
            raise WeightsError(f"{source}: tensor {prefix + key} is missing; this is not a GPT-2 file")
    V, C = shape_of(prefix + "wte.weight")
    T = shape_of(prefix + "wpe.weight")[0]
    layers = {int(key[len(prefix):].split(".")[1]) for key in keys if key[len(prefix):].startswith("h.")}
    if C not in HEADS_BY_WIDTH:
        raise WeightsError(f"{source}: width {C} is not a released GPT-2 size, so the number of heads is unknown; "
                           f"put the model's config.json next to the file")
    return release_config(vocab_size=V, context_length=T, emb_dim=C, n_heads=HEADS_BY_WIDTH[C], n_layers=len(layers),
                          tie_weights=tie_weights, source=source)
