"""`gpt2 finetune instruct`: instruction finetuning (Alpaca prompts), then answers to every test record.

    gpt2 finetune instruct --init-from WEIGHTS --out runs/instruct                   # the book: 355M, 2 epochs
    gpt2 finetune instruct --init-from WEIGHTS --lora-rank 16 --lora-alpha 16 ...    # LoRA: adapters only
    gpt2 evaluate --responses runs/instruct/test_responses.json --judge-model llama3

The run folder (--out) holds what `gpt2 train` writes (config.json, metrics.jsonl/.csv, loss.png,
checkpoints/) plus test_responses.json (the test records, each with "model_response"), summary.json and,
with LoRA, lora_adapter/ (adapter.safetensors + adapter_config.json). See docs/instruct.md.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from gpt2cli.errors import UserError, user_errors
from gpt2cli.options import add_data_alias

RESPONSES_FILE = "test_responses.json"
SUMMARY_FILE = "summary.json"
ADAPTER_DIR = "lora_adapter"
MERGED_DIR = "merged"


def register(actions):
    p = actions.add_parser("instruct", help="instruction finetuning (Alpaca format) and answers to the test set",
                           description=__doc__.split("\n\n")[0])
    a = p.add_argument
    a("--data", default="instruction-data", metavar="FILE_OR_NAME",
      help="JSON/JSONL records with instruction, input, output, or a manifest name (default %(default)s)")
    add_data_alias(p)
    a("--data-dir", help="where manifest data sets live (default $GPT2_DATA_DIR or data/cache)")
    a("--init-from", metavar="WEIGHTS", help="start from weights: OpenAI folder, Hugging Face folder/.safetensors "
                                             "or one of our checkpoints (the book: GPT-2 355M)")
    a("--model", default="tiny", metavar="PRESET",
      help="model preset when there is no --init-from (a random start; default %(default)s)")
    a("--drop-rate", type=float, help="dropout while finetuning (default: the weights' / preset's)")
    a("--out", metavar="DIR", help="the run folder (default runs/instruct-<time>)")
    a("--epochs", type=int, default=2, help="passes over the training split (default %(default)s)")
    a("--max-steps", type=int, help="stop after N optimizer steps instead (quick runs)")
    a("--batch-size", type=int, default=8, help="records per batch (default %(default)s)")
    a("--lr", type=float, default=5e-5, help="AdamW learning rate, constant (default %(default)s)")
    a("--weight-decay", type=float, default=0.1, help="AdamW weight decay (default %(default)s)")
    a("--grad-clip", type=float, default=1.0, help="global gradient-norm clip, 0 turns it off (default %(default)s)")
    a("--max-length", type=int, default=1024, help="tokens per training row, cut beyond (default %(default)s)")
    a("--mask-instruction", action="store_true", help="leave the prompt's tokens out of the loss")
    a("--eval-interval", type=int, default=5, metavar="N", help="evaluate every N steps (default %(default)s)")
    a("--eval-batches", type=int, default=5, help="batches per evaluation (default %(default)s)")
    a("--lora-rank", type=int, metavar="R", help="train LoRA adapters of rank R instead of every weight")
    a("--lora-alpha", type=float, metavar="A", help="LoRA alpha (scaling alpha / R; default R)")
    a("--lora-targets", nargs="+", default=["attention", "feedforward"], metavar="T",
      help="layers LoRA adapts: attention, feedforward, head, short names or globs (default attention feedforward)")
    a("--save-merged", action="store_true", help="with LoRA: also save a plain checkpoint with the adapters merged")
    a("--max-new-tokens", type=int, default=256, help="answer length limit for the test records (default %(default)s)")
    a("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")
    a("--dtype", default="auto", choices=["auto", "float32", "bfloat16"], help="autocast precision (default auto)")
    a("--seed", type=int, default=123, help="seed of the data order, dropout and LoRA init (default %(default)s)")
    a("--quiet", action="store_true", help="no progress bars")
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


def build_model(args, device):
    """(GPTModel, config, lora_config or None) from --init-from or --model, LoRA added when asked."""
    from gptcore.engine.run_setup import model_config_and_params
    from gptcore.lora import LoRAConfig
    from torchgpt import build_model, load_numpy_params
    from torchgpt.lora import add_lora
    options = {"model": args.model, "init_from": args.init_from, "drop_rate": args.drop_rate, "emb_dim": None,
               "n_layers": None, "n_heads": None, "context_length": None}
    config, params = model_config_and_params(options, None)
    if params is None:
        print(f"note: no --init-from: finetuning a randomly initialised {args.model!r} model (for tests and "
              f"smoke runs); the book starts from GPT-2 355M", file=sys.stderr)
    model = build_model(config, use_sdpa=device.type == "cuda", seed=args.seed)
    if params is not None:
        load_numpy_params(model, params)
        del params
    lora_config = None
    if args.lora_rank is not None:
        lora_config = LoRAConfig(rank=args.lora_rank, alpha=args.lora_alpha or float(args.lora_rank),
                                 targets=tuple(args.lora_targets))
        add_lora(model, lora_config, seed=args.seed)
    return model.to(device), config, lora_config


def run(args) -> int:
    from gptcore.formats.runs import NonFiniteLossError, TrainingInterrupted
    check_options(args)
    try:
        with user_errors(NonFiniteLossError):
            return finetune(args)
    except TrainingInterrupted as interrupt:
        print(f"gpt2 finetune instruct: {interrupt}", file=sys.stderr)
        return 130


def finetune(args) -> int:
    import torch
    from gptcore.fileio import atomic_write_json
    from gptcore.tasks.instruct import load_instruction_data, split_records
    from gptcore.formats.runs import RunLog, list_checkpoints
    from gptcore.tokenizer import get_tokenizer
    from gptcore.engine.training import TrainSettings, settings_dict
    from torchgpt import pick_device
    from torchgpt.instruct import InstructionDataset, answer_records, instruction_loader
    from torchgpt.lora import count_trainable_params, save_lora
    from torchgpt.train import LoaderBatches, RuntimeOptions, Trainer

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
    device = pick_device(args.device)
    torch.manual_seed(args.seed)
    model, config, lora_config = build_model(args, device)
    max_length = min(args.max_length, config.context_length)
    if max_length < args.max_length:
        print(f"note: rows are cut at the model's context length {max_length} (--max-length {args.max_length})",
              file=sys.stderr)

    tokenizer = get_tokenizer()
    train_set, val_set = InstructionDataset(train_records, tokenizer), InstructionDataset(val_records, tokenizer)
    cut = sum(ex.prompt_length >= max_length for ex in train_set.examples)
    if cut and args.mask_instruction:
        print(f"note: {cut} training records have prompts of >= {max_length} tokens: with --mask-instruction "
              f"they add nothing to the loss", file=sys.stderr)
    steps_per_epoch = len(train_set) // args.batch_size
    max_steps = args.max_steps or args.epochs * steps_per_epoch
    settings = TrainSettings(max_steps=max_steps, batch_size=args.batch_size, lr=args.lr, cosine=False,
                             weight_decay=args.weight_decay, grad_clip=args.grad_clip or None,
                             eval_interval=args.eval_interval, eval_batches=args.eval_batches,
                             checkpoint_interval=0, keep_checkpoints=1, seed=args.seed)
    loader_options = {"max_length": max_length, "mask_instruction": args.mask_instruction}

    def train_loader(epoch):
        return instruction_loader(train_set, args.batch_size, shuffle=True, drop_last=True, seed=args.seed + epoch,
                                  **loader_options)

    eval_sets = {"eval_train": lambda: instruction_loader(train_set, args.batch_size, shuffle=False,
                                                          drop_last=False, **loader_options)}
    if len(val_set):
        eval_sets["val"] = lambda: instruction_loader(val_set, args.batch_size, shuffle=False, drop_last=False,
                                                      **loader_options)
    trainable = count_trainable_params(model)
    total = sum(p.numel() for p in model.parameters())
    run_log = RunLog(out)
    run_log.write_config({"task": "instruct", "options": {k: v for k, v in vars(args).items() if k != "func"},
                          "model": config.to_dict(), "data": {"file": str(data_path), "records": len(records),
                                                              "train": len(train_records), "test": len(test_records),
                                                              "val": len(val_records)},
                          "lora": lora_config.to_dict() if lora_config else None, "settings": settings_dict(settings),
                          "device": str(device), "command": sys.argv[1:]})
    trainer = Trainer(model, LoaderBatches(train_loader), settings, eval_sets=eval_sets, run_log=run_log,
                      runtime=RuntimeOptions(device=str(device), dtype=args.dtype), device=device,
                      metadata={"run": str(out), "task": "instruct"}, progress=not args.quiet)
    history = trainer.fit()
    train_seconds = time.perf_counter() - started

    if lora_config is not None:
        save_lora(out / ADAPTER_DIR, model, lora_config, metadata={"run": str(out), "init_from": args.init_from})
        if args.save_merged:
            from torchgpt.checkpoint import save_training_checkpoint
            from torchgpt.lora import lora_state_dict, merge_lora, unmerge_lora
            adapters = lora_state_dict(model)
            save_training_checkpoint(out / MERGED_DIR, merge_lora(model), metadata={"run": str(out), "lora_merged": True})
            unmerge_lora(model, adapters)

    answered = answer_records(model, test_records, tokenizer, max_new_tokens=args.max_new_tokens,
                              progress=not args.quiet)
    responses_path = atomic_write_json(out / RESPONSES_FILE, answered)
    last_eval = next((e for e in reversed(history) if "val_loss" in e or "eval_train_loss" in e), {})
    summary = {"steps": trainer.step, "epochs": trainer.step / max(steps_per_epoch, 1),
               "trainable_params": trainable, "total_params": total, "lora": lora_config.to_dict() if lora_config else None,
               "final_train_loss": history[-1]["train_loss"] if history else None,
               "eval_train_loss": last_eval.get("eval_train_loss"), "val_loss": last_eval.get("val_loss"),
               "train_seconds": train_seconds, "total_seconds": time.perf_counter() - started,
               "device": str(device), "responses": str(responses_path), "checkpoint": str(trainer.last_checkpoint)}
    atomic_write_json(out / SUMMARY_FILE, summary)
    val_text = f", val loss {summary['val_loss']:.3f}" if summary["val_loss"] is not None else ""
    print(f"instruct: {trainer.step} steps on {device}, {trainable:,} of {total:,} parameters trained"
          f"{' (LoRA r=%d)' % lora_config.rank if lora_config else ''}; train loss {summary['final_train_loss']:.3f}"
          f"{val_text}; {len(answered)} test answers -> {responses_path}")
    return 0
