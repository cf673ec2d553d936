"""`gpt2 finetune instruct`: instruction finetuning (Alpaca prompts or the model's chat template), then answers
to every test record, with the losses and a judge-free check before and after.

    gpt2 finetune instruct --init-from WEIGHTS --out runs/instruct                   # the book: 355M, 2 epochs
    gpt2 finetune instruct --init-from smollm2-135m-instruct --lora-rank 16 --prompt-format chat --out runs/smol
    gpt2 finetune instruct --init-from smollm2-135m-instruct --lora-rank 8 --backend numpy ...  # NumPy LoRA
    gpt2 evaluate --responses runs/instruct/test_responses.json --judge-model llama3

The run folder (--out) holds what `gpt2 train` writes (config.json, metrics.jsonl/.csv, loss.png,
checkpoints/) plus test_responses.json (the test records, each with "model_response"), metrics.json (the
validation and test loss before the first step and after the last, the exact-answer share before and after,
the times and peak memory), test_responses_before.json (the answers before finetuning to the records the
exact-answer check reads), summary.json and, with LoRA, lora_adapter/. See docs/instruct.md.
"""
from __future__ import annotations

import os
import resource
import sys
import time
from pathlib import Path

from gpt2cli.errors import UserError, user_errors
from gpt2cli.options import add_data_alias, add_threads_option, limited_threads

RESPONSES_FILE = "test_responses.json"
BEFORE_RESPONSES_FILE = "test_responses_before.json"
SUMMARY_FILE = "summary.json"
METRICS_FILE = "metrics.json"
ADAPTER_DIR = "lora_adapter"
MERGED_DIR = "merged"


def register(actions):
    p = actions.add_parser("instruct", help="instruction finetuning (Alpaca or chat format) and answers to the test set",
                           description=__doc__.split("\n\n")[0])
    a = p.add_argument
    a("--data", default="instruction-data", metavar="FILE_OR_NAME",
      help="JSON/JSONL records with instruction, input, output, or a manifest name (default %(default)s)")
    add_data_alias(p)
    a("--data-dir", help="where manifest data sets live (default $GPT2_DATA_DIR or data/cache)")
    a("--init-from", metavar="WEIGHTS", help="start from weights: a GGUF file or a pretrained model's manifest name "
                                             "(smollm2-135m-instruct: its own tokenizer and chat template), an "
                                             "OpenAI folder, Hugging Face folder/.safetensors or one of our "
                                             "checkpoints (the book: GPT-2 355M)")
    a("--model", default="tiny", metavar="PRESET",
      help="model preset when there is no --init-from (a random start; default %(default)s)")
    a("--prompt-format", choices=("alpaca", "chat"), default="alpaca",
      help="alpaca (the book's prompt, default) or chat (the model's own chat template, e.g. SmolLM2's ChatML)")
    a("--backend", choices=("torch", "numpy"), default="torch",
      help="torch (default) or numpy (the hand-written twin, on the CPU)")
    a("--drop-rate", type=float, help="dropout while finetuning (default: the weights' / preset's)")
    a("--out", metavar="DIR", help="the run folder (default runs/instruct-<time>)")
    a("--epochs", type=int, default=2, help="passes over the training split (default %(default)s)")
    a("--max-steps", type=int, help="stop after N optimizer steps instead (quick runs)")
    a("--batch-size", type=int, default=8, help="records per batch (default %(default)s)")
    a("--lr", type=float, default=5e-5, help="AdamW learning rate, constant (default %(default)s)")
    a("--weight-decay", type=float, default=0.1, help="AdamW weight decay (default %(default)s)")
    a("--grad-clip", type=float, default=1.0, help="global gradient-norm clip, 0 turns it off (default %(default)s)")
    a("--max-length", type=int, default=1024, help="tokens per training row, cut beyond (default %(default)s)")
    a("--mask-instruction", action="store_true",
      help="leave the prompt's tokens out of the loss (with --prompt-format chat: everything up to the "
           "assistant's turn)")
    a("--eval-interval", type=int, default=5, metavar="N", help="evaluate every N steps (default %(default)s)")
    a("--eval-batches", type=int, default=5, help="batches per evaluation (default %(default)s)")
    a("--lora-rank", type=int, metavar="R", help="train LoRA adapters of rank R instead of every weight")
    a("--lora-alpha", type=float, metavar="A", help="LoRA alpha (scaling alpha / R; default R)")
    a("--lora-targets", nargs="+", default=["attention", "feedforward"], metavar="T",
      help="layers LoRA adapts: attention, feedforward, head, short names or globs (default attention feedforward)")
    a("--save-merged", action="store_true", help="with LoRA: also save a plain checkpoint with the adapters merged")
    a("--max-new-tokens", type=int, default=256, help="answer length limit for the test records (default %(default)s)")
    a("--device", default="auto", help="torch backend: auto (default), cpu, cuda, cuda:N or mps")
    a("--dtype", default="auto", choices=["auto", "float32", "bfloat16"], help="torch autocast precision (default auto)")
    a("--seed", type=int, default=123, help="seed of the data order, dropout and LoRA init (default %(default)s)")
    a("--quiet", action="store_true", help="no progress bars")
    add_threads_option(p)
    p.set_defaults(func=run)


def resolve_data(name_or_path: str, data_dir: str | None) -> Path:
    """A file path, or the file of a manifest data set (fetched and verified)."""
    from gptcore.datasets import dataset_names, fetch
    from gptcore.download import DownloadError
    path = Path(name_or_path)
    if path.exists() or name_or_path not in dataset_names():
        return path
    with user_errors(DownloadError):
        return fetch(name_or_path, data_dir)


def check_options(args) -> None:
    for name in ("epochs", "batch_size", "max_length", "eval_interval", "eval_batches", "max_new_tokens"):
        if getattr(args, name) <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.max_steps is not None and args.max_steps <= 0:
        raise UserError(f"--max-steps must be positive, got {args.max_steps}")
    if args.lora_rank is None and (args.lora_alpha is not None or args.save_merged):
        raise UserError("--lora-alpha and --save-merged need --lora-rank R")
    if args.backend == "numpy" and (args.device not in ("auto", "cpu") or args.dtype != "auto"):
        raise UserError("--backend numpy runs on the CPU in the weights' precision: drop --device and --dtype, "
                        "or use --backend torch")


def load_start(args):
    """(config, NumPy params, ModelText): --init-from (its tokenizer when it carries one: a GGUF) or a
    random --model preset with GPT-2's tokenizer."""
    from gptcore.engine.run_setup import model_config_and_params
    from gptcore.model_text import model_text
    options = {"model": args.model, "init_from": args.init_from, "drop_rate": args.drop_rate, "emb_dim": None,
               "n_layers": None, "n_heads": None, "context_length": None}
    config, params = model_config_and_params(options, None)
    if params is None:
        from npgpt.model import init_params
        print(f"note: no --init-from: finetuning a randomly initialised {args.model!r} model (for tests and "
              f"smoke runs); the book starts from GPT-2 355M", file=sys.stderr)
        params = init_params(config, seed=args.seed)
    text = model_text(args.init_from)
    if config.vocab_size < text.tokenizer.n_vocab:
        raise UserError(f"the model's vocabulary ({config.vocab_size}) is smaller than {text.source}'s "
                        f"({text.tokenizer.n_vocab}); these weights carry no tokenizer this project reads: give a "
                        f"model trained on GPT-2 token ids, or a Llama's GGUF file (its own tokenizer)")
    return config, params, text


def add_adapters(args, params):
    """(params with fresh LoRA adapters, LoRAConfig) with --lora-rank (npgpt's seeded init, the same for both
    backends), else (params, None)."""
    if args.lora_rank is None:
        return params, None
    from gptcore.lora import LoRAConfig
    from npgpt.lora import add_lora
    lora_config = LoRAConfig(rank=args.lora_rank, alpha=args.lora_alpha or float(args.lora_rank),
                             targets=tuple(args.lora_targets))
    return add_lora(params, lora_config, seed=args.seed), lora_config


class NumpyTwin:
    """The NumPy side of the command: the parameter dict, the backend of the training loop, losses and answers."""

    def __init__(self, params, config, make_batches, settings, trainable, eval_sets, metadata):
        from npgpt.instruct import InstructionBackend
        self.params, self.config, self.device = params, config, "cpu"
        self.backend = InstructionBackend(params, config, make_batches, settings, trainable=trainable,
                                          eval_sets=eval_sets, metadata=metadata)

    def fit(self, run_log, progress):
        from gptcore.engine.training import TrainingLoop
        from npgpt.speed.memory import keep_freed_memory
        keep_freed_memory()
        self.loop = TrainingLoop(self.backend, self.backend.settings, run_log=run_log, progress=progress)
        history = self.loop.fit()
        return history, self.loop.step, self.loop.last_checkpoint

    def loss(self, batches) -> float:
        from npgpt.instruct import mean_loss
        return mean_loss(self.params, self.config, batches)

    def answer(self, records, tokenizer, fmt, max_new_tokens, progress):
        from npgpt.instruct import answer_records
        return answer_records(self.params, self.config, records, tokenizer, max_new_tokens=max_new_tokens,
                              progress=progress, instruction_format=fmt)

    def save_adapters(self, path, lora_config, metadata, merged_path=None):
        from gptcore.formats.checkpoint import save_checkpoint
        from gptcore.lora import save_lora
        from npgpt.lora import merge_lora
        save_lora(path, self.params, lora_config, metadata=metadata)
        if merged_path is not None:
            save_checkpoint(merged_path, merge_lora(self.params), self.config, metadata={**metadata, "lora_merged": True})


class TorchTwin:
    """The torch side: GPTModel (with the same adapters), torchgpt.train.Trainer over the same batches."""

    def __init__(self, params, config, make_batches, settings, lora_config, eval_sets, metadata, args):
        import torch
        from gptcore.lora import split_lora
        from torchgpt import build_model, load_numpy_params, pick_device
        from torchgpt.lora import attach_lora
        from torchgpt.train import LoaderBatches, RuntimeOptions, Trainer
        self.device = pick_device(args.device)
        torch.manual_seed(args.seed)
        base, adapters = split_lora(params)
        model = load_numpy_params(build_model(config, use_sdpa=self.device.type == "cuda", seed=args.seed), base)
        if lora_config is not None:
            attach_lora(model, adapters, lora_config)
        self.model = model.to(self.device)
        self.trainer = Trainer(self.model, LoaderBatches(make_batches), settings, eval_sets=eval_sets,
                               runtime=RuntimeOptions(device=str(self.device), dtype=args.dtype), device=self.device,
                               metadata=metadata, progress=not args.quiet)

    def fit(self, run_log, progress):
        self.trainer.loop.run_log = run_log
        history = self.trainer.fit()
        return history, self.trainer.step, self.trainer.last_checkpoint

    def loss(self, batches) -> float:
        from torchgpt.instruct import mean_loss
        return mean_loss(self.model, batches, device=self.device)

    def answer(self, records, tokenizer, fmt, max_new_tokens, progress):
        from torchgpt.instruct import answer_records
        return answer_records(self.model, records, tokenizer, max_new_tokens=max_new_tokens, progress=progress,
                              instruction_format=fmt)

    def save_adapters(self, path, lora_config, metadata, merged_path=None):
        from torchgpt.lora import lora_state_dict, merge_lora, save_lora, unmerge_lora
        save_lora(path, self.model, lora_config, metadata=metadata)
        if merged_path is not None:
            from torchgpt.checkpoint import save_training_checkpoint
            adapters = lora_state_dict(self.model)
            save_training_checkpoint(merged_path, merge_lora(self.model), metadata={**metadata, "lora_merged": True})
            unmerge_lora(self.model, adapters)


def peak_rss_mib() -> float:
    """This process's peak resident memory so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(args) -> int:
    from gptcore.formats.runs import NonFiniteLossError, TrainingInterrupted
    check_options(args)
    try:
        with user_errors(NonFiniteLossError), limited_threads(args.threads):
            return finetune(args)
    except TrainingInterrupted as interrupt:
        print(f"gpt2 finetune instruct: {interrupt}", file=sys.stderr)
        return 130


def finetune(args) -> int:
    from gptcore.engine.training import TrainSettings, settings_dict
    from gptcore.fileio import atomic_write_json
    from gptcore.formats.runs import RunLog, list_checkpoints
    from gptcore.lora import count_trainable_params, is_trainable_name
    from gptcore.tasks.chat import ChatTemplateError
    from gptcore.tasks.instruct import (exact_answer_share, instruction_batches, instruction_format,
                                        load_instruction_data, split_records)

    started = time.perf_counter()
    data_path = resolve_data(args.data, args.data_dir)
    records = load_instruction_data(data_path)
    train_records, test_records, val_records = split_records(records)
    if len(train_records) < args.batch_size:
        raise ValueError(f"{data_path}: {len(train_records)} training records (85% of {len(records)}), fewer than "
                         f"one batch of {args.batch_size}; lower --batch-size or give more records")
    out = Path(args.out) if args.out else Path("runs") / time.strftime("instruct-%Y%m%d-%H%M%S")
    if list_checkpoints(out):
        raise ValueError(f"--out {out} already holds a run with checkpoints; choose another --out")

    config, params, text = load_start(args)
    tokenizer = text.tokenizer
    with user_errors(ChatTemplateError):
        fmt = instruction_format(args.prompt_format, tokenizer, text.stop_ids, template=text.chat_template)
        if fmt.name == "chat":
            fmt.check_chat_rendering(train_records[0], tokenizer)
        examples = {name: [fmt.encode(record, tokenizer) for record in split]
                    for name, split in (("train", train_records), ("val", val_records), ("test", test_records))}
    max_length = min(args.max_length, config.context_length)
    if max_length < args.max_length:
        print(f"note: rows are cut at the model's context length {max_length} (--max-length {args.max_length})",
              file=sys.stderr)
    cut = sum(ex.prompt_length >= max_length for ex in examples["train"])
    if cut and args.mask_instruction:
        print(f"note: {cut} training records have prompts of >= {max_length} tokens: with --mask-instruction "
              f"they add nothing to the loss", file=sys.stderr)
    params, lora_config = add_adapters(args, params)
    trainable = [name for name in params if is_trainable_name(name)] if lora_config else list(params)

    steps_per_epoch = len(examples["train"]) // args.batch_size
    max_steps = args.max_steps or args.epochs * steps_per_epoch
    settings = TrainSettings(max_steps=max_steps, batch_size=args.batch_size, lr=args.lr, cosine=False,
                             weight_decay=args.weight_decay, grad_clip=args.grad_clip or None,
                             eval_interval=args.eval_interval, eval_batches=args.eval_batches,
                             checkpoint_interval=0, keep_checkpoints=1, seed=args.seed)
    collate = {"max_length": max_length, "mask_instruction": args.mask_instruction, "pad_token_id": fmt.end_id}

    def in_order(split):             # a whole split, in file order (evaluation, the before/after losses)
        return lambda: instruction_batches(examples[split], args.batch_size, shuffle=False, drop_last=False, **collate)

    def make_batches(epoch):         # the training order: the same for both backends
        return instruction_batches(examples["train"], args.batch_size, shuffle=True, drop_last=True, seed=args.seed,
                                   epoch=epoch, **collate)

    eval_sets = {"eval_train": in_order("train"), **({"val": in_order("val")} if val_records else {})}
    metadata = {"run": str(out), "task": "instruct", "init_from": args.init_from}
    if args.backend == "numpy":
        twin = NumpyTwin(params, config, make_batches, settings, trainable, eval_sets, metadata)
    else:
        twin = TorchTwin(params, config, make_batches, settings, lora_config, eval_sets, metadata, args)
    n_trainable = count_trainable_params(params) if lora_config else sum(int(v.size) for v in unique_values(params))
    n_total = sum(int(v.size) for v in unique_values({k: v for k, v in params.items() if not is_trainable_name(k)}))
    del params

    progress = not args.quiet
    run_log = RunLog(out)
    run_log.write_config({"task": "instruct", "options": {k: v for k, v in vars(args).items() if k != "func"},
                          "model": config.to_dict(), "tokenizer": text.source, "prompt_format": fmt.name,
                          "data": {"file": str(data_path), "records": len(records), "train": len(train_records),
                                   "test": len(test_records), "val": len(val_records)},
                          "lora": lora_config.to_dict() if lora_config else None, "settings": settings_dict(settings),
                          "backend": args.backend, "device": str(twin.device), "command": sys.argv[1:]})

    # Before the first step: the losses and the answers the exact-answer check reads.
    exact = exact_answer_share([{**r, "model_response": ""} for r in test_records])
    checked = [test_records[i] for i in exact["indices"]]
    before = {"val_loss": twin.loss(in_order("val")()) if val_records else None,
              "test_loss": twin.loss(in_order("test")()) if test_records else None}
    answered_before = twin.answer(checked, tokenizer, fmt, args.max_new_tokens, progress)
    atomic_write_json(out / BEFORE_RESPONSES_FILE, answered_before)
    share_before = exact_answer_share(answered_before)
    # Written now, so a run stopped during training keeps its before-numbers (the end rewrites the file whole).
    atomic_write_json(out / METRICS_FILE, {
        "status": "training (the numbers before the first step; the rest is written when the run ends)",
        "initial_val_loss": before["val_loss"], "initial_test_loss": before["test_loss"],
        "exact_answer_records": share_before["records"], "exact_answer_hits_before": share_before["hits"],
        "exact_answer_share_before": share_before["share"]})

    train_started = time.perf_counter()
    history, steps, checkpoint = twin.fit(run_log, progress)
    train_seconds = time.perf_counter() - train_started
    after = {"val_loss": twin.loss(in_order("val")()) if val_records else None,
             "test_loss": twin.loss(in_order("test")()) if test_records else None}

    if lora_config is not None:
        twin.save_adapters(out / ADAPTER_DIR, lora_config, metadata, out / MERGED_DIR if args.save_merged else None)
    answered = twin.answer(test_records, tokenizer, fmt, args.max_new_tokens, progress)
    responses_path = atomic_write_json(out / RESPONSES_FILE, answered)
    share_after = exact_answer_share(answered)

    epochs = steps / max(steps_per_epoch, 1)
    metrics = {"initial_val_loss": before["val_loss"], "final_val_loss": after["val_loss"],
               "initial_test_loss": before["test_loss"], "final_test_loss": after["test_loss"],
               "exact_answer_records": share_after["records"],
               "exact_answer_hits_before": share_before["hits"], "exact_answer_hits_after": share_after["hits"],
               "exact_answer_share_before": share_before["share"], "exact_answer_share_after": share_after["share"],
               "exact_answer_rule": "test records whose output is one word or number after normalize_answer "
                                    "(NFKC, lower case, punctuation deleted); a hit when that word is one of "
                                    "the response's normalized words",
               "backend": args.backend, "prompt_format": fmt.name, "mask_instruction": args.mask_instruction,
               "lora": lora_config.to_dict() if lora_config else None, "steps": steps, "epochs": epochs,
               "trainable_params": n_trainable, "total_params": n_total,
               "train_seconds": train_seconds, "seconds_per_epoch": train_seconds / epochs if epochs else None,
               "peak_rss_mib": peak_rss_mib(), "load_average": list(os.getloadavg()),
               "total_seconds": time.perf_counter() - started, "device": str(twin.device)}
    atomic_write_json(out / METRICS_FILE, metrics)
    last_eval = next((e for e in reversed(history) if "val_loss" in e or "eval_train_loss" in e), {})
    summary = {"steps": steps, "epochs": epochs, "trainable_params": n_trainable, "total_params": n_total,
               "lora": lora_config.to_dict() if lora_config else None,
               "final_train_loss": history[-1]["train_loss"] if history else None,
               "eval_train_loss": last_eval.get("eval_train_loss"), "val_loss": last_eval.get("val_loss"),
               "train_seconds": train_seconds, "total_seconds": metrics["total_seconds"], "backend": args.backend,
               "device": str(twin.device), "responses": str(responses_path), "checkpoint": str(checkpoint)}
    atomic_write_json(out / SUMMARY_FILE, summary)
    print_report(args, metrics, summary, len(answered), responses_path)
    return 0


def unique_values(params: dict):
    """Each array once (a tied head is the embedding under a second name)."""
    from gptcore.params import unique_arrays
    return [value for _, value in unique_arrays(params)]


def _loss_change(before, after) -> str:
    return "n/a" if before is None else f"{before:.3f} -> {after:.3f}"


def _share(value) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def print_report(args, metrics: dict, summary: dict, n_answers: int, responses_path) -> None:
    lora = metrics["lora"]
    print(f"instruct: {summary['steps']} steps on {summary['device']} ({args.backend} backend, "
          f"{metrics['prompt_format']} prompts), {summary['trainable_params']:,} of {summary['total_params']:,} "
          f"parameters trained{' (LoRA r=%d)' % lora['rank'] if lora else ''}; train loss "
          f"{summary['final_train_loss']:.3f}; {n_answers} test answers -> {responses_path}")
    print(f"  val loss {_loss_change(metrics['initial_val_loss'], metrics['final_val_loss'])}, test loss "
          f"{_loss_change(metrics['initial_test_loss'], metrics['final_test_loss'])} (before the first step -> after)")
    print(f"  one-word answers contained: {metrics['exact_answer_hits_before']}/{metrics['exact_answer_records']} "
          f"({_share(metrics['exact_answer_share_before'])}) before, {metrics['exact_answer_hits_after']}/"
          f"{metrics['exact_answer_records']} ({_share(metrics['exact_answer_share_after'])}) after")
    per_epoch = metrics["seconds_per_epoch"]
    print(f"  {metrics['train_seconds']:.1f} s training" + (f", {per_epoch:.1f} s per epoch" if per_epoch else "")
          + f", peak RSS {metrics['peak_rss_mib']:,.0f} MiB")
