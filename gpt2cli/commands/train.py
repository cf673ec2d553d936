"""`gpt2 train`: pretrain a GPT on text (torch or NumPy backend), with checkpoints and exact resume.

    gpt2 train --model tiny --out runs/verdict --max-steps 200                 # the-verdict, torch, auto device
    gpt2 train --data notes/ more.txt --out runs/notes --max-steps 5000 --checkpoint-interval 500
    gpt2 train --resume runs/notes --max-steps 8000                            # continue that run up to step 8000
    gpt2 train --backend numpy --out runs/np --max-steps 50                    # the NumPy loop, same options
    gpt2 train --nproc 2 --out runs/ddp ...                                    # DDP via torchrun
    torchrun --nproc_per_node=2 -m gpt2cli train --out runs/ddp ...

See docs/training.md. Options left out on --resume come from the run's config.json.
"""
from __future__ import annotations

import json
import sys
import time
from datetime import datetime
from pathlib import Path

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


def register(subparsers):
    p = subparsers.add_parser("train", help="pretrain a GPT on text files or a data set (torch or NumPy)",
                              description=__doc__.split("\n\n")[0])
    a = p.add_argument
    a("--model", metavar="PRESET", help="model preset: tiny, gpt2-small (124M), gpt2-medium, ... (default tiny)")
    a("--context-length", type=int, help="training window length T (and the new model's context length)")
    a("--emb-dim", type=int, help="override the preset's embedding width C")
    a("--n-layers", type=int, help="override the preset's number of blocks L")
    a("--n-heads", type=int, help="override the preset's number of heads H")
    a("--drop-rate", type=float, help="dropout rate (default: the preset's / the weights')")
    a("--init-from", metavar="WEIGHTS", help="start from weights: OpenAI folder, Hugging Face folder/.safetensors, "
                                             "or one of our checkpoints (a fresh run, step 0)")
    a("--resume", metavar="CHECKPOINT_OR_RUN_DIR", help="continue a run exactly (a run folder: its newest checkpoint)")
    a("--out", metavar="DIR", help="the run folder (default runs/train-<time>; with --resume the run's own)")
    a("--data", nargs="+", metavar="PATH_OR_NAME", help="text files, folders of them, or data set names "
                                                       "(default the-verdict)")
    a("--data-dir", help="where manifest data sets live (default $GPT2_DATA_DIR or data/cache)")
    a("--token-cache", metavar="DIR", help="where tokenized corpora are kept (default $GPT2_TOKEN_CACHE or "
                                           "data/cache/tokens)")
    a("--tokenizer", choices=["tiktoken", "bpe"], help="GPT-2 tokenizer implementation (same ids; default tiktoken)")
    a("--val-fraction", type=float, help="share of every file held out for validation (default 0.1)")
    a("--stride", type=int, help="step between training windows (default the context length: no overlap)")
    a("--max-steps", type=int, metavar="N", help="train until optimizer step N (default 100)")
    a("--batch-size", type=int, help="micro-batch per process (default 8)")
    a("--grad-accum", type=int, help="micro-batches per optimizer step (default 1)")
    a("--lr", type=float, help="peak learning rate (default 4e-4)")
    a("--min-lr", type=float, help="final learning rate of the cosine (default lr / 10)")
    a("--warmup-steps", type=int, help="linear warmup steps (default 5%% of the decay horizon)")
    a("--lr-decay-steps", type=int, help="cosine horizon in steps (default --max-steps of the first run; kept "
                                         "on --resume so it continues exactly)")
    a("--schedule", choices=["cosine", "constant"], help="after warmup: cosine decay (default) or constant")
    a("--weight-decay", type=float, help="AdamW weight decay on matrices and embeddings (default 0.1)")
    a("--grad-clip", type=float, help="global gradient-norm clip, 0 turns it off (default 1.0)")
    a("--eval-interval", type=int, metavar="N", help="evaluate every N steps (default 10)")
    a("--eval-batches", type=int, help="batches per evaluation set (default 5)")
    a("--checkpoint-interval", type=int, metavar="N", help="checkpoint every N steps; 0: only at the end "
                                                           "(default 500; always at the end and on Ctrl-C)")
    a("--keep-checkpoints", type=int, help="newest checkpoints kept, 0 keeps all (default 2)")
    a("--seed", type=int, metavar="S", help="seed of init, data order and dropout (default 123)")
    a("--backend", choices=["torch", "numpy"], help="torch (default) or the NumPy reference loop")
    a("--device", help="auto (default), cpu, cuda, cuda:N or mps (torch backend)")
    a("--dtype", choices=["auto", "float32", "bfloat16"], help="autocast precision: auto = bf16 on CUDA "
                                                              "(default), float32 elsewhere")
    a("--compile", action="store_true", default=None, help="torch.compile the model")
    a("--sdpa", action="store_true", default=None, help="fused scaled_dot_product_attention (default on CUDA)")
    a("--no-sdpa", dest="sdpa", action="store_false", help="explicit attention (the reference twin)")
    a("--sample-prompt", metavar="TEXT", help="log a greedy continuation of TEXT at each evaluation")
    a("--sample-tokens", type=int, help="tokens generated for --sample-prompt (default 20)")
    a("--peak-tflops", type=float, help="the GPU's peak TFLOP/s for the MFU figure (default: known GPUs' bf16)")
    a("--nproc", type=int, default=1, help="data-parallel processes: launches torchrun (torch backend)")
    a("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


# ---------------------------------------------------------------------------------------------------
# options: defaults, a resumed run's saved values, explicit flags
# ---------------------------------------------------------------------------------------------------

def resolve_options(args) -> tuple[dict, dict | None, Path | None, bool]:
    """(options, config.json of the run being resumed or None, checkpoint to resume or None, whether the run
    continues in its own folder). Explicit flags win over the resumed run's options, which win over DEFAULTS."""
    from gptcore.formats.runs import RUN_CONFIG_FILE, resolve_resume
    given = {name: getattr(args, name) for name in RUN_OPTIONS if getattr(args, name, None) is not None}
    source, checkpoint, same_folder = None, None, False
    options = dict(DEFAULTS)
    if args.resume:
        checkpoint, run_dir = resolve_resume(args.resume)
        if run_dir is not None:
            source = json.loads((run_dir / RUN_CONFIG_FILE).read_text(encoding="utf-8"))
            options.update(source.get("options", {}))
            if not args.out:
                args.out = str(run_dir)
            same_folder = Path(args.out).resolve() == run_dir.resolve()
        else:
            if not args.out:
                raise ValueError(f"--resume {args.resume} is a checkpoint outside a run folder; give --out DIR for "
                                 f"the continued run")
            source = checkpoint_run_source(checkpoint)
            options.update(source["options"])
    options.update(given)
    return options, source, checkpoint, same_folder


def checkpoint_run_source(checkpoint: Path) -> dict:
    """What a checkpoint outside any run folder (copied, or its run deleted) says about the run that wrote it, in
    the shape of a run's config.json: {"options", "world_size", "data"}. Our CLI saves the run's options in the
    checkpoint's metadata; the optimisation settings and process count in its training state are authoritative
    (and all that older checkpoints have), so a resume continues with the same lr, batch and schedule."""
    from gptcore.formats.checkpoint import read_checkpoint_metadata
    metadata = read_checkpoint_metadata(checkpoint)
    state = _checkpoint_state_json(checkpoint)
    options = {name: value for name, value in (metadata.get("options") or {}).items() if name in DEFAULTS}
    if state.get("settings"):
        options.update(options_from_settings(state["settings"]))
    source = {"options": options, "world_size": int(state.get("world_size", 1))}
    if metadata.get("data_key"):
        source["data"] = {"key": metadata["data_key"]}
    return source


def options_from_settings(settings: dict) -> dict:
    """The CLI options that give these TrainSettings (the inverse of training_settings)."""
    return {"max_steps": settings["max_steps"], "batch_size": settings["batch_size"],
            "grad_accum": settings["grad_accum_steps"], "lr": settings["lr"], "min_lr": settings["min_lr"],
            "warmup_steps": settings["warmup_steps"],
            # None meant "the run's max_steps" when it was written; fixed now, so a longer resume keeps it
            "lr_decay_steps": settings["lr_decay_steps"] or settings["max_steps"],
            "schedule": "cosine" if settings["cosine"] else "constant", "weight_decay": settings["weight_decay"],
            "grad_clip": settings["grad_clip"] or 0.0, "eval_interval": settings["eval_interval"],
            "eval_batches": settings["eval_batches"], "checkpoint_interval": settings["checkpoint_interval"],
            "keep_checkpoints": settings["keep_checkpoints"], "seed": settings["seed"]}


def training_settings(options: dict, world_size: int):
    from gptcore.engine.training import TrainSettings
    decay = options["lr_decay_steps"] or options["max_steps"]
    options["lr_decay_steps"] = decay                          # fixed now, so a resume keeps the horizon
    if options["warmup_steps"] is None:
        options["warmup_steps"] = max(0, decay // 20)
    if options["min_lr"] is None:
        options["min_lr"] = options["lr"] / 10
    return TrainSettings(
        max_steps=options["max_steps"], batch_size=options["batch_size"], lr=options["lr"], min_lr=options["min_lr"],
        warmup_steps=options["warmup_steps"], cosine=options["schedule"] == "cosine", lr_decay_steps=decay,
        weight_decay=options["weight_decay"], grad_clip=options["grad_clip"] or None,
        grad_accum_steps=options["grad_accum"], eval_interval=options["eval_interval"],
        eval_batches=options["eval_batches"], checkpoint_interval=options["checkpoint_interval"],
        keep_checkpoints=options["keep_checkpoints"], seed=options["seed"])


def note(message: str, context=None) -> None:
    """A note on stderr, from rank 0 only: under DDP every process reaches the same notes."""
    if context is None or context.is_main:
        print(f"note: {message}", file=sys.stderr)


def keep_global_batch(options: dict, saved: dict | None, given: set, context) -> None:
    """Resuming with another process count: adjust --grad-accum so the global batch (and the run) stays the same."""
    world_size = context.world_size
    if not saved or "grad_accum" in given or "batch_size" in given:
        return
    before = saved.get("world_size", 1)
    if before == world_size:
        return
    global_batch = options["batch_size"] * options["grad_accum"] * before
    per_step = options["batch_size"] * world_size
    if global_batch % per_step:
        raise ValueError(f"the run used a global batch of {global_batch} windows on {before} process(es); with "
                         f"{world_size} process(es) and --batch-size {options['batch_size']} that does not divide; "
                         f"pass --batch-size and --grad-accum explicitly")
    options["grad_accum"] = global_batch // per_step
    note(f"{world_size} process(es) instead of {before}: --grad-accum {options['grad_accum']} keeps the global "
         f"batch of {global_batch}", context)


# ---------------------------------------------------------------------------------------------------
# data and model
# ---------------------------------------------------------------------------------------------------

def prepare_data(options: dict, progress: bool):
    """The token corpus (tokenized once, reused): (corpus, description for config.json)."""
    from gpt2cli.main import UserError
    from gptcore.corpus import prepare_corpus, resolve_sources
    from gptcore.download import DownloadError
    try:
        files = resolve_sources(options["data"], options["data_dir"])
    except DownloadError as error:
        raise UserError(str(error)) from error
    corpus = prepare_corpus(files, cache_dir=options["token_cache"], tokenizer_name=options["tokenizer"],
                            val_fraction=options["val_fraction"], progress=progress)
    return corpus, {"files": [str(f) for f in files], "corpus": str(corpus.folder), "key": corpus.meta["key"],
                    "train_tokens": corpus.meta["train_tokens"], "val_tokens": corpus.meta["val_tokens"]}


def window_datasets(corpus, context_length: int, stride: int, context=None):
    """(train windows, val windows or None) over the memory-mapped token files."""
    from gptcore.data import SlidingWindowDataset
    train_ids, val_ids = corpus.train_tokens(), corpus.val_tokens()
    if train_ids.size < context_length + 1:
        raise ValueError(f"the training text has {train_ids.size} tokens, fewer than one window of "
                         f"{context_length + 1}; give more text or a smaller --context-length")
    train_set = SlidingWindowDataset(train_ids, context_length, stride, copy=False)
    val_set = None
    if val_ids.size >= context_length + 1:
        val_set = SlidingWindowDataset(val_ids, context_length, context_length, copy=False)
    else:
        note(f"the validation text has {val_ids.size} tokens, less than one window of {context_length}; no "
             f"validation loss (raise --val-fraction or lower --context-length)", context)
    return train_set, val_set


def checkpoint_model_config(checkpoint: Path):
    from gptcore.formats.checkpoint import CONFIG_FILE
    from gptcore.config import GPTConfig
    return GPTConfig.from_dict(json.loads((Path(checkpoint) / CONFIG_FILE).read_text(encoding="utf-8"))["config"])


def model_config_and_params(options: dict, checkpoint: Path | None):
    """(GPTConfig, NumPy params or None): from the checkpoint being resumed, --init-from weights, or a preset."""
    from gptcore.config import get_config
    if checkpoint is not None:
        return checkpoint_model_config(checkpoint), None
    overrides = {key: options[key] for key in ("emb_dim", "n_layers", "n_heads", "drop_rate") if options[key] is not None}
    if options["init_from"]:
        from gptcore.formats.weights import load_weights
        config, params = load_weights(options["init_from"])
        if overrides.keys() - {"drop_rate"}:
            raise ValueError(f"--init-from fixes the model's sizes; drop {sorted(overrides.keys() - {'drop_rate'})}")
        return (config.replace(**overrides) if overrides else config), params
    if options["context_length"]:
        overrides["context_length"] = options["context_length"]
    return get_config(options["model"], **overrides), None


# ---------------------------------------------------------------------------------------------------
# the command
# ---------------------------------------------------------------------------------------------------

def run(args) -> int:
    from gpt2cli.main import UserError
    from gptcore.formats.runs import NonFiniteLossError, TrainingInterrupted
    from torchgpt.distributed import is_rank_zero, launch, launched_by_torchrun
    if args.nproc > 1 and not launched_by_torchrun():
        if (args.backend or DEFAULTS["backend"]) == "numpy":
            raise UserError("--nproc needs the torch backend; the NumPy loop runs in one process")
        if sys.argv[1:2] != ["train"]:
            raise UserError("--nproc launches `python -m gpt2cli train ...` under torchrun: run it from the "
                            "command line (gpt2 train ... --nproc N)")
        return launch(args.nproc, strip_nproc(sys.argv[1:]))
    if not is_rank_zero():
        return _run_quietly(args)
    try:
        return train_command(args)
    except NonFiniteLossError as error:
        raise UserError(str(error)) from error
    except TrainingInterrupted as interrupt:
        print(f"gpt2 train: {interrupt}", file=sys.stderr)
        return 130


def _run_quietly(args) -> int:
    """A DDP process other than rank 0: the same run, with the exit code of rank 0 but without its messages.
    Every rank meets the same user errors, NaN/inf loss and Ctrl-C (the loss and the stop request are shared),
    and rank 0 reports them once. Problems of this process alone (ProcessSetupError) and crashes still print."""
    from gpt2cli.main import UserError
    from gptcore.formats.runs import NonFiniteLossError
    from torchgpt.distributed import ProcessSetupError
    try:
        return train_command(args)
    except ProcessSetupError:
        raise
    except KeyboardInterrupt:                 # TrainingInterrupted too: rank 0 says where the checkpoint is
        return 130
    except (NonFiniteLossError, UserError, ValueError, FileNotFoundError, KeyError, OSError):
        return 2


def strip_nproc(argv: list[str]) -> list[str]:
    """argv without --nproc N / --nproc=N (the launched processes must not launch again)."""
    out, skip = [], False
    for item in argv:
        if skip:
            skip = False
        elif item == "--nproc":
            skip = True
        elif not item.startswith("--nproc="):
            out.append(item)
    return out


def train_command(args) -> int:
    from gptcore.formats.runs import RunLog, list_checkpoints
    options, saved, checkpoint, same_folder = resolve_options(args)
    given = {name for name in RUN_OPTIONS if getattr(args, name, None) is not None}
    if options["backend"] == "numpy":
        refuse_torch_only_options(args, given)
    context, device = _start_processes(options)
    try:
        keep_global_batch(options, saved, given, context)
        settings = training_settings(options, context.world_size)
        if saved and options["max_steps"] > options["lr_decay_steps"]:
            note(f"the learning rate stays at --min-lr after step {options['lr_decay_steps']} (the run's cosine "
                 f"horizon); pass --lr-decay-steps to stretch it (the run then differs from one that planned it)",
                 context)
        out = Path(args.out) if args.out else Path("runs") / time.strftime("train-%Y%m%d-%H%M%S")
        if not same_folder and list_checkpoints(out):
            raise ValueError(f"--out {out} already holds a run with checkpoints; continue it with --resume {out} "
                             f"or choose another --out")
        progress = not args.quiet
        _absolute_paths(options)
        corpus, data_info = _prepare_data_once(options, progress and context.is_main, context)
        if saved and saved.get("data", {}).get("key") not in (None, data_info["key"]):
            note(f"the training text changed since the run started (token files {saved['data']['key']} -> "
                 f"{data_info['key']}); the continuation is not the run it would have been", context)
        config, params = model_config_and_params(options, checkpoint)
        context_length = options["context_length"] or config.context_length
        if context_length > config.context_length:
            raise ValueError(f"--context-length {context_length} exceeds the model's context length "
                             f"{config.context_length}")
        if corpus.meta["n_vocab"] > config.vocab_size:
            raise ValueError(f"the tokenizer has {corpus.meta['n_vocab']} ids but the model's vocabulary is "
                             f"{config.vocab_size}; use a model with vocab_size >= {corpus.meta['n_vocab']}")
        options["context_length"] = context_length
        options["stride"] = options["stride"] or context_length
        train_set, val_set = window_datasets(corpus, context_length, options["stride"], context)
        run_log = RunLog(out, enabled=context.is_main)
        if same_folder:
            run_log.continue_from(_checkpoint_step(checkpoint))
        run_log.write_config({"options": options, "backend": options["backend"], "model": config.to_dict(),
                              "data": data_info, "settings": _settings_json(settings),
                              "world_size": context.world_size, "device": str(device),
                              "resumed_from": str(checkpoint) if checkpoint else None,
                              "command": sys.argv[1:],
                              "history": run_history(saved, checkpoint, context.world_size)})
        # Saved in every checkpoint, so one copied out of its run folder still resumes exactly (see
        # checkpoint_run_source).
        metadata = {"run": str(run_log.run_dir), "options": options, "data_key": data_info["key"]}
        if options["backend"] == "numpy":
            return _train_numpy(config, params, checkpoint, train_set, val_set, settings, run_log, progress, metadata,
                                options)
        return _train_torch(config, params, checkpoint, train_set, val_set, settings, run_log, options, context,
                            device, progress, metadata)
    finally:
        from torchgpt.distributed import shutdown_distributed
        shutdown_distributed()


def run_history(saved: dict | None, checkpoint: Path | None, world_size: int) -> list[dict]:
    """config.json's `history`: every invocation that wrote this run, oldest first, so a resume (which rewrites
    the top-level keys with its own options and command) keeps the original command. The earlier ones come
    from the run config being resumed (a config from before `history` existed gives its one recorded
    command, time unknown); a checkpoint outside any run folder starts the list afresh."""
    earlier = []
    if saved is not None and "history" in saved:
        earlier = list(saved["history"])
    elif saved is not None and "command" in saved:
        earlier = [{"command": saved["command"], "time": None, "resumed_from": saved.get("resumed_from"),
                    "world_size": saved.get("world_size", 1)}]
    now = datetime.now().astimezone().isoformat(timespec="seconds")
    return earlier + [{"command": sys.argv[1:], "time": now, "resumed_from": str(checkpoint) if checkpoint else None,
                       "world_size": world_size}]


def refuse_torch_only_options(args, given: set) -> None:
    """The NumPy backend has no use for these; refused when given (not when a resumed torch run saved them),
    rather than silently ignored."""
    for name in ("compile", "sdpa", "peak_tflops"):
        if name in given and getattr(args, name):
            raise ValueError(f"--{name.replace('_', '-')} applies to the torch backend only; leave it out with "
                             f"--backend numpy")
    if "dtype" in given and args.dtype not in ("auto", "float32"):
        raise ValueError(f"--dtype {args.dtype} applies to the torch backend only (the NumPy loop computes in "
                         f"float32); leave it out or use --backend torch")
    if "device" in given and args.device not in ("cpu", "auto"):
        raise ValueError("the NumPy backend runs on the CPU; leave --device out or use --backend torch")


def sample_function(options: dict, backend: str, config=None):
    """None without --sample-prompt, else fn(model) (torch) or fn(params) (NumPy, for `config`) -> the greedy
    continuation of the prompt in --sample-tokens tokens, as text."""
    if not options["sample_prompt"]:
        return None
    from gptcore.tokenizer import get_tokenizer
    tokenizer = get_tokenizer(options["tokenizer"])
    prompt, length = tokenizer.encode(options["sample_prompt"]), options["sample_tokens"]
    if backend == "numpy":
        from npgpt.generate import generate as numpy_generate
        return lambda params: tokenizer.decode(numpy_generate(params, config, prompt, length))
    from torchgpt.generate import generate as torch_generate
    return lambda model: tokenizer.decode(torch_generate(model, prompt, length))


def _absolute_paths(options: dict) -> None:
    """Paths in the options made absolute, so `--resume` works from any working directory."""
    if options["data"]:
        options["data"] = [str(Path(entry).resolve()) if Path(entry).exists() else entry for entry in options["data"]]
    for key in ("data_dir", "token_cache", "init_from"):
        if options[key]:
            options[key] = str(Path(options[key]).expanduser().resolve())


def _start_processes(options: dict):
    from torchgpt.distributed import DistContext, init_distributed
    if options["backend"] == "numpy":
        import torch
        return DistContext(), torch.device("cpu")
    return init_distributed(options["device"])


def _prepare_data_once(options: dict, progress: bool, context):
    """Rank 0 tokenizes (if needed) while the others wait, then they reuse its files."""
    if not context.is_distributed:
        return prepare_data(options, progress)
    import torch.distributed as dist
    if context.is_main:
        result = prepare_data(options, progress)
        dist.barrier()
        return result
    dist.barrier()
    return prepare_data(options, False)


def _checkpoint_state_json(checkpoint: Path) -> dict:
    """The JSON part of a checkpoint's training state (step, settings, world size, ...), without its arrays."""
    from gptcore.formats.checkpoint import STATE_JSON_FILE
    path = Path(checkpoint) / STATE_JSON_FILE
    if not path.is_file():
        raise ValueError(f"{checkpoint} holds no training state (model weights only); start a new run from it "
                         f"with --init-from instead of --resume")
    return json.loads(path.read_text(encoding="utf-8"))["state"]


def _checkpoint_step(checkpoint: Path) -> int:
    return int(_checkpoint_state_json(checkpoint)["step"])


def _settings_json(settings) -> dict:
    from gptcore.engine.training import settings_dict
    return settings_dict(settings)


def _train_numpy(config, params, checkpoint, train_set, val_set, settings, run_log, progress, metadata,
                 options) -> int:
    import npgpt.model
    from gptcore.formats.checkpoint import load_checkpoint
    from npgpt.train import train
    resume_state = None
    if checkpoint is not None:
        config, params, resume_state = load_checkpoint(checkpoint)
        if resume_state is None:
            raise ValueError(f"{checkpoint} holds no training state; use --init-from to start from its weights")
    elif params is None:
        params = npgpt.model.init_params(config, seed=settings.seed)
    history = train(params, config, train_set, val_set, settings, progress=progress, run_log=run_log,
                    resume_state=resume_state, metadata=metadata,
                    sample_fn=sample_function(options, "numpy", config))
    if len(history) >= 2:       # step time only (no evaluation), the first step left out as in torch's summary
        first, last = history[0], history[-1]
        tokens_per_sec = (last["tokens_seen"] - first["tokens_seen"]) / max(last["elapsed_s"] - first["elapsed_s"], 1e-9)
    else:
        tokens_per_sec = history[0]["tokens_per_sec"] if history else 0.0
    _print_summary("numpy", "cpu", history, tokens_per_sec, None, run_log)
    return 0


def _train_torch(config, params, checkpoint, train_set, val_set, settings, run_log, options, context, device,
                 progress, metadata) -> int:
    import torch
    from torchgpt import GPTModel, load_numpy_params
    from torchgpt.train import RuntimeOptions, TokenBatches, Trainer, ordered_batches
    torch.manual_seed(settings.seed + context.rank)      # dropout masks differ per process
    use_sdpa = options["sdpa"] if options["sdpa"] is not None else device.type == "cuda"
    model = GPTModel(config, use_sdpa=use_sdpa, seed=settings.seed)
    if params is not None:
        load_numpy_params(model, params)
    runtime = RuntimeOptions(device=str(device), dtype=options["dtype"], compile=bool(options["compile"]),
                             sdpa=use_sdpa)
    eval_sets = {"eval_train": ordered_batches(train_set, settings.batch_size)}
    if val_set is not None:
        eval_sets["val"] = ordered_batches(val_set, settings.batch_size)
    sample_fn = sample_function(options, "torch")
    trainer = Trainer(model, TokenBatches(train_set, settings, context), settings, eval_sets=eval_sets,
                      runtime=runtime, device=device, context=context, run_log=run_log,
                      metadata=metadata, sample_fn=sample_fn, progress=progress,
                      peak_flops_per_device=options["peak_tflops"] * 1e12 if options["peak_tflops"] else None)
    if checkpoint is not None:
        trainer.restore(checkpoint)
    history = trainer.fit()
    if context.is_main:
        summary = trainer.summary()
        _print_summary("torch", f"{device} x{context.world_size}" if context.is_distributed else str(device), history,
                       summary["tokens_per_sec"], summary["mfu"], run_log)
    return 0


def _print_summary(backend, device, history, tokens_per_sec, mfu, run_log) -> None:
    """One line: steps, throughput (and MFU on GPUs), the last losses, where the run is."""
    if not history:
        print(f"nothing to do: the run is already at step >= --max-steps ({run_log.run_dir})")
        return
    last = history[-1]
    mfu_text = f", MFU {mfu:.1%}" if mfu is not None else ""
    val = next((e["val_loss"] for e in reversed(history) if "val_loss" in e), None)
    val_text = f", val loss {val:.3f}" if val is not None else ""
    print(f"{backend} on {device}: steps {history[0]['step']}..{last['step']}, {tokens_per_sec:,.0f} tokens/s"
          f"{mfu_text}; train loss {last['train_loss']:.3f}{val_text}; run folder {run_log.run_dir}")
