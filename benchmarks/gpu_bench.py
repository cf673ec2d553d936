"""GPU throughput of the torch twin: GPT-2 124M training tokens/s and MFU, and decoding tokens/s.

    benchmarks/gpu.sh [OUT_DIR]                 # the way to run it (refuses without CUDA)
    python -m benchmarks.gpu_bench --out bench_results/gpu [--batch-sizes 64 32 16] [--seq-len 1024]

Training: torchgpt.GPTModel (GPT-2 124M) with F.scaled_dot_product_attention (flash attention where the GPU
has it), bf16 autocast, TF32 matmuls, torch.optim.AdamW(fused=True), on random tokens (nothing to download:
the GPU machine may have no network), once eager and once under torch.compile. The batch is the largest of
--batch-sizes that fits (an out-of-memory error tries the next), at T = --seq-len: a batch that fills the GPU.
Each variant runs --warmup steps (compilation happens there), then --steps timed steps, synchronised.

    MFU = model FLOPs per step / step time / the GPU's dense bf16 peak
    model FLOPs per step = benchmarks.cases.model_flops(train=True) = 3 (2 N_mm B T + 4 L B T^2 C)

the peak from torchgpt.train.PEAK_BF16_FLOPS by device name, or --peak-tflops.
Decoding: batch 1, greedy, --new-tokens after a 32-token prompt, KV cache: torchgpt.generate on GPT-2 124M and
on torchgpt's Llama at SmolLM2-135M's shape (the `smollm2-135m` preset; random weights: the GPU machine may have
no copy of the GGUF), and with transformers installed its GPT2LMHeadModel and a LlamaForCausalLM of the same
SmolLM2 shape. Writes gpu.md and gpu.json into --out.

    python -m benchmarks.gpu_bench --smoke --out /tmp/gpu-smoke     # the same code on the CPU, tiny models

--smoke runs every step of the script but torch.compile on the CPU with the tiny presets (tiny, tiny-llama),
a few tokens and steps, no transformers: the tests run it, so the script cannot rot on machines that never see
a GPU. Its numbers mean nothing.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

from benchmarks.cases import model_flops

DEFAULT_OUT = Path("bench_results") / "gpu"
# SmolLM2-135M's published shape (HuggingFaceTB/SmolLM2-135M config.json), built with random weights.
SMOLLM2_135M = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                    num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192, rope_theta=100000.0,
                    tie_word_embeddings=True)
NO_CUDA = ("no CUDA GPU here (torch.cuda.is_available() is False): benchmarks/gpu.sh measures GPU throughput; "
           "run it on a machine with an NVIDIA GPU and a CUDA build of torch")


def mfu(flops_per_step: float, seconds_per_step: float, peak_flops: float | None) -> float | None:
    """Model FLOPs utilisation: achieved model FLOP/s over the peak (None without a known peak)."""
    if not peak_flops:
        return None
    return flops_per_step / seconds_per_step / peak_flops


def synchronize(device) -> None:
    """Waits for the device's queued work (a CUDA GPU runs asynchronously; a CPU has nothing to wait for)."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _train_variant(config, batch_size, seq_len, *, compile_model, steps, warmup, device):
    """Seconds per train step (median of `steps` synchronised steps after `warmup`)."""
    import torch
    import torch.nn.functional as F

    from torchgpt import GPTModel

    model = GPTModel(config, use_sdpa=True, seed=0).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=6e-4, weight_decay=0.1, fused=device.type == "cuda")
    run = torch.compile(model) if compile_model else model
    idx = torch.randint(0, config.vocab_size, (batch_size, seq_len), device=device)
    targets = torch.randint(0, config.vocab_size, (batch_size, seq_len), device=device)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            logits = run(idx)
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))
        loss.backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    synchronize(device)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times                                     # the model and optimizer go with this frame


def train_rows(config, batch_sizes, seq_len, steps, warmup, peak, log, device, compile_variants=(False, True)):
    import torch

    rows = []
    for compile_model in compile_variants:
        for batch_size in batch_sizes:
            try:
                times = _train_variant(config, batch_size, seq_len, compile_model=compile_model, steps=steps,
                                       warmup=warmup, device=device)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
                log(f"B={batch_size} T={seq_len} compile={compile_model}: out of memory, trying a smaller batch")
                continue
            median = statistics.median(times)
            flops = model_flops(config, batch_size, seq_len, train=True)
            row = {"variant": "compiled" if compile_model else "eager", "batch_size": batch_size, "seq_len": seq_len,
                   "step_s_median": median, "step_s_min": min(times), "step_s_max": max(times),
                   "tokens_per_s": batch_size * seq_len / median, "model_tflop_per_step": flops / 1e12,
                   "mfu": mfu(flops, median, peak)}
            rows.append(row)
            mfu_text = "-" if row["mfu"] is None else f"{row['mfu']:.1%}"
            log(f"train {row['variant']}: B={batch_size} T={seq_len} {row['tokens_per_s']:,.0f} tokens/s, MFU {mfu_text}")
            break
    return rows


def _time_decode(fn, new_tokens, repeats, device):
    fn()                                              # warm-up
    rates = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        rates.append(new_tokens / (time.perf_counter() - start))
    return statistics.median(rates)


def hf_engines(prompt, new_tokens, device, log) -> dict:
    """transformers' GPT-2 124M and a Llama of SmolLM2-135M's shape (random weights) as decoding engines, or {}
    when transformers is not installed."""
    import torch

    try:
        from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM
    except ImportError:
        log("transformers is not installed: decoding without the Hugging Face rows")
        return {}
    hf_gpt2 = GPT2LMHeadModel(GPT2Config()).to(device).eval()
    smollm = LlamaForCausalLM(LlamaConfig(**SMOLLM2_135M)).to(device).eval()
    tprompt = torch.tensor([prompt], device=device)

    def hf_generate(hf_model):
        with torch.no_grad():
            return hf_model.generate(tprompt, attention_mask=torch.ones_like(tprompt), max_new_tokens=new_tokens,
                                     min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)

    return {"transformers GPT-2 124M (fp32)": lambda: hf_generate(hf_gpt2),
            "transformers SmolLM2-135M shape (fp32)": lambda: hf_generate(smollm)}


def decode_rows(config, llama_config, new_tokens, repeats, log, device, names=("GPT-2 124M", "SmolLM2-135M shape"),
                use_hf=True) -> list[dict]:
    """Batch-1 greedy decoding tokens/s of torchgpt's GPT-2 `config` and Llama `llama_config` (random weights),
    and with use_hf and transformers installed, Hugging Face's models of the real sizes."""
    import torch

    import torchgpt.generate
    from torchgpt import GPTModel, build_model

    gpt2_name, llama_name = names
    prompt = torch.randint(0, min(config.vocab_size, llama_config.vocab_size), (32,),
                           generator=torch.Generator().manual_seed(0)).tolist()
    model = GPTModel(config.replace(drop_rate=0.0), use_sdpa=True, seed=0).to(device).eval()
    llama = build_model(llama_config.replace(drop_rate=0.0), use_sdpa=True, seed=0).to(device).eval()
    engines = {f"torchgpt {gpt2_name} (fp32)": lambda: torchgpt.generate.generate(model, prompt, new_tokens, stop_ids=()),
               f"torchgpt {llama_name} (fp32)": lambda: torchgpt.generate.generate(llama, prompt, new_tokens,
                                                                                   stop_ids=())}
    if use_hf:
        engines.update(hf_engines(prompt, new_tokens, device, log))
    else:
        log("decoding without the Hugging Face rows")
    rows = []
    for name, fn in engines.items():
        rate = _time_decode(fn, new_tokens, repeats, device)
        rows.append({"engine": name, "batch_size": 1, "prompt_tokens": 32, "new_tokens": new_tokens,
                     "tokens_per_s": rate})
        log(f"decode {name}: {rate:.1f} tokens/s")
    return rows


def markdown(result: dict) -> str:
    lines = ["# GPU benchmark (benchmarks/gpu.sh)", ""]
    if result.get("smoke"):
        lines += ["**Smoke run (--smoke) on the CPU with tiny models: these numbers are not claims.**", ""]
    lines += [
             f"- GPU: {result['gpu']}, peak dense bf16 {result['peak_tflops'] or 'unknown'} TFLOP/s; torch "
             f"{result['torch']}, CUDA {result['cuda']}; {result['platform']}.",
             f"- Training: {result.get('train_model', 'GPT-2 124M')}, bf16 autocast, SDPA, TF32, fused AdamW, random "
             "tokens; MFU = model FLOPs (benchmarks.cases.model_flops) / step time / peak.", "",
             "| variant | B | T | tokens/s | step (median) | MFU |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for row in result["train"]:
        mfu_cell = "-" if row["mfu"] is None else f"{row['mfu']:.1%}"
        lines.append(f"| {row['variant']} | {row['batch_size']} | {row['seq_len']} | {row['tokens_per_s']:,.0f} | "
                     f"{row['step_s_median'] * 1e3:.1f} ms | {mfu_cell} |")
    lines += ["", "| decode engine (batch 1, greedy, KV cache) | new tokens | tokens/s |", "| --- | ---: | ---: |"]
    for row in result["decode"]:
        lines.append(f"| {row['engine']} | {row['new_tokens']} | {row['tokens_per_s']:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 48, 32, 16, 8],
                        help="tried in order; the first that fits is measured (default 64 48 32 16 8)")
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=100)
    parser.add_argument("--decode-repeats", type=int, default=5)
    parser.add_argument("--peak-tflops", type=float, help="the GPU's dense bf16 peak (default: by device name)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--smoke", action="store_true", help="the same code on the CPU with the tiny presets, a few "
                                                             "steps and tokens, eager only, no transformers (for "
                                                             "tests; the numbers mean nothing)")
    args = parser.parse_args(argv)
    import torch

    if not args.smoke and not torch.cuda.is_available():
        print(f"error: {NO_CUDA}", file=sys.stderr)
        return 2
    from gptcore.config import get_config
    from gptcore.fileio import atomic_write_json, atomic_write_text
    from torchgpt.train import PEAK_BF16_FLOPS

    def log(message):
        print(message, file=sys.stderr, flush=True)

    if args.smoke:
        device, gpu, peak = torch.device("cpu"), "CPU (--smoke: tiny models, the numbers mean nothing)", None
        config, llama_config = get_config("tiny", drop_rate=0.0), get_config("tiny-llama")
        batch_sizes, seq_len, steps, warmup, new_tokens, repeats = [2], 32, 2, 1, 4, 1
        compile_variants, names, use_hf = (False,), ("tiny", "tiny-llama"), False
    else:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        device, gpu = torch.device("cuda"), torch.cuda.get_device_name(0)
        peak = args.peak_tflops * 1e12 if args.peak_tflops else next(
            (flops for key, flops in PEAK_BF16_FLOPS.items() if key in gpu), None)
        config = get_config("gpt2-small", context_length=max(1024, args.seq_len), drop_rate=0.0)
        llama_config = get_config("smollm2-135m")
        batch_sizes, seq_len, steps, warmup = args.batch_sizes, args.seq_len, args.steps, args.warmup
        new_tokens, repeats = args.new_tokens, args.decode_repeats
        compile_variants, names, use_hf = (False, True), ("GPT-2 124M", "SmolLM2-135M shape"), True

    result = {"gpu": gpu, "peak_tflops": peak / 1e12 if peak else None, "torch": torch.__version__,
              "cuda": torch.version.cuda, "platform": platform.platform(), "smoke": args.smoke,
              "train_model": "tiny (GPT-2 shape)" if args.smoke else "GPT-2 124M",
              "args": {k: str(v) for k, v in vars(args).items()}}
    result["train"] = train_rows(config, batch_sizes, seq_len, steps, warmup, peak, log, device, compile_variants)
    result["decode"] = decode_rows(config, llama_config, new_tokens, repeats, log, device, names, use_hf)
    table = markdown(result)
    atomic_write_json(args.out / "gpu.json", result)
    atomic_write_text(args.out / "gpu.md", table + "\n")
    print(table)
    print(json.dumps({"wrote": [str(args.out / "gpu.json"), str(args.out / "gpu.md")]}), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
