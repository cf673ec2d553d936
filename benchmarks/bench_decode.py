"""Batch-1 decoding speed: npgpt (NumPy, KV cache), torchgpt (KV cache; SDPA and eager attention) and
Hugging Face transformers.

    python -m benchmarks.bench_decode                 # GPT-2 124M, 32-token prompt, 100 new tokens, 2 threads
    python -m benchmarks.bench_decode --quick         # 20 new tokens, 2 repeats: a quick look
    python -m benchmarks.bench_decode --threads 1 --repeats 5 --out benchmarks/results
    python -m benchmarks.bench_decode --model C512-L8 # a ladder size, as `gpt2 bench --sizes` takes them

One GPT-2 with random weights is made by transformers (GPT2LMHeadModel, seed 0), saved as a Hugging Face
safetensors folder and loaded from there by npgpt.load_weights, so every engine runs the SAME weights (and
the table says whether their greedy tokens agree). The engines: numpy (npgpt), torchgpt (with
scaled_dot_product_attention, as `gpt2 generate` runs it), torchgpt_eager (the explicit attention) and hf.
Each generates greedily, the end-of-text stop switched off, so every run produces exactly --new-tokens
tokens; the time includes the prompt's prefill. Runs are interleaved (repeat 1: numpy, torchgpt, ...;
repeat 2: torchgpt, ..., numpy; ...) so a busy machine slows all engines alike; the table reports each
engine's median tokens/s and the median of the per-repeat ratios. --threads limits NumPy's BLAS, npgpt's
own thread pool and torch alike (benchmarks.harness.limited_threads). Batch-1 decoding reads every weight
once per token (~0.5 GB in float32 at 124M), so it measures memory bandwidth more than arithmetic. Without
transformers installed (`pip install -e .[bench]`) the hf column is left out (--no-hf does the same).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.harness import kernel_line, limited_threads, openblas_kernel

DEFAULT_OUT = Path(__file__).resolve().parent / "results"


def decode_config(model_name: str, prompt_tokens: int, new_tokens: int):
    """The GPTConfig of `model_name` (a preset or a ladder size C<width>-L<layers>, the same parser as the
    other `gpt2 bench` sections), without dropout, its context stretched to hold prompt + new tokens.

    Past the context generation slides its window and recomputes every position: that is not the
    KV-cached decoding this benchmark measures, so a small preset (tiny's context is 64) gets room instead.
    """
    from benchmarks.cases import size_config

    config = size_config(model_name, 0.0)
    return config.replace(context_length=max(config.context_length, prompt_tokens + new_tokens))


def make_weights(config, folder: Path, use_hf: bool):
    """(config, params, hf_model or None): a random GPT-2 of `config`, the same weights in every engine."""
    import numpy as np

    from npgpt.model import init_params
    from gptcore.formats.weights import load_weights

    if not use_hf:
        return config, init_params(config, seed=0, dtype=np.float32), None
    from benchmarks.cases import make_hf_model

    hf_model = make_hf_model(config, seed=0).eval()
    hf_model.save_pretrained(folder, safe_serialization=True)
    loaded_config, params = load_weights(folder)
    return loaded_config.replace(drop_rate=0.0), params, hf_model


def engines(config, params, hf_model, prompt, new_tokens):
    """name -> function() returning the new token ids (greedy, no stop token).

    torchgpt runs with scaled_dot_product_attention (as `gpt2 generate` does), torchgpt_eager with the
    explicit attention (the parity-tested twin): one model, switched before each call. npgpt and torchgpt
    store their weights in the layout batch-1 decoding reads fastest, as `gpt2 generate` does
    (decoding_layout: same values; transformers keeps its own layout).
    """
    import torch

    import npgpt.generate
    import torchgpt.generate
    from benchmarks.cases import set_sdpa
    from torchgpt import GPTModel, load_numpy_params

    torch_model = torchgpt.generate.decoding_layout(load_numpy_params(GPTModel(config, use_sdpa=True), params).eval())
    params = npgpt.generate.decoding_layout(params, config)

    def run_torchgpt(use_sdpa):
        set_sdpa(torch_model, use_sdpa)
        return torchgpt.generate.generate(torch_model, prompt, new_tokens, stop_ids=())

    runs = {
        "numpy": lambda: npgpt.generate.generate(params, config, prompt, new_tokens, stop_ids=()),
        "torchgpt": lambda: run_torchgpt(True),
        "torchgpt_eager": lambda: run_torchgpt(False),
    }
    if hf_model is not None:
        prompt_tensor = torch.tensor([prompt])

        def run_hf():
            with torch.no_grad():
                out = hf_model.generate(prompt_tensor, attention_mask=torch.ones_like(prompt_tensor),
                                        max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                                        num_beams=1, use_cache=True, pad_token_id=0)
            return out[0, len(prompt):].tolist()

        runs["hf"] = run_hf
    return runs


def _interleaved_runs(config, prompt_tokens, new_tokens, repeats, use_hf):
    """(times per engine, tokens per engine, engine names): one warm-up each, then rotated repeats."""
    import numpy as np

    with tempfile.TemporaryDirectory() as tmp:
        config, params, hf_model = make_weights(config, Path(tmp) / "hf", use_hf)
        prompt = np.random.default_rng(0).integers(0, config.vocab_size, prompt_tokens).tolist()
        runs = engines(config, params, hf_model, prompt, new_tokens)
        names = list(runs)
        tokens = {name: runs[name]() for name in names}          # warm-up, and the tokens for the check
        times = {name: [] for name in names}
        for repeat in range(repeats):
            for name in names[repeat % len(names):] + names[:repeat % len(names)]:   # rotate the order
                start = time.perf_counter()
                runs[name]()
                times[name].append(time.perf_counter() - start)
    return times, tokens, names


def run_benchmark(model_name="gpt2-small", prompt_tokens=32, new_tokens=100, repeats=3, threads=2, use_hf=True):
    """Tokens/s of every engine; model_name is a preset or a ladder size (benchmarks.cases.size_config)."""
    import numpy as np
    import torch


    config = decode_config(model_name, prompt_tokens, new_tokens)      # a bad name fails before any work
    if use_hf:
        try:
            import transformers  # noqa: F401
        except ImportError:
            print("transformers is not installed (pip install -e .[bench]): running without the hf column")
            use_hf = False
    load_before = os.getloadavg()[0]
    # NumPy's BLAS, npgpt's own thread pool and torch alike (harness.limited_threads), restored afterwards
    with limited_threads(threads):
        times, tokens, names = _interleaved_runs(config, prompt_tokens, new_tokens, repeats, use_hf)
    rates = {name: [new_tokens / t for t in times[name]] for name in names}
    result = {
        "model": model_name, "prompt_tokens": prompt_tokens, "new_tokens": new_tokens, "repeats": repeats,
        "threads": threads, "batch_size": 1, "strategy": "greedy, KV cache",
        # other processes' share of the cores: a load above the core count means they were contended
        "load_average_1min": {"start": load_before, "end": os.getloadavg()[0], "cores": os.cpu_count()},
        "machine": f"{platform.machine()}, {platform.python_implementation()} {platform.python_version()}, "
                   f"numpy {np.__version__}, torch {torch.__version__}"
                   + (f", transformers {__import__('transformers').__version__}" if "hf" in names else ""),
        "blas_kernel": openblas_kernel(),
        "tokens_per_s": {name: rates[name] for name in names},
        "median_tokens_per_s": {name: statistics.median(rates[name]) for name in names},
        "same_tokens_as_numpy": {name: tokens[name] == tokens["numpy"] for name in names},
    }
    if "hf" in names:   # ratios per repeat (the runs of one repeat are neighbours in time), then the median
        result["median_speedup_vs_hf"] = {
            name: statistics.median(r / h for r, h in zip(rates[name], rates["hf"])) for name in names}
    return result


def markdown_table(result: dict) -> str:
    has_hf = "median_speedup_vs_hf" in result
    lines = [f"GPT-2 {result['model']} (random weights), batch 1, {result['strategy']}, {result['prompt_tokens']}-token "
             f"prompt + {result['new_tokens']} new tokens, {result['threads']} threads, {result['repeats']} interleaved "
             f"repeats; {result['machine']}; load average {result['load_average_1min']['start']:.1f} -> "
             f"{result['load_average_1min']['end']:.1f} on {result['load_average_1min']['cores']} cores", "",
             f"NumPy's BLAS kernel: {kernel_line(result['blas_kernel']) if 'blas_kernel' in result else 'not recorded'}",
             "",
             "| engine | median tokens/s | all runs (tokens/s) |" + (" speedup vs hf (median of per-repeat ratios) |"
                                                                    if has_hf else "") + " same tokens as numpy |",
             "| --- | ---: | --- |" + (" ---: |" if has_hf else "") + " --- |"]
    for name, median in result["median_tokens_per_s"].items():
        runs = ", ".join(f"{rate:.1f}" for rate in result["tokens_per_s"][name])
        ratio = f" {result['median_speedup_vs_hf'][name]:.2f}x |" if has_hf else ""
        lines.append(f"| {name} | {median:.1f} | {runs} |{ratio} {result['same_tokens_as_numpy'][name]} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gpt2-small", help="preset (gpt2-small = 124M; tiny for a smoke run) "
                                                              "or a ladder size C<width>-L<layers>")
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=None, help="default 100 (--quick: 20)")
    parser.add_argument("--repeats", type=int, default=None, help="default 3 (--quick: 2)")
    parser.add_argument("--threads", type=int, default=2,
                        help="threads of NumPy's BLAS, npgpt's thread pool and torch (default 2)")
    parser.add_argument("--no-hf", action="store_true", help="leave out Hugging Face transformers")
    parser.add_argument("--quick", action="store_true", help="20 new tokens and 2 repeats unless given")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for decode.json and decode.md")
    args = parser.parse_args(argv)
    if args.new_tokens is None:
        args.new_tokens = 20 if args.quick else 100
    if args.repeats is None:
        args.repeats = 2 if args.quick else 3
    from gptcore.fileio import atomic_write_json, atomic_write_text

    result = run_benchmark(args.model, args.prompt_tokens, args.new_tokens, args.repeats, args.threads,
                           use_hf=not args.no_hf)
    table = markdown_table(result)
    print(table)
    stem = "decode" + ("_quick" if args.quick else "") + f"_{args.model}_{args.threads}threads"
    atomic_write_json(args.out / f"{stem}.json", result)
    atomic_write_text(args.out / f"{stem}.md", table + "\n")
    print(f"\nwrote {args.out / stem}.json and .md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
