"""`gpt2 evaluate-lm`: the loss and perplexity of a language model on a text, in NumPy or torch.

    gpt2 evaluate-lm --weights smollm2-135m-instruct                     # the-verdict, NumPy
    gpt2 evaluate-lm --weights gpt2/124M --data notes.txt --backend torch --context 512

Any weights path of `gpt2 generate` (GPT-2: OpenAI's files, Hugging Face folders, our checkpoints and runs;
Llama: a GGUF file or a Hugging Face folder), with the model's own tokenizer (gptcore.formats.weights.
load_weights_tokenizer). The text is cut into non-overlapping windows of --context tokens, and every token
after the first is predicted once (gptcore/engine/lm_evaluation.py); both backends give the same loss up to
float32 rounding.
"""
from __future__ import annotations

from pathlib import Path

from gpt2cli.errors import UserError, user_errors
from gpt2cli.options import DEVICE_HELP

DEFAULT_DATA = "the-verdict"
DEFAULT_CONTEXT = 1024


def register(subparsers):
    parser = subparsers.add_parser(
        "evaluate-lm", help="loss and perplexity of a language model on a text (NumPy or torch)",
        description="The mean next-token cross-entropy and the perplexity of a model on a text, with the model's "
                    "own tokenizer.")
    parser.add_argument("--weights", required=True, metavar="PATH_OR_NAME",
                        help="a GGUF file, a Hugging Face folder (GPT-2 or Llama), OpenAI's GPT-2 folder, one of our "
                             "checkpoints or runs, or a pretrained model's name (smollm2-135m-instruct)")
    parser.add_argument("--data", default=DEFAULT_DATA, metavar="NAME_OR_FILE",
                        help="a text file, or a data set of the manifest (default %(default)s)")
    parser.add_argument("--backend", choices=("numpy", "torch"), default="numpy",
                        help="numpy (default) or torch; the same loss up to float32 rounding")
    parser.add_argument("--context", type=int, default=None, metavar="N",
                        help=f"tokens per window (default: the model's context length, at most {DEFAULT_CONTEXT})")
    parser.add_argument("--batch-size", type=int, default=2, metavar="B",
                        help="windows per forward pass (default %(default)s)")
    parser.add_argument("--max-tokens", type=int, default=None, metavar="N",
                        help="evaluate the first N tokens of the text only (default: all)")
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    parser.add_argument("--data-dir", default=None, help="data folder (default: $GPT2_DATA_DIR or data/cache)")
    parser.set_defaults(func=run)


def read_text(data: str, data_dir) -> tuple[str, str]:
    """(the text, what it is called) of --data: a file, else a data set of the manifest."""
    from gptcore.datasets import DataError, dataset_names, fetch

    path = Path(data)
    if path.is_file():
        return path.read_text(encoding="utf-8", errors="replace"), str(path)
    if data not in dataset_names():
        raise UserError(f"--data {data}: no such file, nor a data set of the manifest ({', '.join(dataset_names())})")
    with user_errors(DataError):
        path = fetch(data, data_dir)
    if not path.is_file():
        raise UserError(f"--data {data} is a folder of files, not one text; give a text file to --data")
    return path.read_text(encoding="utf-8", errors="replace"), data


def summed_loss_function(args, config, params):
    """summed_loss(X, Y) of --backend, holding the model; and the device it runs on, as text."""
    if args.backend == "numpy":
        if args.device not in ("auto", "cpu"):
            raise UserError(f"--device {args.device} needs --backend torch (the NumPy backend runs on the CPU)")
        from npgpt.train import summed_loss as numpy_summed_loss
        return (lambda X, Y: numpy_summed_loss(params, config, X, Y)), "cpu"
    from torchgpt import build_model, load_numpy_params, pick_device
    from torchgpt.train import summed_loss as torch_summed_loss
    device = pick_device(args.device)
    model = load_numpy_params(build_model(config, use_sdpa=True), params).to(device).eval()
    return (lambda X, Y: torch_summed_loss(model, X, Y)), str(device)


def run(args) -> int:
    import time

    from tqdm import tqdm

    from gptcore.engine.lm_evaluation import check_evaluation, evaluate_language_model
    from gptcore.formats.safetensors import WeightsError
    from gptcore.formats.weights import load_language_model, load_weights_tokenizer
    from npgpt.model import count_params

    if args.max_tokens is not None and args.max_tokens < 2:
        raise UserError(f"--max-tokens must be at least 2 (got {args.max_tokens})")
    text, text_name = read_text(args.data, args.data_dir)
    with user_errors(WeightsError):
        found = load_weights_tokenizer(args.weights)
        config, params = load_language_model(args.weights)
    tokenizer = found.tokenizer
    if config.vocab_size < tokenizer.n_vocab:
        raise UserError(f"the model's vocabulary ({config.vocab_size}) is smaller than {found.source}'s "
                        f"({tokenizer.n_vocab}); give weights that carry their tokenizer (a GGUF file, a Hugging "
                        f"Face folder with tokenizer.json) or a model trained on GPT-2 token ids")
    ids = tokenizer.encode_ordinary(text)[:args.max_tokens]
    context = args.context if args.context is not None else min(config.context_length, DEFAULT_CONTEXT)
    check_evaluation(len(ids), context, args.batch_size, config.context_length)
    summed_loss, device = summed_loss_function(args, config, params)
    print(f"model: {args.weights} ({config.arch}, {count_params(params):,} parameters), {found.source}")
    print(f"text: {text_name}, {len(ids):,} tokens; windows of up to {context} tokens, batch {args.batch_size}, "
          f"{args.backend} backend on {device}", flush=True)
    started = time.perf_counter()
    with tqdm(total=len(ids) - 1, unit="tok", unit_scale=True, desc=f"{args.backend} evaluating",
              leave=False) as bar:                       # every token after the first is predicted once
        result = evaluate_language_model(summed_loss, ids, context, args.batch_size, on_batch=bar.update)
    seconds = time.perf_counter() - started
    print(f"loss {result.loss:.6f}  perplexity {result.perplexity:.4f}  ({result.tokens:,} predicted tokens in "
          f"{result.windows} windows, {seconds:.1f} s)")
    return 0
