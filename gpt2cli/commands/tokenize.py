"""`gpt2 tokenize`: text to GPT-2 token ids and back, with the project's from-scratch byte-level BPE.

    gpt2 tokenize "Hello world"                      ->  [15496, 995]
    cat notes.txt | gpt2 tokenize                    ->  the ids of the whole file (read as UTF-8, as it is)
    gpt2 tokenize --decode "[15496, 995]"            ->  Hello world
    gpt2 tokenize "Hi" | gpt2 tokenize --decode      ->  Hi
    gpt2 tokenize --allow-special "a<|endoftext|>b"  ->  [64, 50256, 65]
    gpt2 tokenize --weights smollm2-135m-instruct " 2024"  ->  [216, 34, 32, 34, 36]  (the model's own BPE)

The ids are printed as one JSON list (the last line of stdout); --decode prints the text and a newline.
The tokenizer is gptcore.tokenizer.GPT2Tokenizer (plain Python, the same ids as tiktoken's "gpt2"); it
reads encoder.json and vocab.bpe from the data folder (fetched through the data manifest when missing).
"""
from __future__ import annotations

import json
import sys

from gpt2cli.errors import UserError, user_errors

STDIN = "-"
EXAMPLE_IDS = "[15496, 995]"
JSON_KINDS = {dict: "an object", str: "a string", int: "a number", float: "a number", bool: "true/false",
              type(None): "null"}


def register(subparsers):
    parser = subparsers.add_parser(
        "tokenize", help="GPT-2 token ids of a text (JSON list), or the text of ids with --decode",
        description="Print the GPT-2 token ids of TEXT as a JSON list, using the from-scratch byte-level BPE; "
                    "with --decode, print the text of a JSON list of ids. Without TEXT (or with -) the input "
                    "is read from stdin.")
    parser.add_argument("text", nargs="?", default=STDIN, metavar="TEXT",
                        help="the text to tokenize, or with --decode a JSON list of ids such as "
                             f"{EXAMPLE_IDS} (default -: read stdin)")
    parser.add_argument("--decode", action="store_true", help="TEXT is a JSON list of token ids: print its text")
    parser.add_argument("--allow-special", action="store_true",
                        help="encode <|endoftext|> in the text as its id 50256 (default: an error, so text "
                             "cannot carry the special token by accident)")
    parser.add_argument("--weights", default=None, metavar="PATH",
                        help="use this model's own tokenizer: a GGUF file (its byte-level BPE) or a pretrained "
                             "model's name such as smollm2-135m-instruct; GPT-2 weights use GPT-2's BPE")
    parser.add_argument("--data-dir", default=None,
                        help="data folder holding the GPT-2 BPE files (default: $GPT2_DATA_DIR, else "
                             "<repo>/data/cache)")
    parser.set_defaults(func=run)


def read_input(text: str) -> str:
    """TEXT itself, or all of stdin (as UTF-8, newlines kept as they are) when TEXT is -."""
    if text != STDIN:
        return text
    data = sys.stdin.buffer.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise UserError(f"stdin is not UTF-8 text (byte {data[error.start]:#04x} at offset {error.start}); "
                        f"convert it to UTF-8 first, e.g. with iconv") from None


def parse_token_ids(text: str) -> list[int]:
    """The integers of a JSON list such as [15496, 995]; a UserError naming the problem and the fix otherwise."""
    try:
        ids = json.loads(text)
    except json.JSONDecodeError as error:
        raise UserError(f"--decode: the input is not valid JSON ({error.msg} at line {error.lineno} column "
                        f"{error.colno}); give a JSON list of token ids such as {EXAMPLE_IDS}, as "
                        f"`gpt2 tokenize` prints it") from None
    if not isinstance(ids, list):
        raise UserError(f"--decode: the input is {JSON_KINDS[type(ids)]} in JSON, not a list; give a JSON list "
                        f"of token ids such as {EXAMPLE_IDS}")
    for position, value in enumerate(ids):
        if isinstance(value, bool) or not isinstance(value, int):     # JSON true is a Python int: refuse it
            raise UserError(f"--decode: the item at index {position}, {json.dumps(value)}, is not an integer "
                            f"token id; give whole numbers without quotes or decimals, such as {EXAMPLE_IDS}")
    return ids


def check_token_range(ids: list[int], n_vocab: int) -> None:
    """A UserError naming the first id outside the vocabulary 0..n_vocab-1."""
    for position, value in enumerate(ids):
        if not 0 <= value < n_vocab:
            raise UserError(f"--decode: token id {value} (at index {position}) is out of range: GPT-2's ids are "
                            f"0..{n_vocab - 1}; check where these ids came from (another tokenizer?)")


def special_tokens_in(text: str, tokenizer) -> list[str]:
    """The tokenizer's special tokens (<|endoftext|>) that occur in `text`."""
    return [token for token in tokenizer.special_tokens if token in text]


def load_bpe(data_dir):
    """The from-scratch GPT-2 BPE (gptcore.tokenizer.GPT2Tokenizer), its files found through the data manifest."""
    from gptcore.download import DownloadError
    from gptcore.tokenizer import get_tokenizer

    with user_errors(DownloadError):           # BPE files missing and not downloadable: one line
        return get_tokenizer("bpe", data_dir=data_dir)


def load_tokenizer(args):
    """The model's tokenizer with --weights (a GGUF's own BPE, a Hugging Face folder's tokenizer.json), else
    GPT-2's from-scratch BPE."""
    if args.weights is None:
        return load_bpe(args.data_dir)
    from gptcore.datasets import DataError
    from gptcore.formats.safetensors import WeightsError
    from gptcore.formats.weights import load_weights_tokenizer

    with user_errors(WeightsError, DataError, FileNotFoundError):
        found = load_weights_tokenizer(args.weights)
    return found.tokenizer if found.carried else load_bpe(args.data_dir)


def run(args) -> int:
    text = read_input(args.text)
    if args.decode:
        return print_text(text, args)
    return print_ids(text, args)


def print_ids(text: str, args) -> int:
    tokenizer = load_tokenizer(args)
    found = special_tokens_in(text, tokenizer)
    if found and not args.allow_special:
        raise UserError(f"the text contains the special token {found[0]}; pass --allow-special to encode it as "
                        f"its id {tokenizer.special_tokens[found[0]]}, or remove it from the text")
    print(json.dumps(tokenizer.encode(text, allowed_special=set(found))))
    return 0


def print_text(ids_json: str, args) -> int:
    ids = parse_token_ids(ids_json)             # malformed input fails before the BPE files load
    tokenizer = load_tokenizer(args)
    check_token_range(ids, tokenizer.n_vocab)
    print(tokenizer.decode(ids))
    return 0
