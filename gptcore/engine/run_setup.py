"""Setting up a pretraining run from its options: defaults, what a resume takes from the run it continues,
the TrainSettings the options make, the model's config and starting weights, the token windows, and the
run's history of invocations. `gpt2 train` parses the flags and prints; the rules live here.

Options are a flat dict keyed like `gpt2 train`'s flags ("batch_size" for --batch-size). Where a value
comes from, strongest first: a flag given on the command line, the resumed run's saved options, DEFAULTS.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from gptcore.config import GPTConfig, get_config
from gptcore.corpus import prepare_corpus, resolve_sources
from gptcore.data import SlidingWindowDataset
from gptcore.engine.training import TrainSettings
from gptcore.formats.checkpoint import CONFIG_FILE, CheckpointError, STATE_JSON_FILE, read_checkpoint_metadata
from gptcore.formats.runs import RUN_CONFIG_FILE, later_checkpoints, older_good_checkpoint, resolve_resume
from gptcore.formats.weights import load_language_model

# Defaults of every option that --resume may take from the run's config.json instead.
DEFAULTS = {
    "model": "tiny", "context_length": None, "emb_dim": None, "n_layers": None, "n_heads": None, "drop_rate": None,
    "init_from": None, "data": None, "data_dir": None, "token_cache": None, "tokenizer": "tiktoken",
    "val_fraction": 0.1, "stride": None, "max_steps": 100, "batch_size": 8, "grad_accum": 1, "lr": 4e-4,
    "min_lr": None, "warmup_steps": None, "lr_decay_steps": None, "schedule": "cosine", "weight_decay": 0.1,
    "grad_clip": 1.0, "eval_interval": 10, "eval_batches": 5, "checkpoint_interval": 500, "keep_checkpoints": 2,
    "seed": 123, "backend": "torch", "device": "auto", "dtype": "auto", "compile": False, "sdpa": None,
    "sample_prompt": None, "sample_tokens": 20, "peak_tflops": None,
}
# Options that describe what the run IS: a resumed run keeps the saved values unless given again.
RUN_OPTIONS = list(DEFAULTS)
# Model-shape options a preset may be overridden with.
SHAPE_OPTIONS = ("emb_dim", "n_layers", "n_heads", "drop_rate")
# Options the NumPy loop has no use for (it runs in float32 on the CPU, with its own attention).
TORCH_ONLY_OPTIONS = ("compile", "sdpa", "peak_tflops")


# ---------------------------------------------------------------------------------------------------
# options: defaults, a resumed run's saved values, explicit flags
# ---------------------------------------------------------------------------------------------------

def given_options(values: dict) -> dict:
    """The run options among `values` that were given (not None): these win over everything else."""
    return {name: values[name] for name in RUN_OPTIONS if values.get(name) is not None}


def merged_options(saved: dict | None, given: dict) -> dict:
    """DEFAULTS, overridden by the resumed run's saved options (None for a fresh run), overridden by `given`."""
    options = dict(DEFAULTS)
    options.update(saved or {})
    options.update(given)
    return options


@dataclass(frozen=True)
class ResumeSource:
    """Where a resumed run comes from and where it goes.

    checkpoint:  the checkpoint folder training continues from
    run_config:  the config.json of its run folder, or (a checkpoint outside any run folder) what the
                 checkpoint says in that shape, see checkpoint_run_source
    out:         the run folder of the continuation
    same_folder: True when the continuation appends to the run folder it came from
    run_dir:     the run folder the checkpoint belongs to (None: a checkpoint outside any run folder); a
                 continuation elsewhere (a branch) starts with its metrics up to the checkpoint's step
    """
    checkpoint: Path
    run_config: dict
    out: Path
    same_folder: bool
    run_dir: Path | None = None

    @property
    def saved_options(self) -> dict:
        return self.run_config.get("options", {})


def resume_source(target: str | Path, out: str | Path | None) -> ResumeSource:
    """--resume TARGET (a run folder or a checkpoint) with --out OUT or None (a run folder continues in itself).

    A run's history stays linear: continuing in its own folder from a checkpoint older than the run's newest
    is refused (the later checkpoints and metrics would be mixed with the new ones); --out NEW_FOLDER
    branches instead, leaving the run untouched."""
    checkpoint, run_dir = resolve_resume(target)
    if run_dir is not None:
        run_config = json.loads((run_dir / RUN_CONFIG_FILE).read_text(encoding="utf-8"))
        out = Path(out) if out else run_dir
        same_folder = out.resolve() == run_dir.resolve()
        if same_folder:
            check_linear_history(target, checkpoint, run_dir)
        return ResumeSource(checkpoint, run_config, out, same_folder=same_folder, run_dir=run_dir)
    if not out:
        raise ValueError(f"--resume {target} is a checkpoint outside a run folder; give --out DIR for the continued "
                         f"run")
    return ResumeSource(checkpoint, checkpoint_run_source(checkpoint), Path(out), same_folder=False)


def check_linear_history(target: str | Path, checkpoint: Path, run_dir: Path) -> None:
    """ValueError when resuming in `run_dir` from `checkpoint` would fork the run: the run has checkpoints
    saved after it. The message says why and offers the branch (--out NEW_FOLDER)."""
    later = later_checkpoints(run_dir, checkpoint)
    if later:
        step = checkpoint_step(checkpoint)
        raise ValueError(f"--resume {target}: the run {run_dir} went on past step {step} (its checkpoints "
                         f"{', '.join(p.name for p in later)}); continuing it in place from step {step} would mix "
                         f"two histories in one folder and prune the later checkpoints. Branch instead: "
                         f"--resume {target} --out NEW_FOLDER (the new folder starts with the run's metrics up "
                         f"to step {step}; {run_dir} is not touched), or continue the run where it stopped with "
                         f"--resume {run_dir}")


def corrupt_resume_message(error: Exception, source: ResumeSource) -> str:
    """The error for a checkpoint that does not load on --resume, offering the run's older good checkpoint."""
    message = f"--resume: cannot load {source.checkpoint} ({error})"
    if source.run_dir is None:
        return message + "; the checkpoint is corrupt: resume from another checkpoint"
    older = older_good_checkpoint(source.run_dir, checkpoint_step(source.checkpoint))
    if older is None:
        return message + f"; the run {source.run_dir} has no older checkpoint that loads"
    return (f"{message}; the run's older checkpoint {older} (step {checkpoint_step(older)}) loads: branch from it "
            f"with --resume {older} --out NEW_FOLDER, or delete the corrupt {source.checkpoint} and run "
            f"--resume {source.run_dir} again")


def checkpoint_run_source(checkpoint: Path) -> dict:
    """What a checkpoint outside any run folder (copied, or its run deleted) says about the run that wrote it, in
    the shape of a run's config.json: {"options", "world_size", "data"}. `gpt2 train` saves the run's options in
    the checkpoint's metadata; the optimisation settings and process count in its training state are
    authoritative (and all that older checkpoints have), so a resume continues with the same lr, batch and
    schedule."""
    metadata = read_checkpoint_metadata(checkpoint)
    state = checkpoint_state_json(checkpoint)
    options = {name: value for name, value in (metadata.get("options") or {}).items() if name in DEFAULTS}
    if state.get("settings"):
        options.update(options_from_settings(state["settings"]))
    source = {"options": options, "world_size": int(state.get("world_size", 1))}
    if metadata.get("data_key"):
        source["data"] = {"key": metadata["data_key"]}
    return source


def options_from_settings(settings: dict) -> dict:
    """The run options that give these TrainSettings (a settings_dict; the inverse of training_settings)."""
    return {"max_steps": settings["max_steps"], "batch_size": settings["batch_size"],
            "grad_accum": settings["grad_accum_steps"], "lr": settings["lr"], "min_lr": settings["min_lr"],
            "warmup_steps": settings["warmup_steps"],
            # None meant "the run's max_steps" when it was written; fixed now, so a longer resume keeps it
            "lr_decay_steps": settings["lr_decay_steps"] or settings["max_steps"],
            "schedule": "cosine" if settings["cosine"] else "constant", "weight_decay": settings["weight_decay"],
            "grad_clip": settings["grad_clip"] or 0.0, "eval_interval": settings["eval_interval"],
            "eval_batches": settings["eval_batches"], "checkpoint_interval": settings["checkpoint_interval"],
            "keep_checkpoints": settings["keep_checkpoints"], "seed": settings["seed"]}


def check_numpy_backend_options(given: dict) -> None:
    """The NumPy loop has no use for the torch-only options; refused when given (not when a resumed torch run
    saved them), rather than silently ignored. `given`: the options given on the command line."""
    for name in TORCH_ONLY_OPTIONS:
        if given.get(name):
            raise ValueError(f"--{name.replace('_', '-')} applies to the torch backend only; leave it out with "
                             f"--backend numpy")
    if given.get("dtype", "auto") not in ("auto", "float32"):
        raise ValueError(f"--dtype {given['dtype']} applies to the torch backend only (the NumPy loop computes in "
                         f"float32); leave it out or use --backend torch")
    if given.get("device", "auto") not in ("cpu", "auto"):
        raise ValueError("the NumPy backend runs on the CPU; leave --device out or use --backend torch")


def absolute_paths(options: dict) -> None:
    """Paths in the options made absolute (in place), so a later --resume works from any working directory.
    Data entries that are not existing paths are data set names and stay as they are."""
    if options["data"]:
        options["data"] = [str(Path(entry).resolve()) if Path(entry).exists() else entry for entry in options["data"]]
    for key in ("data_dir", "token_cache", "init_from"):
        if options[key]:
            options[key] = str(Path(options[key]).expanduser().resolve())


# ---------------------------------------------------------------------------------------------------
# the optimisation settings
# ---------------------------------------------------------------------------------------------------

def keep_global_batch(options: dict, saved: dict | None, given: dict, world_size: int) -> str | None:
    """Resuming with another process count: --grad-accum adjusted (in `options`) so that the global batch
    (batch_size x grad_accum x processes), and so the run, stays the same. Returns a note for the user when it
    changed, else None. `saved`: the resumed run's config (None for a fresh run); an explicit --batch-size or
    --grad-accum in `given` turns the rule off."""
    if not saved or "grad_accum" in given or "batch_size" in given:
        return None
    before = saved.get("world_size", 1)
    if before == world_size:
        return None
    global_batch = options["batch_size"] * options["grad_accum"] * before
    per_step = options["batch_size"] * world_size
    if global_batch % per_step:
        raise ValueError(f"the run used a global batch of {global_batch} windows on {before} process(es); with "
                         f"{world_size} process(es) and --batch-size {options['batch_size']} that does not divide; "
                         f"pass --batch-size and --grad-accum explicitly")
    options["grad_accum"] = global_batch // per_step
    return (f"{world_size} process(es) instead of {before}: --grad-accum {options['grad_accum']} keeps the global "
            f"batch of {global_batch}")


def complete_schedule(options: dict) -> None:
    """Fill in (in place) the schedule options left open, so config.json records them and a resume keeps them:
    the cosine horizon (the first run's --max-steps), the warmup (5% of it) and the final lr (lr / 10)."""
    if not options["lr_decay_steps"]:
        options["lr_decay_steps"] = options["max_steps"]
    if options["warmup_steps"] is None:
        options["warmup_steps"] = max(0, options["lr_decay_steps"] // 20)
    if options["min_lr"] is None:
        options["min_lr"] = options["lr"] / 10


def training_settings(options: dict) -> TrainSettings:
    """The TrainSettings of complete options (complete_schedule first); validated by TrainSettings."""
    return TrainSettings(
        max_steps=options["max_steps"], batch_size=options["batch_size"], lr=options["lr"], min_lr=options["min_lr"],
        warmup_steps=options["warmup_steps"], cosine=options["schedule"] == "cosine",
        lr_decay_steps=options["lr_decay_steps"], weight_decay=options["weight_decay"],
        grad_clip=options["grad_clip"] or None, grad_accum_steps=options["grad_accum"],
        eval_interval=options["eval_interval"], eval_batches=options["eval_batches"],
        checkpoint_interval=options["checkpoint_interval"], keep_checkpoints=options["keep_checkpoints"],
        seed=options["seed"])


def schedule_end_note(options: dict, saved: dict | None) -> str | None:
    """A note when a resume trains past the run's cosine horizon (the lr then stays at its minimum), else None."""
    if saved and options["max_steps"] > options["lr_decay_steps"]:
        return (f"the learning rate stays at --min-lr after step {options['lr_decay_steps']} (the run's cosine "
                f"horizon); pass --lr-decay-steps to stretch it (the run then differs from one that planned it)")
    return None


# ---------------------------------------------------------------------------------------------------
# data and model
# ---------------------------------------------------------------------------------------------------

def prepare_training_data(options: dict, progress: bool):
    """The token corpus of --data (tokenized once into --token-cache, reused): (corpus, its description for
    config.json). gptcore.download.DownloadError when a data set cannot be fetched."""
    files = resolve_sources(options["data"], options["data_dir"])
    corpus = prepare_corpus(files, cache_dir=options["token_cache"], tokenizer_name=options["tokenizer"],
                            val_fraction=options["val_fraction"], progress=progress)
    return corpus, {"files": [str(f) for f in files], "corpus": str(corpus.folder), "key": corpus.meta["key"],
                    "train_tokens": corpus.meta["train_tokens"], "val_tokens": corpus.meta["val_tokens"]}


def data_change_note(saved: dict | None, data_key: str) -> str | None:
    """A note when the resumed run was trained on other token files than `data_key`, else None."""
    saved_key = (saved or {}).get("data", {}).get("key")
    if saved_key not in (None, data_key):
        return (f"the training text changed since the run started (token files {saved_key} -> {data_key}); the "
                f"continuation is not the run it would have been")
    return None


def window_datasets(corpus, context_length: int, stride: int):
    """(train windows, val windows or None when the validation text is shorter than one window) over the
    memory-mapped token files; windows of context_length + 1 tokens (inputs and shifted targets)."""
    train_ids, val_ids = corpus.train_tokens(), corpus.val_tokens()
    if train_ids.size < context_length + 1:
        raise ValueError(f"the training text has {train_ids.size} tokens, fewer than one window of "
                         f"{context_length + 1}; give more text or a smaller --context-length")
    train_set = SlidingWindowDataset(train_ids, context_length, stride, copy=False)
    if val_ids.size < context_length + 1:
        return train_set, None
    return train_set, SlidingWindowDataset(val_ids, context_length, context_length, copy=False)


def checkpoint_model_config(checkpoint: Path) -> GPTConfig:
    """The model config saved in one of our checkpoints (without reading its tensors)."""
    file = Path(checkpoint) / CONFIG_FILE
    try:
        return GPTConfig.from_dict(json.loads(file.read_text(encoding="utf-8"))["config"])
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as error:
        raise CheckpointError(f"{file} is not a valid checkpoint config ({error}); the checkpoint is "
                              f"corrupt") from error


def model_config_and_params(options: dict, checkpoint: Path | None):
    """(GPTConfig, NumPy params or None): from the checkpoint being resumed (its tensors are loaded with its
    training state later), --init-from weights, or a --model preset with the shape options applied."""
    if checkpoint is not None:
        return checkpoint_model_config(checkpoint), None
    overrides = {key: options[key] for key in SHAPE_OPTIONS if options[key] is not None}
    if options["init_from"]:
        config, params = load_language_model(options["init_from"])
        if overrides.keys() - {"drop_rate"}:
            raise ValueError(f"--init-from fixes the model's sizes; drop {sorted(overrides.keys() - {'drop_rate'})}")
        return (config.replace(**overrides) if overrides else config), params
    if options["context_length"]:
        overrides["context_length"] = options["context_length"]
    return get_config(options["model"], **overrides), None


# ---------------------------------------------------------------------------------------------------
# checkpoints and the run's history
# ---------------------------------------------------------------------------------------------------

def checkpoint_state_json(checkpoint: Path) -> dict:
    """The JSON part of a checkpoint's training state (step, settings, world size, ...), without its arrays."""
    path = Path(checkpoint) / STATE_JSON_FILE
    if not path.is_file():
        raise ValueError(f"{checkpoint} holds no training state (model weights only); start a new run from it "
                         f"with --init-from instead of --resume")
    return json.loads(path.read_text(encoding="utf-8"))["state"]


def checkpoint_step(checkpoint: Path) -> int:
    """The optimizer step a checkpoint was saved after."""
    try:
        return int(checkpoint_state_json(checkpoint)["step"])
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as error:
        raise ValueError(f"{Path(checkpoint) / STATE_JSON_FILE} is not a valid training state ({error}); the "
                         f"checkpoint is corrupt: resume from an earlier one") from error


def nothing_to_do(checkpoint: Path | None, options: dict) -> str | None:
    """The message when a resumed run is already at --max-steps or beyond (nothing is trained, and nothing
    in the run folder is written), else None."""
    if checkpoint is None:
        return None
    step = checkpoint_step(checkpoint)
    if step < options["max_steps"]:
        return None
    return (f"nothing to do: {checkpoint} is at step {step} >= --max-steps {options['max_steps']}; nothing was "
            f"written (give a larger --max-steps to train on)")


def run_history(saved: dict | None, checkpoint: Path | None, world_size: int, command: list[str],
                now: datetime | None = None) -> list[dict]:
    """config.json's `history`: every invocation that wrote this run, oldest first, so a resume (which rewrites
    the top-level keys with its own options and command) keeps the original command. The earlier ones come
    from the run config being resumed (a config from before `history` existed gives its one recorded
    command, time unknown); a checkpoint outside any run folder starts the list afresh. `command`: this
    invocation's arguments; `now`: its time (default the current local time, with its UTC offset)."""
    earlier = []
    if saved is not None and "history" in saved:
        earlier = list(saved["history"])
    elif saved is not None and "command" in saved:
        earlier = [{"command": saved["command"], "time": None, "resumed_from": saved.get("resumed_from"),
                    "world_size": saved.get("world_size", 1)}]
    now = now or datetime.now().astimezone()
    return earlier + [{"command": list(command), "time": now.isoformat(timespec="seconds"),
                       "resumed_from": str(checkpoint) if checkpoint else None, "world_size": world_size}]
