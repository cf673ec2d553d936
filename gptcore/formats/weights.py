"""Load pretrained GPT-2 weights into canonical params: OpenAI TF checkpoints, Hugging Face safetensors.

    config, params = load_weights(path)

`path` may be
- an OpenAI folder (what `gpt2 weights download` fetches): hparams.json + model.ckpt.{index,data-*}
  with TF variables model/wte, model/wpe, model/h{i}/ln_1/g ..., model/ln_f/b;
- a Hugging Face GPT-2 folder (config.json + model.safetensors) or the .safetensors file itself,
  keys with or without the `transformer.` prefix;
- one of our own checkpoints (npgpt/checkpoint.py), folder or model.safetensors;
- one of our run folders: a finetuning run's model/, else a training run's newest checkpoints/step-*.

Both released layouts store every linear layer as a Conv1D weight of shape (in, out) (TF adds a leading
axis of 1: [1, in, out]) and fuse query/key/value into one c_attn of width 3C. The canonical params store
linear weights (out, in) like torch, one per projection, so the loader splits and transposes:

    c_attn.w (C, 3C) -> W_query = w[:, :C].T, W_key = w[:, C:2C].T, W_value = w[:, 2C:].T   (C, C) each
    c_proj.w (C, C) -> out_proj.weight = w.T        mlp.c_fc.w (C, F) -> ff.fc1.weight = w.T (F, C)
    mlp.c_proj.w (F, C) -> ff.fc2.weight = w.T (C, F)      ln_1.g / ln_1.b -> norm1.scale / norm1.shift

The result is float32, C-contiguous, one array per name, with out_head.weight the same object as
tok_emb.weight (GPT-2 ties them). The config has qkv_bias=True, tie_weights=True, context_length and
vocab_size from the files, and drop_rate=0.0: dropout is a training choice, not part of the weights, and
0.0 is the right value for inference; finetuning sets it with config.replace(drop_rate=0.1).

Memory: tensors are read one at a time, straight from the file (TF's reader, or a read-only memory map
of the safetensors data), so loading gpt2-xl holds the final params plus one tensor in flight.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from gptcore.config import ConfigError, GPTConfig
from gptcore.formats.checkpoint import is_checkpoint, load_checkpoint, recover_interrupted_save
from gptcore.formats.runs import run_weights
from gptcore.formats.safetensors import SafetensorsFile, WeightsError, _first_line

HPARAMS_FILE = "hparams.json"
HF_CONFIG_FILE = "config.json"
HF_WEIGHTS_FILE = "model.safetensors"
TF_PREFIX = "model.ckpt"
TF_POINTER_FILE = "checkpoint"   # TF's text file naming the latest model.ckpt

# GPT-2's widths and head counts; used only when a bare .safetensors file comes without a config.json.
HEADS_BY_WIDTH = {768: 12, 1024: 16, 1280: 20, 1600: 25}


def load_weights(path: str | os.PathLike) -> tuple[GPTConfig, dict[str, np.ndarray]]:
    """(config, params) from an OpenAI folder, a Hugging Face folder/file, one of our checkpoints or runs."""
    path = resolve_weights_path(path)
    kind = detect_format(path)
    if kind == "openai":
        return load_openai_checkpoint(path)
    if kind == "huggingface":
        return load_hf_safetensors(path)
    config, params, _ = load_checkpoint(path, load_training_state=False)
    return config, params


def resolve_weights_path(path: str | os.PathLike) -> Path:
    """A run folder -> the checkpoint it stands for (gptcore.formats.runs.run_weights); any other path as it is.

    Needed before detect_format: a run folder holds a config.json (the run's settings) that would
    otherwise pass for a Hugging Face folder.
    """
    return run_weights(path) or Path(path)


def detect_format(path: Path) -> str:
    """'openai', 'huggingface' or 'checkpoint' (ours), from the files present; WeightsError otherwise."""
    path = Path(path)
    if recover_interrupted_save(path):   # a save of ours stopped between its two renames: put it back
        return "checkpoint"
    if not path.exists():
        raise FileNotFoundError(f"no weights at {path}: give an OpenAI folder (run `gpt2 weights download "
                                f"--size 124M`), a Hugging Face folder or a .safetensors file")
    if is_checkpoint(path):
        return "checkpoint"
    if path.is_file():
        if path.suffix == ".safetensors":
            return "huggingface"
        if path.name.startswith(TF_PREFIX) or path.name in (HPARAMS_FILE, TF_POINTER_FILE):
            return "openai"  # a file inside an OpenAI folder: load the folder
        raise WeightsError(f"{path} is not a weights file: expected a .safetensors file or a folder with "
                           f"{HPARAMS_FILE} + {TF_PREFIX}.* or {HF_CONFIG_FILE} + {HF_WEIGHTS_FILE}")
    if (path / HPARAMS_FILE).is_file() or any(path.glob(TF_PREFIX + ".*")):
        return "openai"
    if (path / HF_WEIGHTS_FILE).is_file() or (path / HF_CONFIG_FILE).is_file():
        return "huggingface"
    found = sorted(p.name for p in path.iterdir())[:10]
    raise WeightsError(f"unknown weights layout in {path}: expected {HPARAMS_FILE} + {TF_PREFIX}.* (OpenAI) or "
                       f"{HF_CONFIG_FILE} + {HF_WEIGHTS_FILE} (Hugging Face) in {path}, found {found}")


# ---------------------------------------------------------------------------------------------------
# The GPT-2 release layout, independent of the container: logical names -> (in, out)-layout shapes.
# ---------------------------------------------------------------------------------------------------

def gpt2_layout_shapes(config: GPTConfig) -> dict[str, tuple[int, ...]]:
    """Logical tensor name -> shape in the released layout (Conv1D weights (in, out), no TF leading 1).

    Names: wte, wpe, h{i}.ln_1.g, h{i}.ln_1.b, h{i}.attn.c_attn.w, h{i}.attn.c_attn.b, h{i}.attn.c_proj.w|b,
    h{i}.ln_2.g|b, h{i}.mlp.c_fc.w|b, h{i}.mlp.c_proj.w|b, ln_f.g, ln_f.b.
    """
    V, T, C, F = config.vocab_size, config.context_length, config.emb_dim, config.ff_dim
    shapes = {"wte": (V, C), "wpe": (T, C)}
    for i in range(config.n_layers):
        shapes.update({
            f"h{i}.ln_1.g": (C,), f"h{i}.ln_1.b": (C,),
            f"h{i}.attn.c_attn.w": (C, 3 * C), f"h{i}.attn.c_attn.b": (3 * C,),
            f"h{i}.attn.c_proj.w": (C, C), f"h{i}.attn.c_proj.b": (C,),
            f"h{i}.ln_2.g": (C,), f"h{i}.ln_2.b": (C,),
            f"h{i}.mlp.c_fc.w": (C, F), f"h{i}.mlp.c_fc.b": (F,),
            f"h{i}.mlp.c_proj.w": (F, C), f"h{i}.mlp.c_proj.b": (C,),
        })
    shapes.update({"ln_f.g": (C,), "ln_f.b": (C,)})
    return shapes


# Logical name inside block i (after "h{i}.") -> canonical name inside "blocks.{i}." and whether to transpose.
_BLOCK_MAP = {
    "ln_1.g": ("norm1.scale", False), "ln_1.b": ("norm1.shift", False),
    "attn.c_proj.w": ("att.out_proj.weight", True), "attn.c_proj.b": ("att.out_proj.bias", False),
    "ln_2.g": ("norm2.scale", False), "ln_2.b": ("norm2.shift", False),
    "mlp.c_fc.w": ("ff.fc1.weight", True), "mlp.c_fc.b": ("ff.fc1.bias", False),
    "mlp.c_proj.w": ("ff.fc2.weight", True), "mlp.c_proj.b": ("ff.fc2.bias", False),
}


def _owned_float32(array: np.ndarray, transpose: bool = False) -> np.ndarray:
    """A C-contiguous float32 array that owns its memory (one copy; reads straight from a memory map)."""
    source = array.T if transpose else array
    out = np.empty(source.shape, dtype=np.float32)
    out[...] = source
    return out


def canonical_from_gpt2_layout(read, config: GPTConfig, lm_head: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Canonical params from a reader of the released layout.

    read(logical_name) -> array with the shape gpt2_layout_shapes(config)[logical_name] (already checked).
    lm_head: a separate (V, C) output head, or None for the tied head (out_head.weight is tok_emb.weight).
    """
    C = config.emb_dim
    params = {"tok_emb.weight": _owned_float32(read("wte")), "pos_emb.weight": _owned_float32(read("wpe"))}
    for i in range(config.n_layers):
        block = f"blocks.{i}."
        params[block + "norm1.scale"] = _owned_float32(read(f"h{i}.ln_1.g"))
        params[block + "norm1.shift"] = _owned_float32(read(f"h{i}.ln_1.b"))
        qkv_w = read(f"h{i}.attn.c_attn.w")              # (C, 3C): columns [query | key | value]
        qkv_b = read(f"h{i}.attn.c_attn.b")              # (3C,)
        for k, proj in enumerate(("W_query", "W_key", "W_value")):
            columns = slice(k * C, (k + 1) * C)
            params[f"{block}att.{proj}.weight"] = _owned_float32(qkv_w[:, columns], transpose=True)  # (C, C) (out, in)
            params[f"{block}att.{proj}.bias"] = _owned_float32(qkv_b[columns])
        del qkv_w, qkv_b
        for logical, (canonical, transpose) in _BLOCK_MAP.items():
            params[block + canonical] = _owned_float32(read(f"h{i}.{logical}"), transpose=transpose)
    params["final_norm.scale"] = _owned_float32(read("ln_f.g"))
    params["final_norm.shift"] = _owned_float32(read("ln_f.b"))
    params["out_head.weight"] = params["tok_emb.weight"] if lm_head is None else _owned_float32(lm_head)
    return params


def _gpt2_config(*, vocab_size, context_length, emb_dim, n_heads, n_layers, tie_weights, source) -> GPTConfig:
    """The GPTConfig of a released GPT-2 (qkv_bias, drop_rate 0.0 for inference); errors name `source`."""
    try:
        return GPTConfig(vocab_size=vocab_size, context_length=context_length, emb_dim=emb_dim, n_heads=n_heads,
                         n_layers=n_layers, drop_rate=0.0, qkv_bias=True, tie_weights=tie_weights)
    except ConfigError as error:
        raise WeightsError(f"{source} describes an impossible model: {error}") from error


def _shape_error(file, tensor, got, expected, config_file, config):
    fields = (f"n_vocab/vocab_size={config.vocab_size}, n_ctx={config.context_length}, "
              f"n_embd={config.emb_dim}, n_layer={config.n_layers}")
    return WeightsError(f"{file}: tensor {tensor} has shape {tuple(got)}, but {config_file} ({fields}) implies "
                        f"{tuple(expected)}. The weights and {config_file} come from different models: "
                        f"download the folder again or fix {config_file}")


# ---------------------------------------------------------------------------------------------------
# OpenAI TensorFlow checkpoints
# ---------------------------------------------------------------------------------------------------

def _import_tensorflow():
    # TensorFlow's C++ side logs info lines at import unless told not to before it loads: the level hides
    # most; the oneDNN notice is printed before logging is set up and only turning oneDNN's ops off stops
    # it (nothing is computed in TensorFlow here: it only reads the checkpoint's tensors). A user's own
    # settings keep winning.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    try:
        import tensorflow as tf
    except ImportError as error:
        raise WeightsError('reading OpenAI TensorFlow checkpoints needs TensorFlow: pip install ".[tf]" '
                           '(or pip install tensorflow-cpu), or load a Hugging Face model.safetensors instead') from error
    return tf


def read_hparams(folder: Path) -> dict:
    """hparams.json of an OpenAI folder: {n_vocab, n_ctx, n_embd, n_head, n_layer}."""
    file = Path(folder) / HPARAMS_FILE
    if not file.is_file():
        raise FileNotFoundError(f"missing {file}: an OpenAI GPT-2 folder holds {HPARAMS_FILE} next to "
                                f"{TF_PREFIX}.*; download it again with `gpt2 weights download --size 124M --dir {folder}`")
    try:
        hparams = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise WeightsError(f"{file} is not valid JSON ({error}); download it again") from error
    if not isinstance(hparams, dict):
        raise WeightsError(f"{file} holds a JSON {type(hparams).__name__}, not an object with n_vocab, n_ctx, "
                           f"n_embd, n_head, n_layer; download it again")
    missing = [key for key in ("n_vocab", "n_ctx", "n_embd", "n_head", "n_layer") if key not in hparams]
    if missing:
        raise WeightsError(f"{file} lacks {missing}; it should hold n_vocab, n_ctx, n_embd, n_head, n_layer")
    return hparams


def _openai_tf_name(logical: str) -> str:
    """'h3.attn.c_attn.w' -> 'model/h3/attn/c_attn/w'."""
    return "model/" + logical.replace(".", "/")


def load_openai_checkpoint(folder: str | os.PathLike) -> tuple[GPTConfig, dict[str, np.ndarray]]:
    """(config, params) from OpenAI's released folder (hparams.json + model.ckpt.*), read with TensorFlow."""
    folder = Path(folder)
    if folder.is_file():
        folder = folder.parent
    hparams = read_hparams(folder)
    config = _gpt2_config(vocab_size=hparams["n_vocab"], context_length=hparams["n_ctx"], emb_dim=hparams["n_embd"],
                          n_heads=hparams["n_head"], n_layers=hparams["n_layer"], tie_weights=True,
                          source=folder / HPARAMS_FILE)
    prefix = folder / TF_PREFIX
    index = folder / (TF_PREFIX + ".index")
    if not index.is_file():
        raise FileNotFoundError(f"missing {index}: the OpenAI folder needs {TF_PREFIX}.index and "
                                f"{TF_PREFIX}.data-00000-of-00001; download them again with "
                                f"`gpt2 weights download --dir {folder}`")
    data_files = sorted(folder.glob(TF_PREFIX + ".data-*"))
    if not data_files:
        raise FileNotFoundError(f"missing {prefix}.data-00000-of-00001 next to {index}; download it again with "
                                f"`gpt2 weights download --dir {folder}`")
    tf = _import_tensorflow()
    try:
        reader = tf.train.load_checkpoint(str(prefix))
        stored_shapes = reader.get_variable_to_shape_map()
    except (tf.errors.OpError, ValueError) as error:
        raise WeightsError(f"cannot read the checkpoint index {index} ({_first_line(error)}); the file is "
                           f"truncated or corrupt: download it again") from error

    expected_shapes = gpt2_layout_shapes(config)

    def read(logical):
        name = _openai_tf_name(logical)
        leading_one = logical.endswith(".w")  # TF Conv1D weights are [1, in, out]
        expected = ((1,) if leading_one else ()) + expected_shapes[logical]
        if name not in stored_shapes:
            raise WeightsError(f"{index}: tensor {name} is missing (the checkpoint holds {len(stored_shapes)} "
                               f"variables); the folder is not a GPT-2 checkpoint or is incomplete")
        if tuple(stored_shapes[name]) != expected:
            raise _shape_error(index, name, stored_shapes[name], expected, folder / HPARAMS_FILE, config)
        try:
            value = reader.get_tensor(name)
        except (tf.errors.OpError, IndexError, ValueError) as error:  # a short file raises IndexError
            raise WeightsError(f"{data_files[0]}: cannot read tensor {name} ({_first_line(error)}); the data file "
                               f"is truncated or corrupt: download it again") from error
        return value[0] if leading_one else value

    return config, canonical_from_gpt2_layout(read, config)


# ---------------------------------------------------------------------------------------------------
# Hugging Face safetensors
# ---------------------------------------------------------------------------------------------------

def _hf_key_prefix(keys: list[str]) -> str:
    """'transformer.' when the file uses GPT2LMHeadModel's names, '' for GPT2Model's."""
    return "transformer." if "transformer.wte.weight" in keys else ""


def _hf_tensor_name(logical: str, prefix: str) -> str:
    """'h3.attn.c_attn.w' -> 'transformer.h.3.attn.c_attn.weight'; 'ln_f.g' -> 'ln_f.weight'."""
    if logical in ("wte", "wpe"):
        return f"{prefix}{logical}.weight"
    head, _, leaf = logical.rpartition(".")
    leaf = "bias" if leaf == "b" else "weight"  # LayerNorm gain g and Conv1D w are both `.weight`
    if head[0] == "h" and head[1].isdigit():
        layer, _, rest = head[1:].partition(".")
        head = f"h.{layer}.{rest}"
    return f"{prefix}{head}.{leaf}"


def _is_hf_buffer(key: str) -> bool:
    """The attention-mask buffers some Hub files carry: h.{i}.attn.bias (1,1,T,T) and h.{i}.attn.masked_bias."""
    parts = key.split(".")
    return len(parts) >= 4 and parts[-1] in ("bias", "masked_bias") and parts[-2] == "attn"


def read_hf_config(file: Path) -> dict:
    """A Hugging Face GPT-2 config.json, checked for what this model implements."""
    try:
        values = json.loads(Path(file).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise WeightsError(f"cannot read {file} ({error}); it should be a Hugging Face GPT-2 config.json") from error
    if not isinstance(values, dict):
        raise WeightsError(f"{file} holds a JSON {type(values).__name__}, not a Hugging Face GPT-2 config object")
    if values.get("model_type", "gpt2") != "gpt2":
        raise WeightsError(f"{file} describes a {values['model_type']!r} model; only GPT-2 weights load here")
    activation = values.get("activation_function", "gelu_new")
    if activation not in ("gelu_new", "gelu_pytorch_tanh"):
        raise WeightsError(f"{file}: activation_function {activation!r} differs from GPT-2's tanh GELU (gelu_new) "
                           f"that both backends implement")
    eps = values.get("layer_norm_epsilon", 1e-5)
    if abs(eps - 1e-5) > 1e-12:
        raise WeightsError(f"{file}: layer_norm_epsilon {eps} differs from the 1e-5 both backends use")
    missing = [key for key in ("n_embd", "n_head", "n_layer") if key not in values]
    if missing or not ({"vocab_size", "n_vocab"} & set(values)) or not ({"n_positions", "n_ctx"} & set(values)):
        raise WeightsError(f"{file} lacks GPT-2 fields: needs vocab_size, n_positions, n_embd, n_head, n_layer")
    return values


def _infer_hf_config(weights: SafetensorsFile, prefix: str, tie_weights: bool) -> GPTConfig:
    """Config from tensor shapes alone (a bare .safetensors file): needs a standard GPT-2 width for H."""
    for key in ("wte.weight", "wpe.weight"):
        if prefix + key not in weights.keys:
            raise WeightsError(f"{weights.path}: tensor {prefix + key} is missing; this is not a GPT-2 file")
    V, C = weights.shape(prefix + "wte.weight")
    T = weights.shape(prefix + "wpe.weight")[0]
    layers = {int(key[len(prefix):].split(".")[1]) for key in weights.keys if key[len(prefix):].startswith("h.")}
    if C not in HEADS_BY_WIDTH:
        raise WeightsError(f"{weights.path}: width {C} is not a released GPT-2 size, so the number of heads is unknown; "
                           f"put the model's {HF_CONFIG_FILE} next to the file")
    return _gpt2_config(vocab_size=V, context_length=T, emb_dim=C, n_heads=HEADS_BY_WIDTH[C], n_layers=len(layers),
                        tie_weights=tie_weights, source=weights.path)


def load_hf_safetensors(path: str | os.PathLike) -> tuple[GPTConfig, dict[str, np.ndarray]]:
    """(config, params) from a Hugging Face GPT-2 folder (config.json + model.safetensors) or .safetensors file.

    Accepts keys with or without `transformer.`, ignores the attn.bias / attn.masked_bias buffers, and ties
    the head when lm_head.weight is absent or equal to wte (GPT-2's released weights always are).
    """
    path = Path(path)
    file = path / HF_WEIGHTS_FILE if path.is_dir() else path
    config_file = file.parent / HF_CONFIG_FILE
    if not file.is_file():
        others = sorted(p.name for p in file.parent.glob("*.bin")) if path.is_dir() else []
        hint = (f"; found {others}: pickled PyTorch files are never loaded (unsafe), convert them to "
                f"safetensors" if others else "")
        raise FileNotFoundError(f"missing {file}: a Hugging Face GPT-2 folder needs {HF_CONFIG_FILE} + "
                                f"{HF_WEIGHTS_FILE}{hint}")
    with SafetensorsFile(file) as weights:
        prefix = _hf_key_prefix(weights.keys)
        head_key = "lm_head.weight" if "lm_head.weight" in weights.keys else None
        if head_key is None and prefix + "lm_head.weight" in weights.keys:
            head_key = prefix + "lm_head.weight"
        lm_head = None
        if head_key is not None and not np.array_equal(weights.array(head_key), weights.array(prefix + "wte.weight")):
            lm_head = weights.array(head_key)
        tie = lm_head is None
        if config_file.is_file():
            values = read_hf_config(config_file)
            config = _gpt2_config(vocab_size=values.get("vocab_size", values.get("n_vocab")),
                                  context_length=values.get("n_positions", values.get("n_ctx")),
                                  emb_dim=values["n_embd"], n_heads=values["n_head"], n_layers=values["n_layer"],
                                  tie_weights=tie, source=config_file)
        else:
            config = _infer_hf_config(weights, prefix, tie)
        expected_shapes = gpt2_layout_shapes(config)
        wanted = {_hf_tensor_name(logical, prefix): logical for logical in expected_shapes}
        unknown = [key for key in weights.keys
                   if key not in wanted and key != head_key and not _is_hf_buffer(key)]
        if unknown:
            raise WeightsError(f"{file}: unexpected tensors {unknown[:5]} for a {config.n_layers}-layer GPT-2 "
                               f"described by {config_file.name if config_file.is_file() else 'the tensor shapes'}; "
                               f"the file and the config come from different models")
        if lm_head is not None and lm_head.shape != (config.vocab_size, config.emb_dim):
            raise _shape_error(file, head_key, lm_head.shape, (config.vocab_size, config.emb_dim), config_file, config)

        def read(logical):
            key = _hf_tensor_name(logical, prefix)
            if key not in weights.keys:
                raise WeightsError(f"{file}: tensor {key} is missing; the file is incomplete or not GPT-2")
            if weights.shape(key) != expected_shapes[logical]:
                raise _shape_error(file, key, weights.shape(key), expected_shapes[logical], config_file, config)
            return weights.array(key)

        params = canonical_from_gpt2_layout(read, config, lm_head=lm_head)
    return config, params
