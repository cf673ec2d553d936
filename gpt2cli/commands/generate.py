"""`gpt2 generate`: continue a prompt with a GPT-2 or a Llama, in NumPy or torch, printing the text as it is
produced; or answer one chat message with a chat model.

    gpt2 generate --weights gpt2/124M --prompt "Every effort moves you" --max-new-tokens 40
    gpt2 generate --weights smollm2-135m-instruct --chat "What is the capital of France?"
    gpt2 generate --checkpoint runs/verdict --backend torch --prompt "I" --max-new-tokens 60 \\
        --temperature 0.8 --top-k 40 --seed 1 --verbose
    gpt2 generate --model gpt2-small --seed 0 --prompt "Hi" --max-new-tokens 20 --verbose   # random weights

Greedy by default (temperature 0). The same --seed gives the same tokens with either backend. Text is
printed as soon as it is complete: byte-level tokens can end in the middle of a UTF-8 character, whose bytes
are held back until the character is whole.

The tokenizer comes with the weights when they carry one (a GGUF file: its own BPE and chat template; a
Hugging Face folder: its tokenizer.json and tokenizer_config.json), else it is GPT-2's. --chat MESSAGE sends
MESSAGE as one user turn: the weights' chat template renders it with the
assistant's opening (gptcore.tasks.chat), decoding stops at the end of the turn (<|im_end|>) or the end of the
text, and only the answer is printed, without special tokens.
"""
from __future__ import annotations

import codecs
import sys
import time
import warnings
from gpt2cli.errors import UserError, user_errors

def register(subparsers):
    parser = subparsers.add_parser("generate", help="continue a prompt (greedy, sampling, top-k/top-p, beam search)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--weights", metavar="PATH",
                        help="OpenAI checkpoint folder, Hugging Face folder/.safetensors, one of our checkpoints "
                             "(folder or model.safetensors) or run folders (its newest checkpoint)")
    source.add_argument("--checkpoint", metavar="PATH",
                        help="the same as --weights: a run folder (--out of gpt2 train), a checkpoint folder in "
                             "it, or a model.safetensors file")
    source.add_argument("--model", help="a preset (gpt2-small, tiny, ...) with random weights from --seed "
                                        "(demos and benchmarks)")
    parser.add_argument("--backend", choices=("numpy", "torch"), default="numpy",
                        help="numpy (default) or torch; the same tokens for the same --seed")
    text = parser.add_mutually_exclusive_group(required=True)
    text.add_argument("--prompt", help="the text to continue (special tokens such as <|endoftext|> allowed)")
    text.add_argument("--chat", metavar="MESSAGE",
                      help="a chat model answers MESSAGE (one user turn, rendered with the weights' chat "
                           "template); stops at the end of its turn and prints the answer only")
    parser.add_argument("--max-new-tokens", type=int, default=50, help="tokens to add (default %(default)s)")
    parser.add_argument("--temperature", type=float, default=0.0,
                        help="0 = greedy (default; so is anything below 1e-6); > 0 samples")
    parser.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens (default: all)")
    parser.add_argument("--top-p", type=float, default=None, help="sample from the smallest set with mass >= p (default: no cut)")
    parser.add_argument("--num-beams", type=int, default=1, help="beam search with this many beams (greedy only; default 1: no beam search)")
    parser.add_argument("--length-penalty", type=float, default=1.0, help="beam score / length ** this (default %(default)s)")
    parser.add_argument("--seed", type=int, default=None, help="sampling seed (and the random weights of --model; default: fresh randomness, weights seed 0)")
    parser.add_argument("--no-stop", action="store_true",
                        help="do not stop at the end of the text (<|endoftext|>) or of a chat turn (<|im_end|>)")
    parser.add_argument("--no-cache", action="store_true", help="recompute every position each step (slow; checks)")
    parser.add_argument("--device", default="auto", help="torch backend: auto (default), cpu, cuda, cuda:N, mps")
    parser.add_argument("--verbose", action="store_true", help="print the speed (tokens/s) at the end, on stderr")
    parser.set_defaults(func=run)


def load_model(args):
    """(config, model arguments of the backend's generate) from --weights, --checkpoint or --model (random
    weights from --seed, made by npgpt so both backends get the same ones). On the CPU the weights are
    stored in the layout that decodes fastest (decoding_layout; same values)."""
    if args.backend == "torch":
        model = _load_torch_model(args)
        if model.tok_emb.weight.device.type == "cpu":
            from torchgpt.generate import decoding_layout
            decoding_layout(model)
        return model.config, (model,)
    from npgpt.generate import decoding_layout
    config, params = _load_numpy_params(args)
    return config, (decoding_layout(params, config), config)


def _load_numpy_params(args):
    """(config, params) of --weights, --checkpoint or --model as npgpt arrays. --weights and --checkpoint go
    through the one weights resolver (a run folder, a checkpoint folder or file, released weights)."""
    if args.weights or args.checkpoint:
        from gptcore.formats.weights import load_language_model
        return load_language_model(args.weights or args.checkpoint)
    from gptcore.config import get_config
    from npgpt.model import init_params
    config = get_config(args.model)
    return config, init_params(config, seed=0 if args.seed is None else args.seed)


def _load_torch_model(args):
    """The torch model of the weights' architecture (torchgpt.build_model) in eval mode on --device: loaded
    directly, or from npgpt's random weights."""
    if not args.model:
        from gptcore.formats.weights import check_language_model
        from torchgpt.checkpoint import load_model as load_torch_model
        check_language_model(args.weights or args.checkpoint)      # load_model reads through load_weights too
        return load_torch_model(args.weights or args.checkpoint, args.device, use_sdpa=True)
    from torchgpt import build_model, load_numpy_params, pick_device
    config, params = _load_numpy_params(args)
    model = load_numpy_params(build_model(config.replace(drop_rate=0.0), use_sdpa=True), params)
    return model.to(pick_device(args.device)).eval()


def load_model_text(args):
    """The weights' ModelText (gptcore.model_text): a GGUF file's own BPE and chat template, else GPT-2's."""
    from gptcore.model_text import model_text
    return model_text(args.weights or args.checkpoint)


def chat_prompt(text, message: str) -> str:
    """MESSAGE as one user turn under the weights' chat template, ending with the assistant's opening."""
    from gptcore.tasks.chat import ChatTemplateError, render_chat, user_turn

    if text.chat_template is None:
        raise UserError(f"--chat needs a chat model's template, and these weights have none ({text.source}; "
                        f"GPT-2 weights have no chat template): give a chat model such as --weights "
                        f"smollm2-135m-instruct, or continue a text with --prompt")
    with user_errors(ChatTemplateError):
        return render_chat(text.chat_template, user_turn(message), add_generation_prompt=True)


class TextStream:
    """Token ids in, printable text out: bytes of a character split across tokens wait for the rest."""

    def __init__(self, tokenizer, hidden_ids=frozenset()):
        self.tokenizer = tokenizer
        self.hidden_ids = hidden_ids         # tokens not printed (a chat answer's special tokens)
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token: int) -> str:
        if token in self.hidden_ids:
            return ""
        return self.decoder.decode(self.tokenizer.decode_bytes([token]))

    def flush(self) -> str:
        """What is left at the end (an unfinished character shows as U+FFFD)."""
        return self.decoder.decode(b"", final=True)


def _print(text: str):
    sys.stdout.write(text)
    sys.stdout.flush()


def run(args) -> int:
    from gptcore.engine.decoding import check_settings, prepare_prompt

    check_settings(args.max_new_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                   num_beams=args.num_beams, length_penalty=args.length_penalty)
    if args.backend == "numpy" and args.device not in ("auto", "cpu"):
        raise UserError(f"--device {args.device} needs --backend torch (the NumPy backend runs on the CPU)")
    text = load_model_text(args)
    prompt = args.prompt if args.chat is None else chat_prompt(text, args.chat)
    config, model_args = load_model(args)
    tokenizer = text.tokenizer
    if config.vocab_size < tokenizer.n_vocab:
        raise UserError(f"the model's vocabulary ({config.vocab_size}) is smaller than {text.source}'s "
                        f"({tokenizer.n_vocab}); these weights carry no tokenizer this project reads: give a model "
                        f"trained on GPT-2 token ids, or a Llama's GGUF file (its own tokenizer)")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prompt_ids = prepare_prompt(tokenizer.encode(prompt, allowed_special="all"), config)
    for warning in caught:
        print(f"gpt2 generate: warning: {warning.message}", file=sys.stderr)
    options = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, num_beams=args.num_beams,
                   length_penalty=args.length_penalty, seed=args.seed,
                   stop_ids=() if args.no_stop else tuple(sorted(text.stop_ids)), use_cache=not args.no_cache)

    if args.backend == "numpy":
        import npgpt.generate as backend
    else:
        import torchgpt.generate as backend

    if args.chat is None:
        _print(args.prompt)
    start = time.perf_counter()
    hidden = frozenset(getattr(tokenizer, "special_tokens", {}).values()) if args.chat is not None else frozenset()
    stream = TextStream(tokenizer, hidden)
    if args.num_beams > 1:                 # beam search knows its best sequence only at the end
        new_ids = backend.generate(*model_args, prompt_ids, args.max_new_tokens, **options)
        for token in new_ids:
            _print(stream.push(token))
    else:
        new_ids = []
        for token in backend.stream_generate(*model_args, prompt_ids, args.max_new_tokens, **options):
            new_ids.append(token)
            _print(stream.push(token))
    elapsed = time.perf_counter() - start
    _print(stream.flush() + "\n")
    if args.verbose:
        rate = len(new_ids) / elapsed if elapsed > 0 else float("inf")
        print(f"{len(new_ids)} new tokens in {elapsed:.2f} s: {rate:.1f} tokens/s ({args.backend} backend, "
              f"{'no cache' if args.no_cache else 'KV cache'}, prompt {len(prompt_ids)} tokens)", file=sys.stderr)
    return 0
