"""Our checkpoint format: safetensors + JSON, written atomically, loadable by both backends.

A checkpoint is a folder:

    config.json                  {"format": "gpt2-twice-checkpoint", "format_version": 1, "config": {...GPTConfig},
                                  "param_order": [...], "aliases": {"out_head.weight": "tok_emb.weight"},
                                  "metadata": {...}}
    model.safetensors            every parameter once (a tied head is stored under its first name only;
                                  `aliases` restores it as the same array); its header metadata repeats the
                                  config and the metadata, so the file alone is self-describing
    training_state.json          optional: the training state's JSON-able part (step, scheduler, RNG states,
                                  optimizer hyperparameters); arrays are replaced by {"__array__": "<key>"}
    training_state.safetensors   optional: the training state's arrays under those keys
                                  (optimizer/m/<param name>, optimizer/v/<param name>, rng/torch_cpu, ...)

The training state is a nested dict of JSON values and NumPy arrays; the convention both backends use:

    {"step": int,                                     # optimizer steps taken
     "optimizer": {"t": int, "m": {name: array}, "v": {name: array},   # AdamW moments by parameter name
                   "lr": float, "betas": [b1, b2], "eps": float, "weight_decay": float},
     "scheduler": {...} or None,                      # JSON-able schedule state
     "rng": {"numpy": Generator.bit_generator.state, "torch_cpu": uint8 array, ...}}

npgpt's AdamW.state_dict() is the "optimizer" entry as is; torchgpt/checkpoint.py converts a torch
optimizer's per-parameter exp_avg / exp_avg_sq to and from it, so a checkpoint saved by one backend
resumes in the other. Tuples come back as lists.

Safety: only safetensors and JSON are read; nothing is unpickled.
Atomicity: everything is written into a temporary folder next to the target, fsynced, then moved into place
with os.replace; an existing checkpoint is swapped out only after the new one is complete.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from gptcore.arch import param_shapes
from gptcore.config import ConfigError, GPTConfig
from gptcore.fileio import atomic_write_json
from gptcore.formats.safetensors import SafetensorsFile, WeightsError, read_safetensors, write_safetensors
from gptcore.lora import check_adapters, is_adapter_name
from gptcore.params import check_param_shapes, unique_arrays
from gptcore.tasks.classification import HEAD_NAMES, classifier_param_shapes

CHECKPOINT_FORMAT = "gpt2-twice-checkpoint"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
MODEL_FILE = "model.safetensors"
STATE_JSON_FILE = "training_state.json"
STATE_TENSORS_FILE = "training_state.safetensors"
_ARRAY_TAG = "__array__"


class CheckpointError(ValueError):
    """A checkpoint that cannot be written or read; the message names the file and the fix."""


def _read_safetensors(file: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """read_safetensors with its format errors as CheckpointError."""
    try:
        return read_safetensors(file)
    except WeightsError as error:
        raise CheckpointError(str(error)) from error


# ---------------------------------------------------------------------------------------------------
# safetensors writing, streamed (no second copy of the model in memory)
# ---------------------------------------------------------------------------------------------------

# ---------------------------------------------------------------------------------------------------
# the training state: nested JSON + arrays <-> (JSON tree, flat array dict)
# ---------------------------------------------------------------------------------------------------

def split_arrays(tree, path: str = "") -> tuple[object, dict[str, np.ndarray]]:
    """(JSON-able tree with {"__array__": key} placeholders, {key: array}); keys are '/'-joined paths."""
    arrays: dict[str, np.ndarray] = {}

    def walk(node, where):
        if isinstance(node, np.ndarray):
            arrays[where] = node
            return {_ARRAY_TAG: where}
        if isinstance(node, np.generic):
            return node.item()
        if isinstance(node, dict):
            out = {}
            for key, value in node.items():
                if not isinstance(key, str):
                    raise CheckpointError(f"training state key {key!r} at {where or '/'} is not a string; "
                                          f"JSON keys must be strings")
                out[key] = walk(value, f"{where}/{key}" if where else key)
            return out
        if isinstance(node, (list, tuple)):
            return [walk(value, f"{where}/{i}" if where else str(i)) for i, value in enumerate(node)]
        if node is None or isinstance(node, (bool, int, float, str)):
            return node
        raise CheckpointError(f"training state entry {where or '/'} has type {type(node).__name__}, which is "
                              f"neither JSON nor a NumPy array; convert it (e.g. .tolist() or np.asarray)")

    return walk(tree, path), arrays


def join_arrays(tree, arrays: dict[str, np.ndarray]):
    """Inverse of split_arrays: put the arrays back where their placeholders are."""
    if isinstance(tree, dict):
        if set(tree) == {_ARRAY_TAG}:
            key = tree[_ARRAY_TAG]
            if key not in arrays:
                raise CheckpointError(f"{STATE_TENSORS_FILE} lacks tensor {key} named in {STATE_JSON_FILE}; "
                                      f"the checkpoint is incomplete")
            return arrays[key]
        return {key: join_arrays(value, arrays) for key, value in tree.items()}
    if isinstance(tree, list):
        return [join_arrays(value, arrays) for value in tree]
    return tree


# ---------------------------------------------------------------------------------------------------
# save / load
# ---------------------------------------------------------------------------------------------------

def _aliases(params: dict[str, np.ndarray]) -> dict[str, str]:
    """Names whose array is the same object as an earlier name's: {alias: first name}."""
    first_name = {id(value): name for name, value in reversed(list(params.items()))}
    return {name: first_name[id(value)] for name, value in params.items() if first_name[id(value)] != name}


_PREVIOUS = "previous"   # inside .<name>.old-*/ : the checkpoint being swapped out


def _fsync_dir(folder: Path) -> None:
    """Make a folder's entries (new names, renames) durable; a no-op where folders cannot be opened."""
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


def _swapped_out(target: Path) -> list[Path]:
    """Complete checkpoints left in .<name>.old-*/previous by a save that stopped between its two renames."""
    return sorted((p for p in target.parent.glob(f".{target.name}.old-*/{_PREVIOUS}") if is_checkpoint(p)),
                  key=lambda p: p.stat().st_mtime)


def recover_interrupted_save(target: str | os.PathLike) -> bool:
    """Put back the newest swapped-out checkpoint when `target` is missing; True when one was restored."""
    target = Path(target)
    if target.exists():
        return False
    candidates = _swapped_out(target)
    if not candidates:
        return False
    os.replace(candidates[-1], target)
    shutil.rmtree(candidates[-1].parent, ignore_errors=True)
    _fsync_dir(target.parent)
    return True


def _replace_dir_atomically(build, target: Path) -> Path:
    """build(tmp_dir) writes the files; the finished folder then takes `target`'s place.

    A folder cannot be swapped with one atomic rename when the target exists, so the old checkpoint is
    first renamed to .<name>.old-*/previous and the new one renamed into place: at every moment a complete
    checkpoint exists under one of the two names, and a load that finds `target` missing restores the
    swapped-out one (recover_interrupted_save). A failure while building leaves the old checkpoint untouched.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    recover_interrupted_save(target)
    if target.exists() and not is_checkpoint(target) and (target.is_file() or any(target.iterdir())):
        raise CheckpointError(f"{target} exists and is not a checkpoint; refusing to replace it. "
                              f"Choose another path or remove it yourself")
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    try:
        build(tmp)
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0o700
        _fsync_dir(tmp)
        if target.exists():
            old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old-"))
            try:
                os.replace(target, old / _PREVIOUS)
                try:
                    os.replace(tmp, target)
                except BaseException:
                    os.replace(old / _PREVIOUS, target)   # put the old checkpoint back
                    raise
            finally:
                if target.exists():   # the new or the restored old checkpoint is in place
                    shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def save_checkpoint(path: str | os.PathLike, params: dict[str, np.ndarray], config: GPTConfig, *,
                    training_state: dict | None = None, metadata: dict | None = None,
                    extra_json: dict[str, object] | None = None) -> Path:
    """Write params (+ training state) as a checkpoint folder at `path`, atomically; returns the path.

    params: canonical name -> array (any float dtype is kept as is); a tied array is stored once.
    training_state: nested dict of JSON values and arrays (see the module docstring), or None.
    metadata: JSON-able information for people (run name, data, git commit, ...).
    extra_json: file name -> JSON value, more files in the folder, written with the rest (a classifier's
    tokenizer: gptcore/tasks/classification_tokenizer.py).
    """
    reserved = {CONFIG_FILE, MODEL_FILE, STATE_JSON_FILE, STATE_TENSORS_FILE}
    for name in extra_json or {}:
        if name in reserved or Path(name).name != name:
            raise CheckpointError(f"extra file name {name!r} must be a plain file name other than {sorted(reserved)}")
    path = Path(path)
    aliases = _aliases(params)
    stored = {name: value for name, value in unique_arrays(params)}
    header = {"format": CHECKPOINT_FORMAT, "format_version": FORMAT_VERSION, "config": config.to_dict(),
              "param_order": list(params), "aliases": aliases, "metadata": metadata or {}}
    try:
        json.dumps(header)
    except TypeError as error:
        raise CheckpointError(f"checkpoint metadata must be JSON-able: {error}") from error
    state_tree, state_arrays = split_arrays(training_state) if training_state is not None else (None, {})

    def build(folder: Path):
        write_safetensors(folder / MODEL_FILE, stored, metadata={
            "format": CHECKPOINT_FORMAT, "config": json.dumps(config.to_dict()), "aliases": json.dumps(aliases),
            "param_order": json.dumps(list(params)), "metadata": json.dumps(metadata or {})})
        atomic_write_json(folder / CONFIG_FILE, header)
        if training_state is not None:
            write_safetensors(folder / STATE_TENSORS_FILE, state_arrays)
            atomic_write_json(folder / STATE_JSON_FILE, {"format": CHECKPOINT_FORMAT, "state": state_tree})
        for name, value in (extra_json or {}).items():
            atomic_write_json(folder / name, value, indent=None)   # large lists (a vocabulary): one line

    return _replace_dir_atomically(build, path)


def is_checkpoint(path: str | os.PathLike) -> bool:
    """True for one of our checkpoint folders, or a model.safetensors written by save_checkpoint.

    A folder counts when its config.json or its model.safetensors header says so (a corrupt config.json
    then gets load_checkpoint's error about the checkpoint, not a Hugging Face loader's).
    """
    path = Path(path)
    if path.is_dir():
        try:
            values = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
            if isinstance(values, dict) and values.get("format") == CHECKPOINT_FORMAT:
                return True
        except (OSError, ValueError):
            pass
        return _safetensors_says_ours(path / MODEL_FILE)
    return path.suffix == ".safetensors" and _safetensors_says_ours(path)


def _safetensors_says_ours(file: Path) -> bool:
    """The header metadata of a .safetensors file names our format (reads only the header)."""
    try:
        with open(file, "rb") as handle:
            size = int.from_bytes(handle.read(8), "little")
            if size > 100_000_000:
                return False
            header = json.loads(handle.read(size))
        return header.get("__metadata__", {}).get("format") == CHECKPOINT_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _read_header(path: Path) -> tuple[dict, Path]:
    """(config.json values, model file) for a checkpoint folder or a bare model.safetensors of ours."""
    if path.is_file():
        try:
            with SafetensorsFile(path) as source:
                meta = source.metadata
        except WeightsError as error:
            raise CheckpointError(str(error)) from error
        try:
            return {"config": json.loads(meta["config"]), "aliases": json.loads(meta.get("aliases", "{}")),
                    "param_order": json.loads(meta.get("param_order", "[]")),
                    "metadata": json.loads(meta.get("metadata", "{}"))}, path
        except (KeyError, ValueError) as error:
            raise CheckpointError(f"{path}: the header metadata lacks a valid config ({error}); save the "
                                  f"checkpoint again") from error
    file = path / CONFIG_FILE
    recover_interrupted_save(path)
    if not file.is_file():
        raise FileNotFoundError(f"missing {file}: {path} is not a checkpoint folder (save one with save_checkpoint)")
    try:
        values = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{file} is not valid JSON ({error}); the checkpoint is corrupt: save it again or "
                              f"use an earlier checkpoint") from error
    if not isinstance(values, dict) or values.get("format") != CHECKPOINT_FORMAT:
        values = values if isinstance(values, dict) else {}
        raise CheckpointError(f"{file} is not one of our checkpoints (format {values.get('format')!r}); "
                              f"give released weights (OpenAI, Hugging Face) with --weights, or convert them with "
                              f"`gpt2 weights convert`")
    if values.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{file} has format_version {values['format_version']}, newer than this code "
                              f"reads ({FORMAT_VERSION}); update the package")
    return values, path / MODEL_FILE


def load_checkpoint(path: str | os.PathLike, *, load_training_state: bool = True
                    ) -> tuple[GPTConfig, dict[str, np.ndarray], dict | None]:
    """(config, params, training_state or None) from a checkpoint folder (or its model.safetensors).

    Tied names come back as one shared array (params["out_head.weight"] is params["tok_emb.weight"]).
    """
    path = Path(path)
    header, model_file = _read_header(path)
    try:
        config = GPTConfig.from_dict(header["config"])
    except (ConfigError, TypeError, KeyError, AttributeError) as error:
        raise CheckpointError(f"{model_file.parent / CONFIG_FILE}: invalid or missing config ({error}); the "
                              f"checkpoint is corrupt") from error
    tensors, _ = _read_safetensors(model_file)
    aliases = header.get("aliases", {})
    for alias, target in aliases.items():
        if target not in tensors:
            raise CheckpointError(f"{model_file}: tensor {target} (shared by {alias}) is missing; the file is incomplete")
        tensors[alias] = tensors[target]
    order = header.get("param_order") or list(tensors)
    missing = [name for name in order if name not in tensors]
    if missing:
        raise CheckpointError(f"{model_file}: tensors {missing[:5]} are missing; the file is incomplete")
    params = {name: tensors[name] for name in order}
    params.update({name: value for name, value in tensors.items() if name not in params})
    check_checkpoint_tensors(params, config, header.get("metadata", {}), model_file)

    training_state = None
    state_json = model_file.parent / STATE_JSON_FILE
    if load_training_state and path.is_dir() and state_json.is_file():
        try:
            tree = json.loads(state_json.read_text(encoding="utf-8"))["state"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as error:
            raise CheckpointError(f"{state_json} is not a valid training state ({error}); the checkpoint is "
                                  f"corrupt") from error
        arrays, _ = _read_safetensors(model_file.parent / STATE_TENSORS_FILE)
        training_state = join_arrays(tree, arrays)
    return config, params, training_state


def check_checkpoint_tensors(params: dict[str, np.ndarray], config: GPTConfig, metadata: dict, model_file: Path) -> None:
    """CheckpointError naming `model_file` and the tensor unless `params` are exactly what the saved config
    describes: a language model's canonical names and shapes, or a classifier's (cls_head instead of
    out_head; metadata num_classes), plus LoRA adapters of those layers when a run saved them along.

    Checked at load so that a model file mixed up with another model's, or saved from params that never
    matched their config, fails here rather than deep inside a forward pass.
    """

    adapters = {name: value for name, value in params.items() if is_adapter_name(name)}
    base = {name: value for name, value in params.items() if name not in adapters}
    try:
        if HEAD_NAMES[0] in base:
            expected = classifier_param_shapes(config, metadata.get("num_classes", len(base[HEAD_NAMES[0]])))
        else:
            expected = param_shapes(config)
        check_param_shapes(base, expected, what="its tensors")
        check_adapters(base, adapters)
    except ValueError as error:
        raise CheckpointError(f"{model_file}: {error} (config: {config.n_layers} layers, emb_dim {config.emb_dim}, "
                              f"vocab_size {config.vocab_size}, context_length {config.context_length}); the "
                              f"model file does not belong to its config: save the checkpoint again or use an "
                              f"earlier one") from error


def read_checkpoint_metadata(path: str | os.PathLike) -> dict:
    """The `metadata` dict saved with a checkpoint (from config.json, or from a bare model.safetensors' header)."""
    header, _ = _read_header(Path(path))
    return header.get("metadata", {})
