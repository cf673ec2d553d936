"""`gpt2 finetune classify`: finetune a GPT as an SMS spam classifier (ham / spam), the book's chapter 6.

    gpt2 finetune classify --init-from gpt2/124M --out runs/spam            # from OpenAI/HF/our weights
    gpt2 finetune classify --model tiny --trainable all --lr 5e-4 --epochs 8 --out runs/spam-scratch  # from scratch

The run folder (--out) receives:
    model/          the classifier checkpoint (gptcore.formats.checkpoint format; metadata: task, labels, max_length)
    metrics.json    train/val/test accuracy, precision, recall, F1 and confusion matrix on the test split,
                    plus the settings, sizes and the whole history
    config.json, metrics.jsonl, metrics.csv, loss.png    gptcore.formats.runs.RunLog's run files (the run's settings;
                    one record per step, written as training goes, with the accuracies at epoch ends)
    accuracy.png    train / validation / test accuracy per epoch
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from gpt2cli.errors import user_errors
from gpt2cli.options import (add_backend_and_device_options, add_data_file_option, add_threads_option,
                             classifier_backend, limited_threads, one_line_warnings)

DEFAULT_PRESET = "gpt2-small"
# Training defaults by architecture: GPT-2 keeps the book's; Llama's were measured on SmolLM2-135M-Instruct
# (docs/classification.md).
DEFAULTS = {"gpt2": {"epochs": 5, "lr": 5e-5}, "llama": {"epochs": 5, "lr": 1e-4}}
ACCURACY_KEYS = ("train_accuracy", "val_accuracy", "test_accuracy")


def register(actions):
    from gptcore.tasks.classification import TRAINABLE_CHOICES

    parser = actions.add_parser(
        "classify", help="finetune a GPT as an SMS spam classifier (ham/spam)",
        description="Replace the GPT's output head by a ham/spam head read at each message's last real token "
                    "and finetune it on the UCI SMS Spam Collection (balanced 747 + 747 by default, split "
                    "70/10/20).")
    model = parser.add_argument_group("model")
    model.add_argument("--init-from", metavar="PATH", default=None,
                       help="start from these weights: an OpenAI GPT-2 folder, a Hugging Face folder or "
                            ".safetensors file, a Llama GGUF file or its manifest name (smollm2-135m-instruct: "
                            "messages are read with the file's own tokenizer), or one of our checkpoints / run "
                            "folders (default: from scratch)")
    model.add_argument("--model", metavar="PRESET", default=None,
                       help=f"model size trained from scratch when there is no --init-from (default "
                            f"{DEFAULT_PRESET}; tiny, gpt2-small, ... or 124M, ...)")
    model.add_argument("--trainable", choices=TRAINABLE_CHOICES, default=None,
                       help="what trains: the head only, the last --last-k blocks + final norm + head "
                            "(default, the book's choice), or all parameters")
    model.add_argument("--lora-rank", type=int, default=None, metavar="R",
                       help="train LoRA adapters of rank R on --lora-targets instead (everything else frozen)")
    model.add_argument("--lora-alpha", type=float, default=None, metavar="A",
                       help="LoRA alpha, the update is scaled by A / R (default R)")
    model.add_argument("--lora-targets", nargs="+", default=["attention", "feedforward", "head"], metavar="T",
                       help="layers LoRA adapts: attention, feedforward, head (the new cls_head), short names "
                            "or globs (default: all three, as the book's appendix E)")
    model.add_argument("--last-k", type=int, default=1, metavar="K",
                       help="number of last blocks that train with --trainable last-k (default 1)")
    model.add_argument("--drop-rate", type=float, default=0.0, help="dropout while finetuning (default 0.0)")

    data = parser.add_argument_group("data")
    add_data_file_option(data, help="a `label<TAB>text` file (default: the SMS Spam Collection from the data "
                                    "manifest)")
    data.add_argument("--data-dir", default=None, help="data folder for the manifest's files "
                                                       "(default: $GPT2_DATA_DIR, else <repo>/data/cache)")
    data.add_argument("--no-balance", action="store_true",
                      help="keep every message (4,827 ham, 747 spam) and weight the loss by class instead of "
                           "undersampling ham to 747")
    data.add_argument("--max-length", type=int, default=None, metavar="TOKENS",
                      help="pad/truncate messages to this many tokens (default: the longest training message, "
                           "at most the model's context length)")
    data.add_argument("--seed", type=int, default=123,
                      help="seed of the balancing, the split, the initialization, batch order and dropout "
                           "(default %(default)s)")

    train = parser.add_argument_group("training")
    train.add_argument("--epochs", type=int, default=None,
                       help=f"passes over the training split (default {DEFAULTS['gpt2']['epochs']}; "
                            f"{DEFAULTS['llama']['epochs']} for Llama models)")
    train.add_argument("--batch-size", type=int, default=8, help="messages per step (default %(default)s)")
    train.add_argument("--lr", type=float, default=None,
                       help=f"AdamW learning rate (default {DEFAULTS['gpt2']['lr']:g}; {DEFAULTS['llama']['lr']:g} "
                            f"for Llama models)")
    train.add_argument("--weight-decay", type=float, default=0.1, help="AdamW weight decay (default %(default)s)")
    train.add_argument("--grad-clip", type=float, default=None, metavar="NORM",
                       help="clip the global gradient norm (default: no clipping, as the book)")
    train.add_argument("--eval-interval", type=int, default=50, metavar="STEPS",
                       help="evaluate train/validation loss every STEPS optimizer steps (default 50)")
    train.add_argument("--eval-batches", type=int, default=5, metavar="N",
                       help="batches per loss evaluation (default 5)")

    run = parser.add_argument_group("run")
    add_backend_and_device_options(run)
    run.add_argument("--out", metavar="DIR", default="runs/classify",
                     help="run folder for the checkpoint, plots and metrics.json (default runs/classify)")
    add_threads_option(run)
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.add_argument("--no-frozen-cache", action="store_true",
                     help="run the whole model every step; by default, when only the last blocks (and final "
                          "norm, head) train and dropout is 0, the frozen blocks' output is computed once per "
                          "message and reused every epoch (the same results, an epoch costs the trained part)")
    parser.set_defaults(func=run_finetune)


def load_initial_model(args):
    """(config, LM-or-classifier params, description) from --init-from, else a fresh --model preset."""
    import numpy as np

    from gptcore.config import get_config
    from npgpt.model import init_params
    from gptcore.formats.weights import load_weights

    if args.init_from is None:
        preset = args.model or DEFAULT_PRESET
        config = get_config(preset)
        return config, init_params(config, seed=args.seed, dtype=np.float32), f"from scratch ({preset})"
    config, params = load_weights(args.init_from)   # run folders resolve to their checkpoint
    if args.model is not None:
        wanted = get_config(args.model)
        shape = ("emb_dim", "n_heads", "n_layers")
        if any(getattr(wanted, field) != getattr(config, field) for field in shape):
            raise ValueError(f"--model {args.model} does not match the weights in {args.init_from} "
                             f"(emb_dim={config.emb_dim}, n_heads={config.n_heads}, n_layers={config.n_layers}); "
                             f"leave --model out, the size comes from --init-from")
    # float32 for training whatever the file holds (the LM head, tied or not, is dropped by the caller)
    params = {name: np.asarray(value, dtype=np.float32) for name, value in params.items()}
    return config, params, f"--init-from {args.init_from}"


def fetch_sms_spam(data_dir, progress=True) -> Path:
    """The verified SMS Spam Collection from the data manifest (downloaded and extracted when missing)."""
    from gptcore.datasets import fetch
    from gptcore.download import DownloadError

    with user_errors(DownloadError):   # a failed or corrupt download: one line, exit code 2
        return fetch("sms-spam", data_dir, progress=progress)


def run_finetune(args) -> int:
    from gptcore.formats.runs import NonFiniteLossError

    with one_line_warnings(), limited_threads(args.threads), user_errors(NonFiniteLossError):
        return _run(args)


def _run(args) -> int:
    from gptcore.engine.classification import train_classifier
    from gptcore.formats.checkpoint import save_checkpoint
    from gptcore.tasks.classification import balanced_class_weights
    from gptcore.tasks.classification_data import SMS_LABELS
    from gptcore.tasks.classification_tokenizer import tokenizer_for_weights
    from gptcore.fileio import atomic_write_json
    from gptcore.formats.runs import FINAL_MODEL_DIR, RunLog

    out = Path(args.out)
    data_file, frames = load_splits(args)
    text = tokenizer_for_weights(args.init_from)
    config, params, source = build_classifier(args, num_classes=len(SMS_LABELS), text=text)
    settings = classifier_settings(args, config)
    params, trainable_names, lora_config, what_trains = choose_trainable(args, config, params)
    train, val, test = encode_splits(frames, args.max_length, config.context_length, text)
    class_weights = balanced_class_weights(train.labels, len(SMS_LABELS)) if args.no_balance else None

    backend, device = classifier_backend(args.backend, params, config, len(SMS_LABELS), args.device)
    backend.prepare_training(trainable_names, settings, class_weights)
    counts = {"trainable_params": sum(int(params[name].size) for name in trainable_names),
              "total_params": sum(int(value.size) for name, value in params.items()
                                  if not name.endswith(".lora_scaling"))}
    print(f"classifier: {source}, {config.n_layers} blocks x {config.emb_dim} wide; trains {what_trains} "
          f"({counts['trainable_params']:,} of {counts['total_params']:,} parameters) with the {args.backend} "
          f"backend on {device}")
    print(f"data: {len(train)} train / {len(val)} validation / {len(test)} test messages"
          f"{' (balanced)' if not args.no_balance else ' (all, class-weighted loss)'}, padded to "
          f"{train.max_length} tokens with {text.source}")

    run_log = RunLog(out, extra_columns=("examples_seen", *ACCURACY_KEYS), ylabel="loss")
    run_log.continue_from(0)   # a fresh run: drop the records an earlier run left in this folder
    run_log.write_config({"task": "classification", "init": source, "backend": args.backend, "device": device,
                          "model": config.to_dict(), "settings": settings.to_dict(),
                          "data": {"file": str(data_file), "balanced": not args.no_balance,
                                   "max_length": train.max_length, "tokenizer": text.source},
                          "arguments": arguments(args), "command": sys.argv[1:]})
    started = time.perf_counter()
    history = train_classifier(backend, train, val, test, settings, class_weights=class_weights,
                               progress=not args.quiet, on_log=run_log.log, cache_frozen=not args.no_frozen_cache)
    train_seconds = time.perf_counter() - started
    if history["frozen_blocks"]:
        print(f"frozen blocks 0-{history['frozen_blocks'] - 1} ran once per message ({history['cache_seconds']:.1f} s); "
              f"the epochs ran the rest")

    metrics = final_metrics(history, (train, val, test), class_weights, args)
    metrics.update(init=source, **counts, device=device, train_seconds=round(train_seconds, 2),
                   frozen_blocks_cached=history["frozen_blocks"], frozen_cache_seconds=history["cache_seconds"],
                   epoch_seconds=[entry["seconds"] for entry in history["epochs"]], tokenizer=text.source,
                   settings=settings.to_dict(), model_config=config.to_dict(), arguments=arguments(args),
                   history=history, lora=None if lora_config is None else lora_config.to_dict())
    trained_params = backend.numpy_params()
    if lora_config is not None:
        # The adapters alone (small), and a plain classifier with them merged in: `gpt2 classify` reads it
        # like any other, with no adapter cost.
        from gptcore.lora import save_lora
        from npgpt.lora import merge_lora
        save_lora(out / "lora_adapter", trained_params, lora_config, metadata={"task": "classification",
                                                                               "init": source})
        trained_params = merge_lora(trained_params)
    checkpoint = save_checkpoint(out / FINAL_MODEL_DIR, trained_params, config, metadata={
        "task": "classification", "labels": list(SMS_LABELS), "num_classes": len(SMS_LABELS),
        "max_length": train.max_length, **text.metadata(),
        "init": source, "trainable": args.trainable, "test_accuracy": metrics["test_accuracy"],
        "lora": None if lora_config is None else lora_config.to_dict()}, extra_json=text.files())
    run_log.plot()
    plot_accuracy(out / "accuracy.png", history["epochs"])
    atomic_write_json(out / "metrics.json", metrics)
    print(f"test: accuracy {metrics['test_accuracy']:.2%}, precision {metrics['precision']:.3f}, recall "
          f"{metrics['recall']:.3f}, F1 {metrics['f1']:.3f}, confusion [[TN, FP], [FN, TP]] = "
          f"{metrics['confusion_matrix']}")
    print(f"trained in {train_seconds:.1f} s; checkpoint {checkpoint}, metrics {out / 'metrics.json'}")
    return 0


def load_splits(args):
    """(data file, (train, validation, test) frames): read and checked, balanced unless --no-balance, split."""
    from gptcore.tasks.classification_data import balance_classes, read_sms_spam, split_frame

    data_file = Path(args.data_file) if args.data_file else fetch_sms_spam(args.data_dir, progress=not args.quiet)
    frame = read_sms_spam(data_file)
    if not args.no_balance:
        frame = balance_classes(frame, seed=args.seed)
    frames = split_frame(frame, seed=args.seed)
    for split, part in zip(("training", "validation", "test"), frames):
        if len(part) == 0:
            raise ValueError(f"{data_file}: the {split} split is empty ({len(frame)} messages in all); "
                             f"give more messages")
    return data_file, frames


def classifier_settings(args, config):
    """ClassifierSettings from the flags; --epochs and --lr default by architecture (DEFAULTS)."""
    from gptcore.engine.classification import ClassifierSettings

    defaults = DEFAULTS.get(config.arch, DEFAULTS["gpt2"])
    args.epochs = defaults["epochs"] if args.epochs is None else args.epochs
    args.lr = defaults["lr"] if args.lr is None else args.lr
    return ClassifierSettings(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                              weight_decay=args.weight_decay, eval_interval=args.eval_interval,
                              eval_batches=args.eval_batches, grad_clip=args.grad_clip, seed=args.seed)


def build_classifier(args, num_classes: int, text):
    """(classifier config, params, description of the start): the initial LM with its head replaced.
    text: the ClassifierText the messages are read with (its vocabulary must fit the model's)."""
    from npgpt.classifier import classifier_from_lm_params

    if not 0.0 <= args.drop_rate < 1.0:
        raise ValueError(f"--drop-rate must be in [0, 1), got {args.drop_rate}")
    lm_config, lm_params, source = load_initial_model(args)
    n_vocab = max(text.tokenizer.n_vocab, text.pad_token_id + 1)
    if lm_config.vocab_size < n_vocab:
        raise ValueError(f"the model's vocabulary has {lm_config.vocab_size} tokens, but messages are encoded with "
                         f"{text.source} ({n_vocab} tokens, padding id {text.pad_token_id}); use a model with "
                         f"vocab_size >= {n_vocab}, or --init-from weights that carry their tokenizer (a GGUF)")
    lm_config = lm_config.replace(drop_rate=args.drop_rate)
    config, params = classifier_from_lm_params(lm_params, lm_config, num_classes, seed=args.seed)
    return config, params, source


def choose_trainable(args, config, params):
    """(params, trainable names, LoRAConfig or None, description): --trainable's parts, or with --lora-rank
    fresh LoRA adapters (npgpt.lora, one seeded init for both backends) as the only trainable parameters."""
    from gptcore.lora import LoRAConfig, trainable_params
    from gptcore.tasks.classification import trainable_param_names
    from npgpt.lora import add_lora

    if args.lora_rank is None:
        if args.lora_alpha is not None:
            raise ValueError("--lora-alpha needs --lora-rank R")
        args.trainable = args.trainable or "last-k"
        return params, trainable_param_names(config, args.trainable, args.last_k), None, args.trainable
    if args.trainable is not None:
        raise ValueError("--lora-rank trains the LoRA adapters only; leave --trainable out (or drop --lora-rank)")
    alpha = args.lora_alpha if args.lora_alpha is not None else float(args.lora_rank)
    lora_config = LoRAConfig(rank=args.lora_rank, alpha=alpha, targets=tuple(args.lora_targets))
    params = add_lora(params, lora_config, seed=args.seed)
    what = f"LoRA r={lora_config.rank} alpha={lora_config.alpha:g} on {', '.join(lora_config.targets)}"
    return params, list(trainable_params(params)), lora_config, what


def encode_splits(frames, max_length, context_length, text):
    """Token ids of the three splits (text: the model's ClassifierText), padded to --max-length, else to the
    longest training message (at most the context length); validation and test to the same length as training."""
    from gptcore.tasks.classification_data import encode_messages

    train_frame, val_frame, test_frame = frames
    train = encode_messages(train_frame, text.tokenizer, max_length=max_length, length_cap=context_length,
                            pad_token_id=text.pad_token_id, what="training messages")
    val, test = (encode_messages(part, text.tokenizer, max_length=train.max_length, pad_token_id=text.pad_token_id,
                                 what=f"{split} messages")
                 for split, part in (("validation", val_frame), ("test", test_frame)))
    return train, val, test


def final_metrics(history, splits, class_weights, args) -> dict:
    """metrics.json's main part: the last epoch's accuracies and the test split's precision/recall/F1/confusion."""
    from gptcore.tasks.classification_data import SMS_LABELS
    from gptcore.tasks.classification import classification_metrics

    train, val, test = splits
    test_predictions = history.pop("test_logits").argmax(axis=-1)
    test_metrics = classification_metrics(test.labels, test_predictions, len(SMS_LABELS),
                                          positive=SMS_LABELS.index("spam"))
    final = history["epochs"][-1]
    return {
        "train_accuracy": final["train_accuracy"], "val_accuracy": final["val_accuracy"],
        "test_accuracy": final["test_accuracy"], "precision": test_metrics["precision"],
        "recall": test_metrics["recall"], "f1": test_metrics["f1"],
        "confusion_matrix": test_metrics["confusion_matrix"],
        "confusion_matrix_layout": "rows: true label, columns: predicted label, in the order of `labels`",
        "labels": list(SMS_LABELS), "positive_label": "spam",
        "split_sizes": {"train": len(train), "val": len(val), "test": len(test)}, "balanced": not args.no_balance,
        "class_weights": None if class_weights is None else [float(w) for w in class_weights],
        "max_length": train.max_length,
        "truncated_messages": {"train": train.num_truncated, "val": val.num_truncated, "test": test.num_truncated},
        "trainable": args.trainable, "last_k": args.last_k if args.trainable == "last-k" else None,
        "backend": args.backend,
    }


def arguments(args) -> dict:
    return {key: value for key, value in vars(args).items() if key != "func"}


def plot_accuracy(path: Path, epochs: list[dict]) -> None:
    """accuracy.png: train / validation / test accuracy after every epoch."""
    from gptcore.plots import plot_curves
    plot_curves(path, [entry["epoch"] for entry in epochs],
                {split: [entry[f"{split}_accuracy"] for entry in epochs] for split in ("train", "val", "test")},
                xlabel="epoch", ylabel="accuracy", title=f"{path.parent.name}: accuracy")
