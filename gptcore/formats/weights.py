"""Weights in every format, read and written in one place: OpenAI TF checkpoints, Hugging Face safetensors,
our checkpoints and run folders.

    config, params = load_weights(path)
    save_weights(path, config, params, format="huggingface")     # or "checkpoint" (default), "openai"

`path` may be
- an OpenAI folder (what `gpt2 weights download` fetches): hparams.json + model.ckpt.{index,data-*}
  with TF variables model/wte, model/wpe, model/h{i}/ln_1/g ..., model/ln_f/b;
- a Hugging Face GPT-2 folder (config.json + model.safetensors) or the .safetensors file itself,
  keys with or without the `transformer.` prefix;
- one of our own checkpoints (gptcore/formats/checkpoint.py), folder or model.safetensors;
- one of our run folders: a finetuning run's model/, else a training run's newest checkpoints/step-*.

This module handles the containers (files, TF's reader, safetensors, config files); the names and shapes
inside a released model are its architecture's release layout (RELEASE_LAYOUTS, e.g.
gptcore/formats/gpt2_release.py: Conv1D weights (in, out), query/key/value fused into c_attn), whose shapes
come from gptcore.arch.param_shapes(config). Loaded params are float32, C-contiguous, one array per name,
with out_head.weight the same object as tok_emb.weight when the head is tied (GPT-2's always is). The config
has qkv_bias=True, context_length and vocab_size from the files, and drop_rate=0.0: dropout is a training
choice, not part of the weights, and 0.0 is the right value for inference; finetuning sets it with
config.replace(drop_rate=0.1).

Memory: tensors are read one at a time, straight from the file (TF's reader, or a read-only memory map
of the safetensors data), so loading gpt2-xl holds the final params plus one tensor in flight.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gptcore.arch import spec_for
from gptcore.config import GPTConfig
from gptcore.fileio import atomic_write_json
from gptcore.formats import gpt2_release, llama_release
from gptcore.formats.checkpoint import (CheckpointError, is_checkpoint, load_checkpoint, read_checkpoint_metadata,
                                       recover_interrupted_save, save_checkpoint)
from gptcore.formats.gguf import chat_template as gguf_chat_template
from gptcore.formats.gguf import is_gguf, load_gguf, load_gguf_tokenizer, open_gguf
from gptcore.formats.hf_tokenizer import has_hf_tokenizer, load_hf_chat_template, load_hf_tokenizer
from gptcore.formats.runs import WeightsSource, corrupt_checkpoint_hint, resolve_weights
from gptcore.formats.safetensors import SafetensorsFile, WeightsError, _first_line, write_safetensors

HPARAMS_FILE = "hparams.json"
HF_CONFIG_FILE = "config.json"
HF_WEIGHTS_FILE = "model.safetensors"
TF_PREFIX = "model.ckpt"
TF_POINTER_FILE = "checkpoint"   # TF's text file naming the latest model.ckpt

# The release layouts (names, shapes, the map to canonical params) by architecture; a Llama layout module
# with the same functions goes beside gpt2_release. OpenAI released GPT-2 only; a Hugging Face config.json
# names its layout by model_type, and a bare .safetensors file without one is read as GPT-2.
RELEASE_LAYOUTS = {gpt2_release.ARCH: gpt2_release}
HF_LAYOUTS = {layout.HF_MODEL_TYPE: layout for layout in RELEASE_LAYOUTS.values()}
OPENAI_LAYOUT = gpt2_release
BARE_HF_LAYOUT = gpt2_release


def load_weights(path: str | os.PathLike) -> tuple[GPTConfig, dict[str, np.ndarray]]:
    """(config, params) from an OpenAI folder, a Hugging Face folder/file (GPT-2 or Llama), a GGUF file, one of
    our checkpoints or runs, or a pretrained model's manifest name (smollm2-135m-instruct)."""
    source = resolve_weights(path)
    kind = detect_format(source.path)
    if kind == "openai":
        return load_openai_checkpoint(source.path)
    if kind == "gguf":
        return load_gguf(source.path)
    if kind == "huggingface":
        if llama_release.is_hf_llama(source.path):
            return llama_release.load_hf_llama(source.path)
        return load_hf_safetensors(source.path)
    return _load_our_checkpoint(source)


def _load_our_checkpoint(source: WeightsSource) -> tuple[GPTConfig, dict[str, np.ndarray]]:
    """load_checkpoint's weights; a run's checkpoint that does not load names the run's older good one."""
    try:
        config, params, _ = load_checkpoint(source.path, load_training_state=False)
    except (CheckpointError, WeightsError, FileNotFoundError) as error:
        hint = corrupt_checkpoint_hint(source)
        if not hint:
            raise
        raise CheckpointError(f"{error}{hint}") from error
    return config, params


def load_language_model(path: str | os.PathLike) -> tuple[GPTConfig, dict[str, np.ndarray]]:
    """load_weights for what predicts tokens (generation, pretraining, instruction finetuning): a classifier
    is refused first (check_language_model), with the command that uses it."""
    check_language_model(path)
    return load_weights(path)


def check_language_model(path: str | os.PathLike) -> None:
    """WeightsError when `path` (any path load_weights takes) holds one of our classifiers: its head predicts
    labels, not tokens. Reads only the checkpoint's header."""
    source = resolve_weights(path)
    if not is_checkpoint(source.path):
        return
    try:
        metadata = read_checkpoint_metadata(source.path)
    except (CheckpointError, OSError):
        return    # a corrupt header: load_weights says what is wrong
    if metadata.get("task") == "classification":
        labels = ", ".join(map(str, metadata.get("labels", [])))
        raise WeightsError(f"{source.describe()} is a text classifier (labels: {labels}) made by `gpt2 finetune "
                           f"classify`, not a language model; label messages with it through "
                           f"`gpt2 classify --checkpoint {path}`, or give the weights of a language model")


@dataclass(frozen=True)
class WeightsTokenizer:
    """The tokenizer that goes with some weights, their chat template (None: none), whose it is (messages), and
    whether the weights carry it (False: GPT-2's, which GPT-2-format weights imply)."""
    tokenizer: object
    chat_template: str | None
    source: str
    carried: bool = True


def load_weights_tokenizer(path: str | os.PathLike) -> WeightsTokenizer:
    """The tokenizer of the weights at `path` (any path load_weights takes): a GGUF file's own BPE and chat
    template; a Hugging Face folder's tokenizer.json and tokenizer_config.json; else GPT-2's (tiktoken), the
    tokenizer of every GPT-2-format model (OpenAI's files, our checkpoints and runs). A Hugging Face Llama folder
    without a tokenizer.json is a FileNotFoundError: its ids mean nothing in GPT-2's vocabulary."""
    from gptcore.tokenizer import get_tokenizer

    resolved = resolve_weights_path(path)
    kind = detect_format(resolved)
    if kind == "gguf":
        reader = open_gguf(resolved)
        return WeightsTokenizer(load_gguf_tokenizer(resolved, reader), gguf_chat_template(resolved, reader),
                                f"the tokenizer of {resolved.name}")
    if kind == "huggingface" and has_hf_tokenizer(resolved):
        folder = resolved if resolved.is_dir() else resolved.parent
        return WeightsTokenizer(load_hf_tokenizer(folder), load_hf_chat_template(folder),
                                f"the tokenizer.json of {folder}")
    if kind == "huggingface" and llama_release.is_hf_llama(resolved):
        raise FileNotFoundError(f"{resolved} is a Hugging Face Llama folder without a tokenizer.json: copy the "
                                f"model's tokenizer.json and tokenizer_config.json next to its config.json, or "
                                f"give the model's GGUF file")
    return WeightsTokenizer(get_tokenizer("tiktoken"), None, "GPT-2's tokenizer", carried=False)


def resolve_weights_path(path: str | os.PathLike) -> Path:
    """A run folder -> the checkpoint it stands for (gptcore.formats.runs.resolve_weights); any other path as
    it is.

    Needed before detect_format: a run folder holds a config.json (the run's settings) that would
    otherwise pass for a Hugging Face folder. A pretrained model's name in the data manifest
    (`smollm2-135m-instruct`) stands for its verified file in the data dir (`gpt2 weights download NAME`).
    """
    return resolve_weights(path).path


def detect_format(path: Path) -> str:
    """'openai', 'huggingface', 'gguf' or 'checkpoint' (ours), from the files present; WeightsError otherwise."""
    path = Path(path)
    if recover_interrupted_save(path):   # a save of ours stopped between its two renames: put it back
        return "checkpoint"
    if not path.exists():
        raise FileNotFoundError(f"no weights at {path}: give an OpenAI folder (run `gpt2 weights download "
                                f"--size 124M`), a Hugging Face folder or a .safetensors file")
    if is_checkpoint(path):
        return "checkpoint"
    if path.is_file():
        if is_gguf(path):
            return "gguf"
        if path.suffix == ".safetensors":
            return "huggingface"
        if path.name.startswith(TF_PREFIX) or path.name in (HPARAMS_FILE, TF_POINTER_FILE):
            return "openai"  # a file inside an OpenAI folder: load the folder
        raise WeightsError(f"{path} is not a weights file: expected a .safetensors file or a folder with "
                           f"{HPARAMS_FILE} + {TF_PREFIX}.* or {HF_CONFIG_FILE} + {HF_WEIGHTS_FILE}")
    if (path / HPARAMS_FILE).is_file() or any(path.glob(TF_PREFIX + ".*")):
        return "openai"
    if (path / HF_WEIGHTS_FILE).is_file() or (path / HF_CONFIG_FILE).is_file() \
            or (path / llama_release.HF_INDEX_FILE).is_file():
        return "huggingface"
    found = sorted(p.name for p in path.iterdir())[:10]
    raise WeightsError(f"unknown weights layout in {path}: expected {HPARAMS_FILE} + {TF_PREFIX}.* (OpenAI) or "
                       f"{HF_CONFIG_FILE} + {HF_WEIGHTS_FILE} (Hugging Face) in {path}, found {found}")


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
    missing = [key for key in OPENAI_LAYOUT.HPARAMS_KEYS if key not in hparams]
    if missing:
        raise WeightsError(f"{file} lacks {missing}; it should hold n_vocab, n_ctx, n_embd, n_head, n_layer")
    return hparams


def load_openai_checkpoint(folder: str | os.PathLike) -> tuple[GPTConfig, dict[str, np.ndarray]]:
    """(config, params) from OpenAI's released folder (hparams.json + model.ckpt.*), read with TensorFlow."""
    folder = Path(folder)
    if folder.is_file():
        folder = folder.parent
    layout = OPENAI_LAYOUT
    config = layout.config_from_hparams(read_hparams(folder), source=folder / HPARAMS_FILE)
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

    expected_shapes = layout.layout_shapes(config)

    def read(logical):
        name = layout.openai_tf_name(logical)
        leading_one = layout.is_conv1d_weight(logical)  # TF Conv1D weights are [1, in, out]
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

    return config, layout.canonical_from_layout(read, config)


def save_openai_checkpoint(folder: str | os.PathLike, config: GPTConfig, params: dict[str, np.ndarray]) -> Path:
    """Write `params` as OpenAI's released folder: hparams.json + model.ckpt.{index,data-*,meta} + checkpoint,
    TF1 variables saved by tf.compat.v1.train.Saver in graph mode as OpenAI's code did (needs TensorFlow).
    Only a tied head fits (the release has no separate one). Returns the folder."""
    folder = Path(folder)
    if not config.tie_weights:
        raise WeightsError("OpenAI's GPT-2 layout has no separate output head; this model's head is untied "
                           "(tie_weights=False): save it as a Hugging Face folder or as our checkpoint")
    tensors = OPENAI_LAYOUT.layout_from_canonical(params, config)
    tf = _import_tensorflow()
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / HPARAMS_FILE, OPENAI_LAYOUT.hparams_from_config(config))
    with tf.Graph().as_default():
        variables = [tf.compat.v1.Variable(value[None] if OPENAI_LAYOUT.is_conv1d_weight(logical) else value,
                                           name=OPENAI_LAYOUT.openai_tf_name(logical))
                     for logical, value in tensors.items()]
        saver = tf.compat.v1.train.Saver(variables)
        with tf.compat.v1.Session() as session:
            session.run(tf.compat.v1.global_variables_initializer())
            saver.save(session, str(folder / TF_PREFIX))
    return folder


# ---------------------------------------------------------------------------------------------------
# Hugging Face safetensors
# ---------------------------------------------------------------------------------------------------

def read_hf_config(file: Path) -> dict:
    """A Hugging Face config.json, checked for a model_type with a release layout here and for what the
    layout's model implements (its check_hf_config)."""
    try:
        values = json.loads(Path(file).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise WeightsError(f"cannot read {file} ({error}); it should be a Hugging Face GPT-2 config.json") from error
    if not isinstance(values, dict):
        raise WeightsError(f"{file} holds a JSON {type(values).__name__}, not a Hugging Face GPT-2 config object")
    _hf_layout(values, file).check_hf_config(values, file)
    return values


def _hf_layout(values: dict, file: Path):
    """The release layout of a Hugging Face config.json's model_type (GPT-2 when it names none)."""
    model_type = values.get("model_type", gpt2_release.HF_MODEL_TYPE)
    if model_type not in HF_LAYOUTS:
        names = " or ".join(layout.DISPLAY_NAME for layout in HF_LAYOUTS.values())
        raise WeightsError(f"{file} describes a {model_type!r} model; only {names} weights load here")
    return HF_LAYOUTS[model_type]


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
    values = read_hf_config(config_file) if config_file.is_file() else None
    layout = _hf_layout(values, config_file) if values is not None else BARE_HF_LAYOUT
    with SafetensorsFile(file) as weights:
        prefix = layout.hf_key_prefix(weights.keys)
        embedding_key = layout.hf_tensor_name(layout.EMBEDDING, prefix)
        head_key = layout.HF_HEAD if layout.HF_HEAD in weights.keys else None
        if head_key is None and prefix + layout.HF_HEAD in weights.keys:
            head_key = prefix + layout.HF_HEAD
        lm_head = None
        if head_key is not None and not (embedding_key in weights.keys
                                         and np.array_equal(weights.array(head_key), weights.array(embedding_key))):
            lm_head = weights.array(head_key)
        tie = lm_head is None
        if values is not None:
            config = layout.config_from_hf(values, tie, source=config_file)
        else:
            config = layout.config_from_hf_tensors(weights.shape, weights.keys, prefix, tie, source=weights.path)
        expected_shapes = layout.layout_shapes(config)
        wanted = {layout.hf_tensor_name(logical, prefix): logical for logical in expected_shapes}
        unknown = [key for key in weights.keys
                   if key not in wanted and key != head_key and not layout.is_hf_buffer(key)]
        if unknown:
            raise WeightsError(f"{file}: unexpected tensors {unknown[:5]} for a {config.n_layers}-layer "
                               f"{layout.DISPLAY_NAME} described by "
                               f"{config_file.name if config_file.is_file() else 'the tensor shapes'}; "
                               f"the file and the config come from different models")
        if lm_head is not None and lm_head.shape != (config.vocab_size, config.emb_dim):
            raise _shape_error(file, head_key, lm_head.shape, (config.vocab_size, config.emb_dim), config_file, config)

        def read(logical):
            key = layout.hf_tensor_name(logical, prefix)
            if key not in weights.keys:
                raise WeightsError(f"{file}: tensor {key} is missing; the file is incomplete or not "
                                   f"{layout.DISPLAY_NAME}")
            if weights.shape(key) != expected_shapes[logical]:
                raise _shape_error(file, key, weights.shape(key), expected_shapes[logical], config_file, config)
            return weights.array(key)

        params = layout.canonical_from_layout(read, config, lm_head=lm_head)
    return config, params


def save_hf_safetensors(folder: str | os.PathLike, config: GPTConfig, params: dict[str, np.ndarray]) -> Path:
    """Write `params` as a Hugging Face folder: config.json + model.safetensors under the names
    transformers' model class of the architecture saves (GPT2LMHeadModel: transformer.h.0.attn.c_attn.weight,
    ...), the head as lm_head.weight only when untied. Each file is written atomically; returns the folder."""
    if config.arch == llama_release.ARCH:
        return llama_release.save_hf_llama(folder, config, params)
    layout = RELEASE_LAYOUTS.get(config.arch)
    if layout is None:
        raise WeightsError(f"no Hugging Face layout for architecture {config.arch!r} here")
    tensors = {layout.hf_tensor_name(logical, layout.HF_PREFIX): value
               for logical, value in layout.layout_from_canonical(params, config).items()}
    head, _ = spec_for(config).TIED_HEAD
    if not config.tie_weights:
        tensors[layout.HF_HEAD] = np.ascontiguousarray(params[head])
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    temp = folder / f".{HF_WEIGHTS_FILE}.tmp"
    write_safetensors(temp, tensors, metadata={"format": "pt"})   # transformers reads files marked "pt"
    os.replace(temp, folder / HF_WEIGHTS_FILE)
    atomic_write_json(folder / HF_CONFIG_FILE, layout.hf_config_from_config(config))
    return folder


# ---------------------------------------------------------------------------------------------------
# Writing: the twin of load_weights
# ---------------------------------------------------------------------------------------------------

SAVE_FORMATS = ("checkpoint", "huggingface", "openai")


def save_weights(path: str | os.PathLike, config: GPTConfig, params: dict[str, np.ndarray], *,
                 format: str = "checkpoint", metadata: dict | None = None) -> Path:
    """Write (config, params) at `path` in `format`, so that load_weights(path) gives them back; returns the path.

    format: 'checkpoint' (ours: any params our loaders check, metadata kept; gptcore.formats.checkpoint),
    'huggingface' (config.json + model.safetensors) or 'openai' (hparams.json + TF model.ckpt.*, needs
    TensorFlow). The released formats hold a language model of their architecture only, and no metadata.
    """
    if format == "checkpoint":
        return save_checkpoint(path, params, config, metadata=metadata)
    if format not in SAVE_FORMATS:
        raise ValueError(f"unknown weights format {format!r}; choose one of {', '.join(SAVE_FORMATS)}")
    if metadata:
        raise ValueError(f"the {format} format has no place for metadata; save it as our checkpoint to keep it")
    if format == "huggingface":
        return save_hf_safetensors(path, config, params)
    return save_openai_checkpoint(path, config, params)
