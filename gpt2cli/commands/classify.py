"""`gpt2 classify`: label messages with a classifier trained by `gpt2 finetune classify`.

    gpt2 classify --checkpoint runs/spam "You won a free prize, text WIN now"     ->  spam	0.9731
    cat messages.txt | gpt2 classify --checkpoint runs/spam/model                 ->  one line per message:
                                                                                      label<TAB>probability<TAB>message

--checkpoint takes the run folder (--out of the finetuning), the checkpoint folder in it (model/) or its
model.safetensors file.
"""
from __future__ import annotations

import sys

from gpt2cli.errors import UserError
from gpt2cli.options import (add_backend_and_device_options, add_threads_option, classifier_backend,
                             limited_threads, one_line_warnings)


def register(subparsers):
    parser = subparsers.add_parser(
        "classify", help="label messages (ham/spam) with a finetuned classifier",
        description="Print the predicted label and its probability for MESSAGE, or for every line of stdin "
                    "when no MESSAGE is given.")
    parser.add_argument("message", nargs="?", default=None,
                        help="the message to classify (default: one message per line from stdin)")
    parser.add_argument("--checkpoint", required=True, metavar="PATH",
                        help="run folder of `gpt2 finetune classify --out DIR`, or the model folder/file in it")
    add_backend_and_device_options(parser)
    parser.add_argument("--batch-size", type=int, default=32, help="messages per forward pass (default 32)")
    add_threads_option(parser)
    parser.set_defaults(func=run)


def load_classifier(path):
    """(config, params, metadata) of a classifier checkpoint, or a one-line error saying what PATH is instead."""
    from gptcore.formats.checkpoint import load_checkpoint, read_checkpoint_metadata
    from gptcore.tasks.classification import check_classifier_params
    from gptcore.formats.weights import resolve_weights_path

    path = resolve_weights_path(path)          # a run folder -> its model/ checkpoint
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}; pass the --out folder of `gpt2 finetune classify`")
    metadata = read_checkpoint_metadata(path)
    if metadata.get("task") != "classification" or "labels" not in metadata:
        raise ValueError(f"{path} is not a classifier checkpoint (its metadata has no task=classification and "
                         f"labels); train one with `gpt2 finetune classify --out DIR`")
    config, params, _ = load_checkpoint(path, load_training_state=False)
    check_classifier_params(params, config, len(metadata["labels"]))
    return config, params, metadata


def read_messages(args) -> tuple[list[str], bool]:
    """(messages, from_stdin); an empty message is an error naming its line."""
    if args.message is not None:
        if not args.message.strip():
            raise UserError("the message is empty; give some text to classify")
        return [args.message], False
    messages = [line.rstrip("\r\n") for line in sys.stdin]
    for number, message in enumerate(messages, start=1):
        if not message.strip():
            raise UserError(f"stdin line {number} is empty; give one non-empty message per line")
    if not messages:
        raise UserError("no message: give one as an argument or one per line on stdin")
    return messages, True


def run(args) -> int:
    with one_line_warnings(), limited_threads(args.threads):
        return _run(args)


def _run(args) -> int:
    from gptcore.tasks.classification_data import pad_token_ids
    from gptcore.tasks.classification import softmax_probabilities
    from gptcore.tasks.classification_tokenizer import tokenizer_of_classifier
    from gptcore.formats.weights import resolve_weights_path

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be a positive integer, got {args.batch_size}")
    config, params, metadata = load_classifier(args.checkpoint)
    messages, from_stdin = read_messages(args)
    labels = metadata["labels"]
    backend, _ = classifier_backend(args.backend, params, config, len(labels), args.device)
    text = tokenizer_of_classifier(resolve_weights_path(args.checkpoint), metadata)   # the one it was trained with
    tokenizer = text.tokenizer
    max_length = int(metadata.get("max_length", config.context_length))
    pad_token_id = text.pad_token_id
    for start in range(0, len(messages), args.batch_size):
        chunk = messages[start:start + args.batch_size]
        token_lists = [tokenizer.encode(message) for message in chunk]
        # Messages longer than the training length keep their first max_length tokens, as in training.
        ids, lengths, _ = pad_token_ids(token_lists, max_length=min(max_length, max(map(len, token_lists))),
                                        pad_token_id=pad_token_id, what="messages")
        probabilities = softmax_probabilities(backend.logits(ids, lengths).astype("float64"))
        for message, row in zip(chunk, probabilities):
            best = int(row.argmax())
            line = f"{labels[best]}\t{row[best]:.4f}"
            print(f"{line}\t{message}" if from_stdin else line)
    return 0
