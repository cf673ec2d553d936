"""`gpt2 demo`: the README's first command.

Trains one small GPT twice, in NumPy (hand-written gradients) and in PyTorch (autograd), from the same
initial weights on the same batches of "The Verdict", prints both losses side by side with their
difference, saves a plot of both curves, and ends by letting each model continue a prompt.

    gpt2 demo [--steps 150] [--model tiny] [--seed 0] [--out runs/demo] [--dtype float64|float32]
    gpt2 demo --init-from smollm2-135m-instruct [--dtype float32]     # a pretrained model, both twins

With --init-from the twins start from pretrained weights (a GGUF file, a Hugging Face folder, OpenAI's GPT-2
files, one of our checkpoints or runs) instead of a random preset, read the-verdict with the model's own
tokenizer, and train with the defaults of PRETRAINED_DEFAULTS (short windows, a small batch, a few dozen steps
at a finetuning learning rate), which finish in a few minutes on 2 cores at 135M parameters.
"""
from __future__ import annotations

from pathlib import Path

from gpt2cli.errors import UserError, user_errors

DEFAULT_PROMPT = "Every effort moves you"
# Defaults of the options that differ between a random preset and --init-from (a pretrained model).
PRESET_DEFAULTS = {"steps": 150, "context_length": 64, "batch_size": 8, "lr": 4e-3, "print_every": 10,
                   "eval_interval": 25}
PRETRAINED_DEFAULTS = {"steps": 30, "context_length": 32, "batch_size": 2, "lr": 1e-4, "print_every": 5,
                       "eval_interval": 10}
FLOAT32_NOTE = ("note: in float32 the two libraries round differently (~1e-7 per operation), and training amplifies "
                "those differences: AdamW scales every gradient to a step of about lr, even one that is mostly "
                "rounding noise (the token-embedding rows of words the story never uses), so the curves drift "
                "apart after a few dozen steps. The math is the same: --dtype float64 agrees to ~1e-9.")


def register(subparsers):
    parser = subparsers.add_parser(
        "demo", help="train a small GPT in NumPy and in torch side by side",
        description="Train the same small GPT in NumPy and in PyTorch from identical weights on the-verdict, "
                    "compare the losses step by step, plot them and generate with both.")
    parser.add_argument("--init-from", metavar="PATH_OR_NAME", default=None,
                        help="start both twins from pretrained weights instead of a random --model: a GGUF file, a "
                             "Hugging Face folder, OpenAI's GPT-2 files, one of our checkpoints or runs, or a "
                             "pretrained model's name (smollm2-135m-instruct); the text is tokenized with the "
                             "model's own tokenizer")
    parser.add_argument("--steps", type=int, default=None,
                        help=f"optimizer steps in each backend (default {PRESET_DEFAULTS['steps']}; "
                             f"{PRETRAINED_DEFAULTS['steps']} with --init-from)")
    parser.add_argument("--model", default="tiny", help="model preset (tiny, gpt2-small, ...; default %(default)s)")
    parser.add_argument("--context-length", type=int, default=None,
                        help=f"tokens per training window (default: the preset's, at most "
                             f"{PRESET_DEFAULTS['context_length']}; {PRETRAINED_DEFAULTS['context_length']} with "
                             f"--init-from)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help=f"windows per step (default {PRESET_DEFAULTS['batch_size']}; "
                             f"{PRETRAINED_DEFAULTS['batch_size']} with --init-from)")
    parser.add_argument("--lr", type=float, default=None,
                        help=f"AdamW learning rate, constant (default {PRESET_DEFAULTS['lr']}; "
                             f"{PRETRAINED_DEFAULTS['lr']} with --init-from)")
    parser.add_argument("--weight-decay", type=float, default=0.1, help="AdamW weight decay (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="initial weights, batch order and sampling (default %(default)s)")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float64",
                        help="float64: the curves agree to ~1e-9 and both models write the same text; float32 "
                             "is twice as fast, and its rounding differences grow over the steps (see the note "
                             "it prints); default %(default)s")
    parser.add_argument("--print-every", type=int, default=None,
                        help=f"print a row every N steps (default {PRESET_DEFAULTS['print_every']}; "
                             f"{PRETRAINED_DEFAULTS['print_every']} with --init-from)")
    parser.add_argument("--eval-interval", type=int, default=None,
                        help=f"validation loss every N steps (default {PRESET_DEFAULTS['eval_interval']}; "
                             f"{PRETRAINED_DEFAULTS['eval_interval']} with --init-from)")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT, help="text both models continue at the end (default %(default)r)")
    parser.add_argument("--max-new-tokens", type=int, default=30, help="tokens each model adds (default %(default)s)")
    parser.add_argument("--out", default="runs/demo", help="folder for the plot and the metrics (default %(default)s)")
    parser.add_argument("--data-dir", default=None, help="data folder (default: $GPT2_DATA_DIR or data/cache)")
    parser.set_defaults(func=run)


def _load_data(tokenizer, window: int, data_dir):
    """the-verdict split 90/10 by characters (as the book does), tokenized, cut into windows of `window` tokens."""
    from gptcore.data import SlidingWindowDataset, split_train_val
    from gptcore.datasets import fetch

    text = fetch("the-verdict", data_dir).read_text(encoding="utf-8")
    train_text, val_text = split_train_val(text, 0.9)
    train_set = SlidingWindowDataset(tokenizer.encode(train_text), max_length=window, stride=window)
    val_set = SlidingWindowDataset(tokenizer.encode(val_text), max_length=window, stride=window)
    return train_set, val_set


def fill_defaults(args) -> None:
    """Options left unset take PRESET_DEFAULTS, or PRETRAINED_DEFAULTS with --init-from."""
    defaults = PRETRAINED_DEFAULTS if args.init_from else PRESET_DEFAULTS
    for name, value in defaults.items():
        if getattr(args, name) is None and name != "context_length":
            setattr(args, name, value)


def with_dtype(params: dict, dtype) -> dict:
    """The parameters in `dtype` (copies), a tied pair still one array."""
    copies = {}
    return {name: copies.setdefault(id(value), value.astype(dtype)) for name, value in params.items()}


def starting_model(args, dtype):
    """(config, params in `dtype`, tokenizer, window length, a description) of --init-from or the --model preset."""
    from gptcore.config import get_config
    from gptcore.formats.safetensors import WeightsError
    from gptcore.formats.weights import load_language_model, load_weights_tokenizer
    from gptcore.tokenizer import get_tokenizer
    from npgpt import model as npmodel

    if args.init_from is None:
        config = get_config(args.model, drop_rate=0.0)
        window = args.context_length or min(config.context_length, PRESET_DEFAULTS["context_length"])
        if window > config.context_length:
            raise UserError(f"--context-length {window} exceeds the {args.model} preset's {config.context_length}")
        config = config.replace(context_length=window)
        params = npmodel.init_params(config, seed=args.seed, dtype=dtype)
        return config, params, get_tokenizer("tiktoken"), window, f"model {args.model}"
    with user_errors(WeightsError):
        found = load_weights_tokenizer(args.init_from)
        config, params = load_language_model(args.init_from)
    # The position table of a GPT-2 fixes its context length, so the model keeps its own; windows are shorter.
    window = args.context_length or PRETRAINED_DEFAULTS["context_length"]
    if window > config.context_length:
        raise UserError(f"--context-length {window} exceeds the model's context length {config.context_length}")
    if config.vocab_size < found.tokenizer.n_vocab:
        raise UserError(f"the model's vocabulary ({config.vocab_size}) is smaller than {found.source}'s "
                        f"({found.tokenizer.n_vocab}); give weights that carry their tokenizer")
    return (config.replace(drop_rate=0.0), with_dtype(params, dtype), found.tokenizer, window,
            f"pretrained {args.init_from} ({config.arch}, {found.source})")


def _print_row(entry, width):
    row = (f"{entry['step']:>{width}}  {entry['numpy_loss']:>11.6f}  {entry['torch_loss']:>11.6f}  "
           f"{entry['abs_diff']:>9.2e}")
    if "numpy_val_loss" in entry:
        row += f"  {entry['numpy_val_loss']:>9.4f}  {entry['torch_val_loss']:>9.4f}"
    print(row, flush=True)


def _plot(history, path):
    """Top: both loss curves (torch dashed over NumPy solid: they coincide); bottom: |NumPy - torch|."""
    from gptcore.plots import pyplot, add_secondary_axis, save_figure

    plt = pyplot()
    steps = [e["step"] for e in history]
    figure, (losses, diffs) = plt.subplots(2, 1, figsize=(7, 6), sharex=True, height_ratios=(3, 1.3))
    losses.plot(steps, [e["numpy_loss"] for e in history], label="NumPy train", linewidth=3, alpha=0.6)
    losses.plot(steps, [e["torch_loss"] for e in history], "--", label="torch train", color="black", linewidth=1)
    evals = [e for e in history if "numpy_val_loss" in e]
    losses.plot([e["step"] for e in evals], [e["numpy_val_loss"] for e in evals], "o-", label="NumPy val",
                markersize=7, alpha=0.6)
    losses.plot([e["step"] for e in evals], [e["torch_val_loss"] for e in evals], "x--", label="torch val",
                color="black", markersize=5, linewidth=1)
    losses.set_ylabel("cross-entropy loss")
    losses.set_title("the same GPT trained in NumPy and in PyTorch")
    losses.grid(alpha=0.3)
    losses.legend()
    add_secondary_axis(losses, steps, [e["tokens_seen"] for e in history], "tokens seen")
    diffs.semilogy(steps, [max(e["abs_diff"], 1e-17) for e in history], color="tab:red")
    diffs.set_ylabel("|NumPy - torch|")
    diffs.set_xlabel("step")
    diffs.grid(alpha=0.3)
    return save_figure(figure, path)


def _continue_prompt(tokenizer, numpy_twin, torch_twin, prompt, max_new_tokens, seed):
    """Greedy and sampled continuations from both models (the sampler draws the same uniforms in both)."""
    import npgpt.generate
    import torchgpt.generate

    prompt_ids = tokenizer.encode(prompt)
    torch_twin.model.eval()
    settings = {"greedy": {}, "sampled (T=1.0, top-k 40)": {"temperature": 1.0, "top_k": 40, "seed": seed}}
    for label, options in settings.items():
        numpy_ids = npgpt.generate.generate(numpy_twin.params, numpy_twin.config, prompt_ids, max_new_tokens,
                                            **options)
        torch_ids = torchgpt.generate.generate(torch_twin.model, prompt_ids, max_new_tokens, **options)
        same = "identical tokens" if list(numpy_ids) == list(torch_ids) else "tokens differ"
        print(f"\n{label} ({same}):")
        for backend, ids in (("NumPy", numpy_ids), ("torch", torch_ids)):
            text = (prompt + tokenizer.decode(ids)).replace("\n", " ")
            print(f"  {backend}: {text}")


def run(args) -> int:
    import math
    import time

    import numpy as np
    import torch

    from npgpt import model as npmodel
    from gptcore.fileio import atomic_write_json
    from gptcore.engine.lockstep import LockstepSettings, train_side_by_side
    from npgpt.train import NumpyTwin
    from torchgpt.train import TorchTwin

    fill_defaults(args)
    if args.steps <= 0 or args.print_every <= 0 or args.max_new_tokens < 0:
        raise UserError("--steps and --print-every must be positive, --max-new-tokens at least 0")
    dtype = np.float64 if args.dtype == "float64" else np.float32
    config, params, tokenizer, window, described = starting_model(args, dtype)
    train_set, val_set = _load_data(tokenizer, window, args.data_dir)
    settings = LockstepSettings(steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                                weight_decay=args.weight_decay, eval_interval=args.eval_interval,
                                seed=args.seed)
    print(f"{described}: {npmodel.count_params(params):,} parameters "
          f"({config.n_layers} layers, {config.n_heads} heads, width {config.emb_dim}, context {window}), "
          f"{args.dtype}")
    print(f"data: the-verdict, {len(train_set)} training and {len(val_set)} validation windows of "
          f"{window} tokens; batch {args.batch_size}, AdamW lr {args.lr}, {args.steps} steps\n")
    width = len(str(args.steps))
    print(f"{'step':>{width}}  {'NumPy loss':>11}  {'torch loss':>11}  {'|diff|':>9}  {'NumPy val':>9}  {'torch val':>9}")

    def on_step(entry):
        if entry["step"] % args.print_every == 0 or entry["step"] == 1 or "numpy_val_loss" in entry:
            _print_row(entry, width)

    started = time.perf_counter()
    torch_twin = TorchTwin(params, config, settings, dtype=torch.float64 if args.dtype == "float64" else torch.float32)
    numpy_twin = NumpyTwin(params, config, settings)     # the torch twin holds its own copy: no second one here
    del params
    history = train_side_by_side(numpy_twin, torch_twin, train_set, val_set, settings, on_step=on_step)
    seconds = time.perf_counter() - started
    numpy_seconds = sum(e["numpy_seconds"] for e in history)
    torch_seconds = sum(e["torch_seconds"] for e in history)
    worst = max(history, key=lambda e: e["abs_diff"])
    out = Path(args.out)
    plot = _plot(history, out / "loss.png")
    ln_vocab = math.log(config.vocab_size)
    summary = {"model": args.init_from or args.model, "init_from": args.init_from, "config": config.to_dict(),
               "context_length": window, "dtype": args.dtype, "steps": args.steps, "ln_vocab": ln_vocab,
               "final_numpy_loss": history[-1]["numpy_loss"], "final_torch_loss": history[-1]["torch_loss"],
               "max_abs_diff": worst["abs_diff"], "max_abs_diff_step": worst["step"],
               "numpy_seconds": numpy_seconds, "torch_seconds": torch_seconds, "history": history}
    atomic_write_json(out / "demo.json", summary)
    first = history[0]["numpy_loss"]
    print(f"\nfirst loss {first:.4f} against ln(vocabulary) = {ln_vocab:.4f}, a uniform guess's: "
          + ("the model starts pretrained" if first < 0.5 * ln_vocab else "the model starts from scratch"))
    print(f"largest |NumPy - torch| loss difference: {worst['abs_diff']:.2e} (step {worst['step']}); "
          f"training took {seconds:.0f} s (NumPy {numpy_seconds:.0f} s, torch {torch_seconds:.0f} s)")
    if args.dtype == "float32" and worst["abs_diff"] > 1e-4:
        print(FLOAT32_NOTE)
    print(f"plot: {plot}\nmetrics: {out / 'demo.json'}")
    _continue_prompt(tokenizer, numpy_twin, torch_twin, args.prompt, args.max_new_tokens, args.seed)
    return 0
