"""Batch-1 decoding speed: npgpt (NumPy, KV cache), torchgpt (KV cache) and Hugging Face transformers.

    python -m benchmarks.bench_decode                 # GPT-2 124M, 32-token prompt, 100 new tokens, 2 threads
    python -m benchmarks.bench_decode --quick         # 20 new tokens, 2 repeats: a quick look
    python -m benchmarks.bench_decode --threads 1 --repeats 5 --out benchmarks/results

One GPT-2 124M with random weights is made by transformers (GPT2LMHeadModel, seed 0), saved as a Hugging
Face safetensors folder and loaded from there by npgpt.load_weights, so the three engines run the SAME
weights (and the table says whether their greedy tokens agree). Each engine generates greedily, the
end-of-text stop switched off, so every run produces exactly --new-tokens tokens; the time includes the
prompt's prefill. Runs are interleaved (repeat 1: numpy, torch, hf; repeat 2: torch, hf, numpy; ...) so a
busy machine slows all engines alike; the table reports each engine's median tokens/s and the median of
the per-repeat ratios. Batch-1 decoding reads every weight once per token (~0.5 GB in float32), so it
measures memory bandwidth more than arithmetic. Without transformers installed (`pip install -e .[bench]`)
the hf column is left out (--no-hf does the same).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

DEFAULT_OUT = Path(__file__).resolve().parent / "results"


def make_weights(model_name: str, folder: Path, use_hf: bool):
    """(config, params, hf_model or None): a random GPT-2 of preset `model_name`, the same weights in all."""
    import numpy as np

    from npgpt.config import get_config
    from npgpt.model import init_params
    from npgpt.weights import load_weights

    config = get_config(model_name, drop_rate=0.0)
    if not use_hf:
        return config, init_params(config, seed=0, dtype=np.float32), None
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    hf_config = GPT2Config(vocab_size=config.vocab_size, n_positions=config.context_length, n_embd=config.emb_dim,
                           n_layer=config.n_layers, n_head=config.n_heads, resid_pdrop=0.0, embd_pdrop=0.0,
                           attn_pdrop=0.0)
    hf_model = GPT2LMHeadModel(hf_config).eval()
    hf_model.save_pretrained(folder, safe_serialization=True)
    loaded_config, params = load_weights(folder)
    return loaded_config.replace(drop_rate=0.0), params, hf_model


def engines(config, params, hf_model, prompt, new_tokens):
    """name -> function() returning the new token ids (greedy, no stop token)."""
    import torch

    import npgpt.generate
    import torchgpt.generate
    from torchgpt import GPTModel, load_numpy_params

    torch_model = load_numpy_params(GPTModel(config, use_sdpa=True), params).eval()
    runs = {
        "numpy": lambda: npgpt.generate.generate(params, config, prompt, new_tokens, stop_ids=()),
        "torchgpt": lambda: torchgpt.generate.generate(torch_model, prompt, new_tokens, stop_ids=()),
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


def _interleaved_runs(model_name, prompt_tokens, new_tokens, repeats, threads, use_hf):
    """(times per engine, tokens per engine, engine names): one warm-up each, then rotated repeats."""
    import numpy as np
    from threadpoolctl import threadpool_limits

    with tempfile.TemporaryDirectory() as tmp, threadpool_limits(threads):
        config, params, hf_model = make_weights(model_name, Path(tmp) / "hf", use_hf)
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
    import numpy as np
    import torch

    if use_hf:
        try:
            import transformers  # noqa: F401
        except ImportError:
            print("transformers is not installed (pip install -e .[bench]): running without the hf column")
            use_hf = False
    load_before = os.getloadavg()[0]
    threads_before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        times, tokens, names = _interleaved_runs(model_name, prompt_tokens, new_tokens, repeats, threads, use_hf)
    finally:
        torch.set_num_threads(threads_before)
    rates = {name: [new_tokens / t for t in times[name]] for name in names}
    result = {
        "model": model_name, "prompt_tokens": prompt_tokens, "new_tokens": new_tokens, "repeats": repeats,
        "threads": threads, "batch_size": 1, "strategy": "greedy, KV cache",
        # other processes' share of the cores: a load above the core count means they were contended
        "load_average_1min": {"start": load_before, "end": os.getloadavg()[0], "cores": os.cpu_count()},
        "machine": f"{platform.machine()}, {platform.python_implementation()} {platform.python_version()}, "
                   f"numpy {np.__version__}, torch {torch.__version__}"
                   + (f", transformers {__import__('transformers').__version__}" if "hf" in names else ""),
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
    parser.add_argument("--model", default="gpt2-small", help="preset (gpt2-small = 124M; tiny for a smoke run)")
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=None, help="default 100 (--quick: 20)")
    parser.add_argument("--repeats", type=int, default=None, help="default 3 (--quick: 2)")
    parser.add_argument("--threads", type=int, default=2, help="BLAS / torch threads (default 2)")
    parser.add_argument("--no-hf", action="store_true", help="leave out Hugging Face transformers")
    parser.add_argument("--quick", action="store_true", help="20 new tokens and 2 repeats unless given")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for decode.json and decode.md")
    args = parser.parse_args(argv)
    if args.new_tokens is None:
        args.new_tokens = 20 if args.quick else 100
    if args.repeats is None:
        args.repeats = 2 if args.quick else 3
    from npgpt.fileio import atomic_write_json, atomic_write_text

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
