"""Llama's released layout as Hugging Face stores it (LlamaForCausalLM: SmolLM2, TinyLlama, Llama 3.2 from the
Hub): config.json + model.safetensors, or shards listed in model.safetensors.index.json; read and written.

    config, params = load_hf_llama(folder)          # gptcore.formats.weights.load_weights dispatches here
    save_hf_llama(folder, config, params)           # config.json + model.safetensors that transformers loads

The tensor names are one table, HF_NAMES (canonical name -> Hugging Face name, `{i}` the layer). Hugging Face's
query and key rows are already in the rotate-half order of its Llama, which both twins use, so every tensor is
taken as it is (float32, C-contiguous); no transpose (nn.Linear stores (out, in) like the canonical params).

Shapes, with D = C // H the head width, Hkv the key/value heads and F the feed-forward width:

    tok_emb.weight (V, C)                   model.embed_tokens.weight
    blocks.{i}.norm1.scale (C)              model.layers.{i}.input_layernorm.weight
    blocks.{i}.att.W_query.weight (H*D, C)  model.layers.{i}.self_attn.q_proj.weight
    blocks.{i}.att.W_key.weight (Hkv*D, C)  ...k_proj.weight      blocks.{i}.att.W_value.weight  ...v_proj.weight
    blocks.{i}.att.out_proj.weight (C, H*D) ...o_proj.weight
    blocks.{i}.norm2.scale (C)              model.layers.{i}.post_attention_layernorm.weight
    blocks.{i}.ff.gate.weight (F, C)  ...mlp.gate_proj.weight    blocks.{i}.ff.up.weight (F, C)  ...mlp.up_proj.weight
    blocks.{i}.ff.down.weight (C, F)  ...mlp.down_proj.weight
    final_norm.scale (C)                    model.norm.weight
    out_head.weight (V, C)                  lm_head.weight (absent when tied to the embedding)

Rope scaling: "llama3" (Llama 3.1/3.2) is kept in config.rope_scaling for the model to apply; any other kind
(linear, dynamic, yarn, longrope, ...) is refused by name, since no model here implements it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from gptcore.arch import param_shapes
from gptcore.config import ConfigError, GPTConfig
from gptcore.fileio import atomic_write_json
from gptcore.formats.safetensors import SafetensorsFile, WeightsError, write_safetensors

ARCH = "llama"
DISPLAY_NAME = "Llama"
HF_MODEL_TYPE = "llama"
HF_ARCHITECTURE = "LlamaForCausalLM"
HF_CONFIG_FILE = "config.json"
HF_WEIGHTS_FILE = "model.safetensors"
HF_INDEX_FILE = "model.safetensors.index.json"
HEAD = "out_head.weight"
EMBEDDING = "tok_emb.weight"
SUPPORTED_ROPE_SCALING = ("llama3",)
LLAMA3_SCALING_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")

# THE name table: canonical parameter name -> Hugging Face LlamaForCausalLM tensor name; "{i}" is the layer.
HF_NAMES = {
    "tok_emb.weight": "model.embed_tokens.weight",
    "blocks.{i}.norm1.scale": "model.layers.{i}.input_layernorm.weight",
    "blocks.{i}.att.W_query.weight": "model.layers.{i}.self_attn.q_proj.weight",
    "blocks.{i}.att.W_key.weight": "model.layers.{i}.self_attn.k_proj.weight",
    "blocks.{i}.att.W_value.weight": "model.layers.{i}.self_attn.v_proj.weight",
    "blocks.{i}.att.out_proj.weight": "model.layers.{i}.self_attn.o_proj.weight",
    "blocks.{i}.norm2.scale": "model.layers.{i}.post_attention_layernorm.weight",
    "blocks.{i}.ff.gate.weight": "model.layers.{i}.mlp.gate_proj.weight",
    "blocks.{i}.ff.up.weight": "model.layers.{i}.mlp.up_proj.weight",
    "blocks.{i}.ff.down.weight": "model.layers.{i}.mlp.down_proj.weight",
    "final_norm.scale": "model.norm.weight",
    "out_head.weight": "lm_head.weight",
}

# Buffers some Hub files carry that are not parameters (RoPE's precomputed inverse frequencies).
HF_BUFFER_SUFFIXES = ("rotary_emb.inv_freq",)


# ---------------------------------------------------------------------------------------------------
# Names, shapes and the config: shared by every Llama format (this file and gptcore/formats/gguf.py)
# ---------------------------------------------------------------------------------------------------

def expand_names(table: dict[str, str], n_layers: int) -> dict[str, str]:
    """A name table with "{i}" -> one entry per layer, in canonical order: the embedding, block 0's names,
    block 1's, ..., then what follows the blocks (final norm, head)."""
    before, block, after = {}, {}, {}
    for canonical, other in table.items():
        if "{i}" in canonical:
            block[canonical] = other
        elif block:
            after[canonical] = other
        else:
            before[canonical] = other
    names = dict(before)
    for i in range(n_layers):
        names.update({canonical.format(i=i): other.format(i=i) for canonical, other in block.items()})
    names.update(after)
    return names


def llama_param_shapes(config: GPTConfig) -> dict[str, tuple[int, ...]]:
    """Canonical name -> shape of a Llama `config`, head included (gptcore.arch.llama's spec)."""
    return param_shapes(config)


def llama_config(*, vocab_size, context_length, emb_dim, n_heads, n_kv_heads, n_layers, ff_dim, rope_theta,
                 norm_eps, tie_weights, rope_scaling=None, source) -> GPTConfig:
    """The GPTConfig of a released Llama (no biases, drop_rate 0.0 for inference); errors name `source`.

    rope_scaling: None, or a "llama3" dict {rope_type, factor, low_freq_factor, high_freq_factor,
    original_max_position_embeddings} stored in the config for the model to apply.
    """
    fields = dict(arch=ARCH, vocab_size=int(vocab_size), context_length=int(context_length), emb_dim=int(emb_dim),
                  n_heads=int(n_heads), n_kv_heads=int(n_kv_heads), n_layers=int(n_layers), ff_dim=int(ff_dim),
                  rope_theta=float(rope_theta), norm_eps=float(norm_eps), tie_weights=bool(tie_weights),
                  drop_rate=0.0, qkv_bias=False)
    if rope_scaling is not None:
        fields["rope_scaling"] = dict(rope_scaling)
    try:
        return GPTConfig(**fields)
    except (ConfigError, TypeError) as error:
        raise WeightsError(f"{source} describes a model this project cannot build: {error}") from error


def check_rope_scaling(scaling, source) -> dict | None:
    """None (no scaling) or the "llama3" scaling dict; any other kind is refused by name."""
    if not scaling:
        return None
    if not isinstance(scaling, dict):
        raise WeightsError(f"{source}: rope_scaling {scaling!r} is not an object")
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind in (None, "default"):
        return None
    if kind not in SUPPORTED_ROPE_SCALING:
        raise WeightsError(f"{source}: rope scaling {kind!r} is not supported (only {SUPPORTED_ROPE_SCALING} and "
                           f"none); this model cannot be loaded here")
    missing = [key for key in LLAMA3_SCALING_KEYS if key not in scaling]
    if missing:
        raise WeightsError(f"{source}: llama3 rope scaling lacks {missing}")
    return {"rope_type": kind, **{key: scaling[key] for key in LLAMA3_SCALING_KEYS}}


def owned_float32(array: np.ndarray) -> np.ndarray:
    """A C-contiguous float32 array owning its memory (one copy, also out of a memory map)."""
    out = np.empty(array.shape, dtype=np.float32)
    out[...] = array
    return out


def check_shape(source, name: str, got, expected) -> None:
    if tuple(got) != tuple(expected):
        raise WeightsError(f"{source}: tensor {name} has shape {tuple(got)}, but the model's config implies "
                           f"{tuple(expected)}; the weights and the config come from different models")


# ---------------------------------------------------------------------------------------------------
# Hugging Face config.json
# ---------------------------------------------------------------------------------------------------

_REQUIRED_HF_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")


def config_from_hf(values: dict, source) -> GPTConfig:
    """The GPTConfig of a Hugging Face Llama config.json (checked for what the twins implement)."""
    missing = [key for key in _REQUIRED_HF_KEYS if key not in values]
    if missing:
        raise WeightsError(f"{source} lacks Llama fields {missing}")
    if values.get("hidden_act", "silu") != "silu":
        raise WeightsError(f"{source}: hidden_act {values['hidden_act']!r} is not SwiGLU's silu")
    for flag in ("attention_bias", "mlp_bias"):
        if values.get(flag):
            raise WeightsError(f"{source}: {flag}=true, but the Llama model here has no biases")
    C, H = values["hidden_size"], values["num_attention_heads"]
    if values.get("head_dim") not in (None, C // H):
        raise WeightsError(f"{source}: head_dim {values['head_dim']} differs from hidden_size // "
                           f"num_attention_heads = {C // H}, which the model here assumes")
    # transformers >= 5 may keep theta and the scaling in rope_parameters instead of the top level.
    rope = values.get("rope_parameters") or {}
    theta = values.get("rope_theta", rope.get("rope_theta", 10000.0))
    scaling = check_rope_scaling(values.get("rope_scaling") or rope, source)
    return llama_config(vocab_size=values["vocab_size"], context_length=values.get("max_position_embeddings", 2048),
                        emb_dim=C, n_heads=H, n_kv_heads=values.get("num_key_value_heads", H),
                        n_layers=values["num_hidden_layers"], ff_dim=values["intermediate_size"], rope_theta=theta,
                        norm_eps=values.get("rms_norm_eps", 1e-6), tie_weights=values.get("tie_word_embeddings", False),
                        rope_scaling=scaling, source=source)


def hf_config_from_config(config: GPTConfig) -> dict:
    """A config.json that transformers' LlamaForCausalLM loads (inverse of config_from_hf)."""
    values = {"architectures": [HF_ARCHITECTURE], "model_type": HF_MODEL_TYPE, "hidden_act": "silu",
              "attention_bias": False, "mlp_bias": False, "vocab_size": config.vocab_size,
              "max_position_embeddings": config.context_length, "hidden_size": config.emb_dim,
              "intermediate_size": config.ff_dim, "num_hidden_layers": config.n_layers,
              "num_attention_heads": config.n_heads, "num_key_value_heads": config.n_kv_heads,
              "head_dim": config.emb_dim // config.n_heads, "rms_norm_eps": config.norm_eps,
              "rope_theta": config.rope_theta, "tie_word_embeddings": config.tie_weights}
    scaling = getattr(config, "rope_scaling", None)
    if scaling:
        values["rope_scaling"] = dict(scaling)
    return values


def read_hf_config(file: Path) -> dict:
    try:
        values = json.loads(Path(file).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise WeightsError(f"cannot read {file} ({error}); it should be a Hugging Face config.json") from error
    if not isinstance(values, dict):
        raise WeightsError(f"{file} holds a JSON {type(values).__name__}, not a Hugging Face config object")
    return values


def is_hf_llama(path: str | os.PathLike) -> bool:
    """True when `path` (a folder, or a .safetensors file in one) has a config.json with model_type "llama"."""
    path = Path(path)
    config_file = (path if path.is_dir() else path.parent) / HF_CONFIG_FILE
    if not config_file.is_file():
        return False
    try:
        values = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(values, dict) and values.get("model_type") == HF_MODEL_TYPE


# ---------------------------------------------------------------------------------------------------
# Reading: one file, or shards named by model.safetensors.index.json
# ---------------------------------------------------------------------------------------------------

def _weight_files(folder: Path) -> dict[str, Path]:
    """Tensor name -> the safetensors file holding it (one file, or the index's weight_map)."""
    index = folder / HF_INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise WeightsError(f"cannot read {index} ({error}); it should hold a weight_map of tensor name -> "
                               f"shard file") from error
        return {name: folder / shard for name, shard in weight_map.items()}
    file = folder / HF_WEIGHTS_FILE
    if not file.is_file():
        others = sorted(p.name for p in folder.glob("*.bin"))
        hint = f"; found {others}: pickled PyTorch files are never loaded (unsafe), convert them" if others else ""
        raise FileNotFoundError(f"missing {file} (or {HF_INDEX_FILE} with shards): a Hugging Face Llama folder "
                                f"needs {HF_CONFIG_FILE} + {HF_WEIGHTS_FILE}{hint}")
    with SafetensorsFile(file) as weights:
        return {name: file for name in weights.keys}


def load_hf_llama(path: str | os.PathLike) -> tuple[GPTConfig, dict[str, np.ndarray]]:
    """(config, params) from a Hugging Face Llama folder (or a .safetensors file beside its config.json).

    Tensors are read one at a time from memory-mapped shards (peak: the params plus one tensor); the head is
    tied when lm_head.weight is absent (tie_word_embeddings models usually omit it).
    """
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    config_file = folder / HF_CONFIG_FILE
    values = read_hf_config(config_file)
    locations = _weight_files(folder) if path.is_dir() else _single_file(path)
    names = expand_names(HF_NAMES, values.get("num_hidden_layers", 0))
    has_head = names[HEAD] in locations
    config = config_from_hf({**values, "tie_word_embeddings": not has_head}, config_file)
    shapes = llama_param_shapes(config)
    wanted = set(names.values())
    unknown = [key for key in locations if key not in wanted and not key.endswith(HF_BUFFER_SUFFIXES)]
    if unknown:
        raise WeightsError(f"{folder}: unexpected tensors {unknown[:5]} for the {config.n_layers}-layer Llama "
                           f"{config_file.name} describes; the files and the config come from different models")
    params: dict[str, np.ndarray] = {}
    open_files: dict[Path, SafetensorsFile] = {}
    try:
        for canonical, hf_name in names.items():
            if canonical == HEAD and not has_head:
                params[HEAD] = params[EMBEDDING]
                continue
            if hf_name not in locations:
                raise WeightsError(f"{folder}: tensor {hf_name} is missing; the download is incomplete")
            file = locations[hf_name]
            if file not in open_files:
                open_files[file] = SafetensorsFile(file)
            weights = open_files[file]
            check_shape(file, hf_name, weights.shape(hf_name), shapes[canonical])
            params[canonical] = owned_float32(weights.array(hf_name))
    finally:
        for weights in open_files.values():
            weights.close()
    return config, params


def _single_file(file: Path) -> dict[str, Path]:
    with SafetensorsFile(file) as weights:
        return {name: file for name in weights.keys}


# ---------------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------------

def save_hf_llama(folder: str | os.PathLike, config: GPTConfig, params: dict[str, np.ndarray]) -> Path:
    """Write a Hugging Face Llama folder: config.json + model.safetensors under LlamaForCausalLM's names, the
    head as lm_head.weight only when untied. Each file written to a temporary name and renamed."""
    if config.arch != ARCH:
        raise WeightsError(f"the Llama layout holds Llama models, not {config.arch!r}")
    shapes = llama_param_shapes(config)
    tensors = {}
    for canonical, hf_name in expand_names(HF_NAMES, config.n_layers).items():
        if canonical == HEAD and config.tie_weights:
            continue
        if canonical not in params:
            raise WeightsError(f"parameter {canonical} is missing; only a Llama language model's parameters fit "
                               f"the Hugging Face layout (merge LoRA adapters first)")
        check_shape("the parameters", canonical, params[canonical].shape, shapes[canonical])
        tensors[hf_name] = np.ascontiguousarray(params[canonical])
    extra = sorted(set(params) - set(shapes))
    if extra:
        raise WeightsError(f"parameters {extra[:5]} have no place in the Hugging Face Llama layout (a classifier "
                           f"head or LoRA adapters?); save them as our checkpoint instead")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    temp = folder / f".{HF_WEIGHTS_FILE}.tmp"
    write_safetensors(temp, tensors, metadata={"format": "pt"})
    os.replace(temp, folder / HF_WEIGHTS_FILE)
    atomic_write_json(folder / HF_CONFIG_FILE, hf_config_from_config(config))
    return folder
