"""Training throughput (tokens/s) of the torch loop and the NumPy loop on the same model and batches.

    GPT2_DATA_DIR=/path/to/data TIKTOKEN_CACHE_DIR=$GPT2_DATA_DIR/tiktoken_cache \\
        python -m benchmarks.bench_train [--model tiny] [--context-length 64] [--batch-size 8] \\
            [--rounds 3] [--steps 5] [--backends torch numpy] [--device cpu] [--json out.json]

    # GPU (torch only): GPT-2 124M, bf16 autocast, SDPA, TF32, compiled; prints MFU
    python -m benchmarks.bench_train --model gpt2-small --context-length 1024 --batch-size 16 \\
        --backends torch --device cuda --dtype bfloat16 --compile --steps 20 --rounds 3

Both loops train on the-verdict (tokenized once into the token cache) with the same TrainSettings.
The backends take turns, `steps` optimizer steps per turn, `rounds` turns each, so a busy machine
slows both alike; the table shows the median of the per-step throughputs (step time only: no
evaluation, logging or checkpoints; the first step of each turn is left out, it holds warm-up and
compilation). MFU is shown for CUDA devices whose peak is known (torchgpt.train.PEAK_BF16_FLOPS).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time

from benchmarks.harness import kernel_line, openblas_kernel


def build_data(context_length: int):
    from gptcore.corpus import prepare_corpus, resolve_sources
    from gptcore.data import SlidingWindowDataset
    cache = os.environ.get("GPT2_TOKEN_CACHE") or os.path.join(tempfile.gettempdir(), "gpt2-bench-tokens")
    corpus = prepare_corpus(resolve_sources(None), cache_dir=cache, progress=False)
    return SlidingWindowDataset(corpus.train_tokens(), context_length, context_length, copy=False)


def run_benchmark(args) -> list[dict]:
    import npgpt.model
    from gptcore.config import get_config
    from gptcore.engine.training import TrainSettings
    from npgpt.train import train as numpy_train
    from torchgpt import GPTModel, load_numpy_params, pick_device
    from torchgpt.train import RuntimeOptions, TokenBatches, Trainer

    config = get_config(args.model, context_length=args.context_length, drop_rate=0.0)
    dataset = build_data(args.context_length)
    params = npgpt.model.init_params(config, seed=0)
    device = pick_device(args.device)
    model = load_numpy_params(GPTModel(config, use_sdpa=device.type == "cuda"), params)
    runtime = RuntimeOptions(device=str(device), dtype=args.dtype, compile=args.compile)
    per_step = {backend: [] for backend in args.backends}
    mfu = []
    for round_number in range(args.rounds):
        settings = TrainSettings(max_steps=args.steps, batch_size=args.batch_size, eval_interval=10 ** 9,
                                 eval_batches=1, seed=round_number)
        for backend in args.backends:
            if backend == "torch":
                trainer = Trainer(model, TokenBatches(dataset, settings), settings, runtime=runtime, device=device,
                                  progress=False)
                history = trainer.fit()
                mfu += [e["mfu"] for e in history[1:] if e.get("mfu") is not None]
            else:
                history = numpy_train(params, config, dataset, None, settings, progress=False)
            per_step[backend] += [e["tokens_per_sec"] for e in history[1:]]
    rows = []
    for backend, values in per_step.items():
        rows.append({"backend": backend, "device": str(device) if backend == "torch" else "cpu",
                     "model": args.model, "context_length": args.context_length, "batch_size": args.batch_size,
                     "tokens_per_sec_median": statistics.median(values), "tokens_per_sec_min": min(values),
                     "tokens_per_sec_max": max(values), "steps_measured": len(values),
                     "mfu_median": statistics.median(mfu) if backend == "torch" and mfu else None})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--context-length", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--backends", nargs="+", default=["torch", "numpy"], choices=["torch", "numpy"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--json", help="also write the rows (and the machine) to this JSON file")
    args = parser.parse_args(argv)
    started = time.time()
    rows = run_benchmark(args)
    print(f"NumPy's BLAS kernel: {kernel_line(openblas_kernel())}\n")
    print(f"| backend | device | model | T | B | tokens/s (median) | min..max | MFU |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        mfu = f"{r['mfu_median']:.1%}" if r["mfu_median"] is not None else "-"
        print(f"| {r['backend']} | {r['device']} | {r['model']} | {r['context_length']} | {r['batch_size']} | "
              f"{r['tokens_per_sec_median']:,.0f} | {r['tokens_per_sec_min']:,.0f}..{r['tokens_per_sec_max']:,.0f} "
              f"| {mfu} |")
    if args.json:
        import torch
        machine = {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                   "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                   "blas_kernel": openblas_kernel(),
                   "seconds": round(time.time() - started, 1)}
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"rows": rows, "machine": machine, "args": vars(args)}, handle, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
