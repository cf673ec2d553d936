"""`gpt2 demo`: the README's first command.

Trains one small GPT twice, in NumPy (hand-written gradients) and in PyTorch (autograd), from the same
initial weights on the same batches of "The Verdict", prints both losses side by side with their
difference, saves a plot of both curves, and ends by letting each model continue a prompt.

    gpt2 demo [--steps 150] [--model tiny] [--seed 0] [--out runs/demo] [--dtype float64|float32]
"""
from __future__ import annotations

from pathlib import Path

from gpt2cli.errors import UserError

DEFAULT_PROMPT = "Every effort moves you"
FLOAT32_NOTE = ("note: in float32 the two libraries round differently (~1e-7 per operation), and training amplifies "
                "those differences: AdamW scales every gradient to a step of about lr, even one that is mostly "
                "rounding noise (the token-embedding rows of words the story never uses), so the curves drift "
                "apart after a few dozen steps. The math is the same: --dtype float64 agrees to ~1e-9.")


def register(subparsers):
    parser = subparsers.add_parser(
        "demo", help="train a small GPT in NumPy and in torch side by side",
        description="Train the same small GPT in NumPy and in PyTorch from identical weights on the-verdict, "
                    "compare the losses step by step, plot them and generate with both.")
    parser.add_argument("--steps", type=int, default=150, help="optimizer steps in each backend (default %(default)s)")
    parser.add_argument("--model", default="tiny", help="model preset (tiny, gpt2-small, ...; default %(default)s)")
    parser.add_argument("--context-length", type=int, default=None,
                        help="tokens per training window (default: the preset's, at most 64)")
    parser.add_argument("--batch-size", type=int, default=8, help="windows per step (default %(default)s)")
    parser.add_argument("--lr", type=float, default=4e-3, help="AdamW learning rate, constant (default %(default)s)")
    parser.add_argument("--weight-decay", type=float, default=0.1, help="AdamW weight decay (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="initial weights, batch order and sampling (default %(default)s)")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float64",
                        help="float64: the curves agree to ~1e-9 and both models write the same text; float32 "
                             "is twice as fast, and its rounding differences grow over the steps (see the note "
                             "it prints); default %(default)s")
    parser.add_argument("--print-every", type=int, default=10, help="print a row every N steps (default %(default)s)")
    parser.add_argument("--eval-interval", type=int, default=25, help="validation loss every N steps (default %(default)s)")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT, help="text both models continue at the end (default %(default)r)")
    parser.add_argument("--max-new-tokens", type=int, default=30, help="tokens each model adds (default %(default)s)")
    parser.add_argument("--out", default="runs/demo", help="folder for the plot and the metrics (default %(default)s)")
    parser.add_argument("--data-dir", default=None, help="data folder (default: $GPT2_DATA_DIR or data/cache)")
    parser.set_defaults(func=run)


def _load_data(config, data_dir):
    """the-verdict split 90/10 by characters (as the book does), tokenized, cut into windows."""
    from gptcore.data import SlidingWindowDataset, split_train_val
    from gptcore.datasets import fetch
    from gptcore.tokenizer import get_tokenizer

    tokenizer = get_tokenizer("tiktoken")
    text = fetch("the-verdict", data_dir).read_text(encoding="utf-8")
    train_text, val_text = split_train_val(text, 0.9)
    T = config.context_length
    train_set = SlidingWindowDataset(tokenizer.encode(train_text), max_length=T, stride=T)
    val_set = SlidingWindowDataset(tokenizer.encode(val_text), max_length=T, stride=T)
    return tokenizer, train_set, val_set


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
    import time

    import numpy as np
    import torch

    from npgpt import model as npmodel
    from gptcore.config import get_config
    from gptcore.fileio import atomic_write_json
    from gptcore.engine.lockstep import LockstepSettings, copy_params, train_side_by_side
    from npgpt.train import NumpyTwin
    from torchgpt.train import TorchTwin

    if args.steps <= 0 or args.print_every <= 0 or args.max_new_tokens < 0:
        raise UserError("--steps and --print-every must be positive, --max-new-tokens at least 0")
    config = get_config(args.model, drop_rate=0.0)
    context_length = args.context_length or min(config.context_length, 64)
    if context_length > config.context_length:
        raise UserError(f"--context-length {context_length} exceeds the {args.model} preset's "
                        f"{config.context_length}")
    config = config.replace(context_length=context_length)
    tokenizer, train_set, val_set = _load_data(config, args.data_dir)
    dtype = np.float64 if args.dtype == "float64" else np.float32
    params = npmodel.init_params(config, seed=args.seed, dtype=dtype)
    settings = LockstepSettings(steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                                weight_decay=args.weight_decay, eval_interval=args.eval_interval,
                                seed=args.seed)
    print(f"model {args.model}: {npmodel.count_params(params):,} parameters "
          f"({config.n_layers} layers, {config.n_heads} heads, width {config.emb_dim}, context {context_length}), "
          f"{args.dtype}")
    print(f"data: the-verdict, {len(train_set)} training and {len(val_set)} validation windows of "
          f"{context_length} tokens; batch {args.batch_size}, AdamW lr {args.lr}, {args.steps} steps\n")
    width = len(str(args.steps))
    print(f"{'step':>{width}}  {'NumPy loss':>11}  {'torch loss':>11}  {'|diff|':>9}  {'NumPy val':>9}  {'torch val':>9}")

    def on_step(entry):
        if entry["step"] % args.print_every == 0 or entry["step"] == 1 or "numpy_val_loss" in entry:
            _print_row(entry, width)

    started = time.perf_counter()
    torch_twin = TorchTwin(params, config, settings, dtype=torch.float64 if args.dtype == "float64" else torch.float32)
    numpy_twin = NumpyTwin(copy_params(params), config, settings)
    history = train_side_by_side(numpy_twin, torch_twin, train_set, val_set, settings, on_step=on_step)
    seconds = time.perf_counter() - started
    numpy_seconds = sum(e["numpy_seconds"] for e in history)
    torch_seconds = sum(e["torch_seconds"] for e in history)
    worst = max(history, key=lambda e: e["abs_diff"])
    out = Path(args.out)
    plot = _plot(history, out / "loss.png")
    summary = {"model": args.model, "config": config.to_dict(), "dtype": args.dtype, "steps": args.steps,
               "final_numpy_loss": history[-1]["numpy_loss"], "final_torch_loss": history[-1]["torch_loss"],
               "max_abs_diff": worst["abs_diff"], "max_abs_diff_step": worst["step"],
               "numpy_seconds": numpy_seconds, "torch_seconds": torch_seconds, "history": history}
    atomic_write_json(out / "demo.json", summary)
    print(f"\nlargest |NumPy - torch| loss difference: {worst['abs_diff']:.2e} (step {worst['step']}); "
          f"training took {seconds:.0f} s (NumPy {numpy_seconds:.0f} s, torch {torch_seconds:.0f} s)")
    if args.dtype == "float32" and worst["abs_diff"] > 1e-4:
        print(FLOAT32_NOTE)
    print(f"plot: {plot}\nmetrics: {out / 'demo.json'}")
    _continue_prompt(tokenizer, numpy_twin, torch_twin, args.prompt, args.max_new_tokens, args.seed)
    return 0
