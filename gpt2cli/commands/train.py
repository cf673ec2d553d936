"""`gpt2 train`: pretrain a GPT on text (torch or NumPy backend), with checkpoints and exact resume.

    gpt2 train --model tiny --out runs/verdict --max-steps 200                 # the-verdict, torch, auto device
    gpt2 train --data notes/ more.txt --out runs/notes --max-steps 5000 --checkpoint-interval 500
    gpt2 train --resume runs/notes --max-steps 8000                            # continue that run up to step 8000
    gpt2 train --backend numpy --out runs/np --max-steps 50                    # the NumPy loop, same options
    gpt2 train --nproc 2 --out runs/ddp ...                                    # DDP via torchrun
    torchrun --nproc_per_node=2 -m gpt2cli train --out runs/ddp ...

See docs/training.md. Options left out on --resume come from the run's config.json
(gptcore.engine.run_setup holds those rules).
"""
from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path

from gpt2cli.errors import INTERRUPTED_EXIT_CODE, USER_ERROR_EXIT_CODE, USER_ERRORS, UserError, user_errors
from gpt2cli.options import add_data_alias, add_threads_option, limited_threads


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
    add_data_alias(p, nargs="+")
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
    a("--no-sdpa", dest="sdpa", action="store_false", help="explicit attention (the reference twin; default off CUDA)")
    a("--sample-prompt", metavar="TEXT", help="log a greedy continuation of TEXT at each evaluation")
    a("--sample-tokens", type=int, help="tokens generated for --sample-prompt (default 20)")
    a("--peak-tflops", type=float, help="the GPU's peak TFLOP/s for the MFU figure (default: known GPUs' bf16)")
    a("--nproc", type=int, default=1, help="data-parallel processes: launches torchrun (torch backend; default 1)")
    add_threads_option(p)
    a("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


# ---------------------------------------------------------------------------------------------------
# the command
# ---------------------------------------------------------------------------------------------------

def run(args) -> int:
    from gptcore.formats.runs import NonFiniteLossError, TrainingInterrupted
    from torchgpt.distributed import is_rank_zero, launch, launched_by_torchrun
    if args.nproc > 1 and not launched_by_torchrun():
        if args.backend == "numpy":
            raise UserError("--nproc needs the torch backend; the NumPy loop runs in one process")
        if sys.argv[1:2] != ["train"]:
            raise UserError("--nproc launches `python -m gpt2cli train ...` under torchrun: run it from the "
                            "command line (gpt2 train ... --nproc N)")
        return launch(args.nproc, strip_nproc(sys.argv[1:]))
    if not is_rank_zero():
        return _run_quietly(args)
    try:
        with user_errors(NonFiniteLossError):
            return train_command(args)
    except TrainingInterrupted as interrupt:
        print(f"gpt2 train: {interrupt}", file=sys.stderr)
        return INTERRUPTED_EXIT_CODE


def _run_quietly(args) -> int:
    """A DDP process other than rank 0: the same run, with the exit code of rank 0 but without its messages.
    Every rank meets the same user errors, NaN/inf loss and Ctrl-C (the loss and the stop request are shared),
    and rank 0 reports them once. Problems of this process alone (ProcessSetupError) and crashes still print."""
    from gptcore.formats.runs import NonFiniteLossError
    from torchgpt.distributed import ProcessSetupError
    try:
        return train_command(args)
    except ProcessSetupError:
        raise
    except KeyboardInterrupt:                 # TrainingInterrupted too: rank 0 says where the checkpoint is
        return INTERRUPTED_EXIT_CODE
    except (NonFiniteLossError, *USER_ERRORS):
        return USER_ERROR_EXIT_CODE


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


def note(message: str | None, context=None) -> None:
    """A note on stderr (None: nothing), from rank 0 only: under DDP every process reaches the same notes."""
    if message and (context is None or context.is_main):
        print(f"note: {message}", file=sys.stderr)


def train_command(args) -> int:
    from gptcore.engine import run_setup
    from gptcore.engine.training import settings_dict
    from gptcore.formats.runs import RunLog, list_checkpoints
    from torchgpt.distributed import shutdown_distributed
    given = run_setup.given_options(vars(args))
    resumed = run_setup.resume_source(args.resume, args.out) if args.resume else None
    saved = resumed.run_config if resumed else None
    checkpoint = resumed.checkpoint if resumed else None
    options = run_setup.merged_options(resumed.saved_options if resumed else None, given)
    if options["backend"] == "numpy":
        run_setup.check_numpy_backend_options(given)
    idle = run_setup.nothing_to_do(checkpoint, options)
    if idle:                          # before anything is written: config.json only changes when a run trains
        print(idle)
        return 0
    context, device = _start_processes(options)
    try:
        note(run_setup.keep_global_batch(options, saved, given, context.world_size), context)
        run_setup.complete_schedule(options)
        settings = run_setup.training_settings(options)
        note(run_setup.schedule_end_note(options, saved), context)
        out = resumed.out if resumed else Path(args.out or Path("runs") / time.strftime("train-%Y%m%d-%H%M%S"))
        if not (resumed and resumed.same_folder) and list_checkpoints(out):
            raise ValueError(f"--out {out} already holds a run with checkpoints; continue it with --resume {out} "
                             f"or choose another --out")
        progress = not args.quiet
        run_setup.absolute_paths(options)
        corpus, data_info = _prepare_data_once(options, progress and context.is_main, context)
        note(run_setup.data_change_note(saved, data_info["key"]), context)
        with loading_resume_checkpoint(resumed):
            config, params = run_setup.model_config_and_params(options, checkpoint)
        context_length = options["context_length"] or config.context_length
        if context_length > config.context_length:
            raise ValueError(f"--context-length {context_length} exceeds the model's context length "
                             f"{config.context_length}")
        if corpus.meta["n_vocab"] > config.vocab_size:
            raise ValueError(f"the tokenizer has {corpus.meta['n_vocab']} ids but the model's vocabulary is "
                             f"{config.vocab_size}; use a model with vocab_size >= {corpus.meta['n_vocab']}")
        options["context_length"] = context_length
        options["stride"] = options["stride"] or context_length
        train_set, val_set = run_setup.window_datasets(corpus, context_length, options["stride"])
        if val_set is None:
            note(f"the validation text has {corpus.val_tokens().size} tokens, less than one window of "
                 f"{context_length}; no validation loss (raise --val-fraction or lower --context-length)", context)
        run_log = RunLog(out, enabled=context.is_main)

        def start_run():
            """The run folder's metrics and config.json, written once the checkpoint has loaded: a run that
            fails before training leaves its folder as it was."""
            if resumed and resumed.run_dir is not None:      # in place, or a branch from the run's metrics
                run_log.continue_from(run_setup.checkpoint_step(checkpoint), source_run=resumed.run_dir)
            run_log.write_config({
                "options": options, "backend": options["backend"], "model": config.to_dict(), "data": data_info,
                "settings": settings_dict(settings), "world_size": context.world_size, "device": str(device),
                "resumed_from": str(checkpoint) if checkpoint else None, "command": sys.argv[1:],
                "history": run_setup.run_history(saved, checkpoint, context.world_size, sys.argv[1:])})
        # Saved in every checkpoint, so one copied out of its run folder still resumes exactly (see
        # gptcore.engine.run_setup.checkpoint_run_source).
        metadata = {"run": str(run_log.run_dir), "options": options, "data_key": data_info["key"]}
        with limited_threads(args.threads):
            if options["backend"] == "numpy":
                return _train_numpy(config, params, resumed, train_set, val_set, settings, run_log, progress,
                                    metadata, options, start_run)
            return _train_torch(config, params, resumed, train_set, val_set, settings, run_log, options, context,
                                device, progress, metadata, start_run)
    finally:
        shutdown_distributed()


@contextlib.contextmanager
def loading_resume_checkpoint(resumed):
    """Errors of a --resume checkpoint that does not load, as one line offering the run's older good one."""
    from gptcore.engine.run_setup import corrupt_resume_message
    from gptcore.formats.checkpoint import CheckpointError
    from gptcore.formats.safetensors import WeightsError
    if resumed is None:
        yield
        return
    try:
        yield
    except (CheckpointError, WeightsError, FileNotFoundError) as error:
        raise UserError(corrupt_resume_message(error, resumed)) from error


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


def _start_processes(options: dict):
    """(DistContext, torch device): one CPU process for the NumPy loop, else this process's place under DDP."""
    from torchgpt.distributed import DistContext, init_distributed
    if options["backend"] == "numpy":
        import torch
        return DistContext(), torch.device("cpu")
    return init_distributed(options["device"])


def _prepare_data(options: dict, progress: bool):
    from gptcore.download import DownloadError
    from gptcore.engine.run_setup import prepare_training_data
    with user_errors(DownloadError):
        return prepare_training_data(options, progress)


def _prepare_data_once(options: dict, progress: bool, context):
    """Rank 0 tokenizes (if needed) while the others wait, then they reuse its files."""
    if not context.is_distributed:
        return _prepare_data(options, progress)
    import torch.distributed as dist
    if context.is_main:
        result = _prepare_data(options, progress)
        dist.barrier()
        return result
    dist.barrier()
    return _prepare_data(options, False)


def _train_numpy(config, params, resumed, train_set, val_set, settings, run_log, progress, metadata,
                 options, start_run) -> int:
    import npgpt.model
    from gptcore.formats.checkpoint import load_checkpoint
    from npgpt.train import train
    resume_state = None
    if resumed is not None:
        with loading_resume_checkpoint(resumed):
            config, params, resume_state = load_checkpoint(resumed.checkpoint)
        if resume_state is None:
            raise ValueError(f"{resumed.checkpoint} holds no training state; use --init-from to start from its "
                             f"weights")
    elif params is None:
        params = npgpt.model.init_params(config, seed=settings.seed)
    start_run()
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


def _train_torch(config, params, resumed, train_set, val_set, settings, run_log, options, context, device,
                 progress, metadata, start_run) -> int:
    import torch
    from torchgpt import build_model, load_numpy_params
    from torchgpt.train import RuntimeOptions, TokenBatches, Trainer, ordered_batches
    torch.manual_seed(settings.seed + context.rank)      # dropout masks differ per process
    use_sdpa = options["sdpa"] if options["sdpa"] is not None else device.type == "cuda"
    model = build_model(config, use_sdpa=use_sdpa, seed=settings.seed)
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
    if resumed is not None:
        with loading_resume_checkpoint(resumed):
            trainer.restore(resumed.checkpoint)
    if context.is_main:
        start_run()
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
