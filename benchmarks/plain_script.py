"""The plain-script benchmark: npgpt as a user's own script calls it, against torch and transformers.

    python benchmarks/plain_script.py                    # GPT-2 124M, B=4, T=256; decode 32 + 100 tokens
    python benchmarks/plain_script.py --quick            # the tiny model: a smoke run (numbers are not claims)
    python benchmarks/plain_script.py --weights runs/a --repeats 7 --out bench_results/plain

What `gpt2 bench` measures is the speed of its own set-up (thread limits, the allocator settings it applies);
this script measures what a learner's or a researcher's script gets. It runs in a fresh process, sets up
nothing, limits no threads (every library runs with its own defaults, recorded in the header) and calls
only the public API:

    import numpy as np                             # NumPy first, as most scripts do (npgpt restarts
    import npgpt                                   # OpenBLAS's threads with its short timeout, see header)
    config, params = npgpt.load_weights(path)      # or npgpt.model.init_params(config)
    npgpt.model.infer(params, idx, config)         # against torch's no_grad forward
    logits, cache = npgpt.model.forward(...); npgpt.model.backward(...); AdamW.step(...)   # a train step
    npgpt.generate.generate(params, config, prompt, 100)                                 # decoding

against torchgpt.GPTModel (as built by default) and, when transformers is installed, Hugging Face's
GPT2LMHeadModel, all on the same weights. Timings are interleaved in one process (repeat 1: numpy, torch,
hf; repeat 2: torch, hf, numpy; ...) and the ratios are medians of per-repeat ratios
(benchmarks.harness.time_interleaved: timing only, no set-up). Reported: infer NumPy/torch, train step
NumPy/torch (forward, cross-entropy, backward, AdamW; no dropout), decode tokens/s (batch 1, greedy, no
stop token) and NumPy's speed-up over transformers. Writes plain_script.md and plain_script.json (with
the header: CPU, versions, thread counts, the BLAS kernel and OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE).
"""
from __future__ import annotations

import os
import sys

if __package__ in (None, ""):                      # run as `python benchmarks/plain_script.py`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402  (before npgpt, as most scripts import them)

import npgpt  # noqa: E402
import npgpt.generate  # noqa: E402
import npgpt.model  # noqa: E402

import argparse  # noqa: E402
import copy  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from benchmarks import harness  # noqa: E402
from gptcore.fileio import atomic_write_json, atomic_write_text  # noqa: E402
from npgpt.loss import cross_entropy_loss_and_grad  # noqa: E402
from npgpt.optim import AdamW  # noqa: E402
from npgpt.speed import memory  # noqa: E402

FULL = {"model": "gpt2-small", "batch_size": 4, "seq_len": 256, "prompt_tokens": 32, "new_tokens": 100,
        "repeats": 5}
QUICK = {"model": "tiny", "batch_size": 2, "seq_len": 32, "prompt_tokens": 8, "new_tokens": 8, "repeats": 2}
DEFAULT_OUT = Path("bench_results") / "plain_script"


def hf_installed() -> bool:
    try:
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


def load_models(model_name: str, weights: str | None, use_hf: bool, folder: Path):
    """(config, params, torch model, hf model or None), every engine on the same weights, no dropout.

    npgpt.load_weights reads --weights (any format it knows); without them npgpt.model.init_params makes a
    random model. transformers gets the same weights through a Hugging Face folder that save_weights writes.
    """
    import torchgpt
    from gptcore.config import get_config
    from gptcore.formats.weights import save_weights

    if weights:
        config, params = npgpt.load_weights(weights)
    else:
        config = get_config(model_name)
        if use_hf and not config.qkv_bias:           # transformers' GPT-2 always has query/key/value biases
            config = config.replace(qkv_bias=True)
        params = npgpt.model.init_params(config, seed=0)
    config = config.replace(drop_rate=0.0)
    torch_model = torchgpt.load_numpy_params(torchgpt.GPTModel(config), params)
    hf_model = None
    if use_hf and not config.qkv_bias:
        print("these weights have no query/key/value biases, which transformers' GPT-2 always has: running "
              "without the hf column", file=sys.stderr)
    elif use_hf:
        from transformers import GPT2LMHeadModel

        save_weights(folder, config, params, format="huggingface")
        hf_model = GPT2LMHeadModel.from_pretrained(folder, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0).eval()
    return config, params, torch_model, hf_model


def infer_functions(config, params, torch_model, hf_model, idx):
    import torch

    tidx = torch.from_numpy(idx)

    def torch_infer(model, hf=False):
        model.eval()
        with torch.no_grad():
            out = model(tidx)
        return out.logits if hf else out

    fns = {"numpy": lambda: npgpt.model.infer(params, idx, config), "torch": lambda: torch_infer(torch_model)}
    if hf_model is not None:
        fns["hf"] = lambda: torch_infer(hf_model, hf=True)
    return fns


def train_functions(config, params, torch_model, hf_model, idx, targets):
    """A train step each: forward, mean cross-entropy, backward, AdamW (lr 4e-4, weight decay 0.1)."""
    import torch
    import torch.nn.functional as F

    params = copy.deepcopy(params)      # trained copies (ties and memory layout kept): the decode runs keep the
                                        # loaded weights
    optimizer = AdamW(lr=4e-4, weight_decay=0.1)

    def numpy_step():
        logits, cache = npgpt.model.forward(params, idx, config)
        loss, dlogits = cross_entropy_loss_and_grad(logits, targets, overwrite_logits=True)
        grads = npgpt.model.backward(dlogits, cache)
        optimizer.step(params, grads)
        return loss

    tidx, ttargets = torch.from_numpy(idx), torch.from_numpy(targets).reshape(-1)

    def torch_step(model, opt, hf=False):
        model.train()
        opt.zero_grad(set_to_none=True)
        logits = model(tidx)
        logits = logits.logits if hf else logits
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ttargets)
        loss.backward()
        opt.step()
        return loss.item()

    torch_copy = copy.deepcopy(torch_model)
    torch_opt = torch.optim.AdamW(torch_copy.parameters(), lr=4e-4, weight_decay=0.1)
    fns = {"numpy": numpy_step, "torch": lambda: torch_step(torch_copy, torch_opt)}
    if hf_model is not None:
        hf_copy = copy.deepcopy(hf_model)
        hf_opt = torch.optim.AdamW(hf_copy.parameters(), lr=4e-4, weight_decay=0.1)
        fns["hf"] = lambda: torch_step(hf_copy, hf_opt, hf=True)
    return fns


def decode_functions(config, params, torch_model, hf_model, prompt, new_tokens):
    """Greedy batch-1 decoding of exactly new_tokens tokens (no stop token), each engine as a script calls it;
    numpy_torch_layout is npgpt on the same weights stored row by row, as torch stores them
    (npgpt.model.torch_layout; init_params(layout="torch")): what the default "fast" layout is worth."""
    import torch

    import torchgpt.generate

    rows = npgpt.model.torch_layout(params)
    fns = {"numpy": lambda: npgpt.generate.generate(params, config, prompt, new_tokens, stop_ids=()),
           "numpy_torch_layout": lambda: npgpt.generate.generate(rows, config, prompt, new_tokens, stop_ids=()),
           "torchgpt": lambda: torchgpt.generate.generate(torch_model.eval(), prompt, new_tokens, stop_ids=())}
    if hf_model is not None:
        tprompt = torch.tensor([prompt])

        def hf_generate():
            with torch.no_grad():
                out = hf_model.generate(tprompt, attention_mask=torch.ones_like(tprompt), max_new_tokens=new_tokens,
                                        min_new_tokens=new_tokens, do_sample=False, num_beams=1, use_cache=True,
                                        pad_token_id=0)
            return out[0, len(prompt):].tolist()

        fns["hf"] = hf_generate
    return fns


# Issue 17's targets for NumPy / torch eager time (lower is better).
TARGETS = {"infer": 0.8, "train_step": 0.85}
SQUARE_GEMMS = (1024, 2048, 4096)


def machine_floor(config, batch_size: int, seq_len: int, result: dict, quick: bool = False) -> dict:
    """What this machine allows NumPy at all: the fewest matmul FLOPs of each task (benchmarks.cases.
    min_matmul_flops: the causal half of the attention, nothing else skipped) at NumPy's fastest GEMM rate
    measured here (every linear layer's three GEMMs and large square ones: harness.best_numpy_gemm_rate),
    with no time for anything else. That floor over torch's median time of this run is the lowest NumPy/torch
    ratio any NumPy code could reach on this machine; the target is out of reach where it is above the target."""
    from benchmarks.cases import linear_gemm_shapes, min_matmul_flops

    squares = (256,) if quick else SQUARE_GEMMS
    shapes = linear_gemm_shapes(config, batch_size * seq_len) + [(n, n, n) for n in squares]
    gemm = harness.best_numpy_gemm_rate(shapes, min_time=0.05 if quick else 0.3)
    tasks = {}
    for task, target in TARGETS.items():
        gflop = min_matmul_flops(config, batch_size, seq_len, train=task == "train_step") / 1e9
        floor_s = gflop / gemm["best_gflops"]
        torch_s, numpy_s = (statistics.median(result[task]["times_s"][k]) for k in ("torch", "numpy"))
        tasks[task] = {"min_gflop": gflop, "floor_s": floor_s, "torch_s": torch_s, "numpy_s": numpy_s,
                       "lowest_ratio": floor_s / torch_s, "target": target,
                       "numpy_share_of_floor": floor_s / numpy_s, "target_reachable": floor_s / torch_s <= target}
    return {"gemm": gemm, "tasks": tasks}


def floor_table(floor: dict) -> list[str]:
    best = floor["gemm"]
    lines = ["", f"What the machine allows (issue 17's targets): NumPy's fastest GEMM measured here ran at "
                 f"{best['best_gflops']:.0f} GFLOP/s (M, K, N = {tuple(best['best_shape'])}, the best of "
                 f"{len(best['rates'])} shapes: every linear layer's forward, input-gradient and weight-gradient "
                 f"GEMM and large square ones). The floor is the task's fewest matmul FLOPs (the causal half of "
                 f"attention) at that rate with nothing else done; floor / torch is the lowest NumPy/torch ratio "
                 f"any NumPy code could reach here.", "",
             "| task | matmul GFLOP (minimum) | floor | torch | lowest possible numpy / torch | target | reachable "
             "| numpy | numpy's share of the floor |",
             "| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |"]
    for task, row in floor["tasks"].items():
        lines.append(f"| {task} | {row['min_gflop']:.1f} | {row['floor_s']:.3f} s | {row['torch_s']:.3f} s | "
                     f"{row['lowest_ratio']:.3f} | {row['target']} | {'yes' if row['target_reachable'] else 'no'} "
                     f"| {row['numpy_s']:.3f} s | {row['numpy_share_of_floor']:.0%} |")
    return lines


def per_repeat_ratio(times: dict, numerator: str, denominator: str) -> float | None:
    if numerator not in times or denominator not in times:
        return None
    return statistics.median(a / b for a, b in zip(times[numerator], times[denominator]))


def header() -> dict:
    """The machine as the script ran: CPU, versions, each library's DEFAULT thread counts (nothing limited),
    the BLAS kernel with OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE, the allocator setting, the load."""
    import torch
    from threadpoolctl import threadpool_info

    return {"cpu": harness.cpu_model(), "usable_cpus": harness.usable_cpus(), "platform": platform.platform(),
            "python": platform.python_version(), "numpy": np.__version__, "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "blas_threads": [info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"],
            "blas_kernel": harness.openblas_kernel(),
            "openblas_thread_timeout": os.environ.get("OPENBLAS_THREAD_TIMEOUT"),
            "openblas_thread_timeout_how": harness.openblas_thread_timeout_how(),
            "malloc_keeps_freed_memory": memory.is_applied(), "load_average_start": harness.load_average()}


def run(settings: dict, weights: str | None, use_hf: bool, log=print) -> dict:
    rng = np.random.default_rng(0)
    result = {"settings": dict(settings, weights=weights, use_hf=use_hf), "machine": header(),
              "started": time.time()}
    with tempfile.TemporaryDirectory() as tmp:
        config, params, torch_model, hf_model = load_models(settings["model"], weights, use_hf, Path(tmp) / "hf")
    B, T = settings["batch_size"], min(settings["seq_len"], config.context_length)
    idx = rng.integers(0, config.vocab_size, (B, T))
    targets = rng.integers(0, config.vocab_size, (B, T))
    prompt = rng.integers(0, config.vocab_size, settings["prompt_tokens"]).tolist()
    new_tokens = min(settings["new_tokens"], config.context_length - len(prompt))
    result["model_config"] = config.to_dict()
    result["shape"] = {"batch_size": B, "seq_len": T, "prompt_tokens": len(prompt), "new_tokens": new_tokens}
    repeats = settings["repeats"]

    times = harness.time_interleaved(infer_functions(config, params, torch_model, hf_model, idx),
                                     repeats=repeats, warmup=1, min_time=0.0)
    result["infer"] = {"times_s": times, "stats": {k: harness.summarize(v) for k, v in times.items()}}
    log("infer " + ", ".join(f"{k} {statistics.median(v):.3f} s" for k, v in times.items()))

    times = harness.time_interleaved(train_functions(config, params, torch_model, hf_model, idx, targets),
                                     repeats=repeats, warmup=2, min_time=0.0)
    result["train_step"] = {"times_s": times, "stats": {k: harness.summarize(v) for k, v in times.items()}}
    log("train step " + ", ".join(f"{k} {statistics.median(v):.3f} s" for k, v in times.items()))

    result["floor"] = machine_floor(config, B, T, result, quick=settings.get("quick", False))
    log("floor " + ", ".join(f"{task} numpy/torch >= {row['lowest_ratio']:.2f} (target {row['target']})"
                             for task, row in result["floor"]["tasks"].items()))

    fns = decode_functions(config, params, torch_model, hf_model, prompt, new_tokens)
    tokens = {name: fn() for name, fn in fns.items()}
    times = harness.time_interleaved(fns, repeats=repeats, warmup=0, min_time=0.0)
    rates = {name: [new_tokens / t for t in values] for name, values in times.items()}
    result["decode"] = {"times_s": times, "tokens_per_s": rates,
                        "median_tokens_per_s": {k: statistics.median(v) for k, v in rates.items()},
                        "same_tokens_as_numpy": {k: v == tokens["numpy"] for k, v in tokens.items()}}
    log("decode " + ", ".join(f"{k} {v:.1f} tokens/s" for k, v in result["decode"]["median_tokens_per_s"].items()))

    result["ratios"] = {
        "infer numpy/torch time": per_repeat_ratio(result["infer"]["times_s"], "numpy", "torch"),
        "train_step numpy/torch time": per_repeat_ratio(result["train_step"]["times_s"], "numpy", "torch"),
        "infer numpy/hf time": per_repeat_ratio(result["infer"]["times_s"], "numpy", "hf"),
        "train_step numpy/hf time": per_repeat_ratio(result["train_step"]["times_s"], "numpy", "hf"),
        "decode numpy speed-up over hf": per_repeat_ratio(times, "hf", "numpy"),
        "decode numpy (torch layout) speed-up over hf": per_repeat_ratio(times, "hf", "numpy_torch_layout"),
    }
    result["machine"]["load_average_end"] = harness.load_average()
    result["seconds"] = round(time.time() - result["started"], 1)
    return result


def markdown(result: dict) -> str:
    machine, shape, settings = result["machine"], result["shape"], result["settings"]
    lines = ["# Plain-script benchmark (benchmarks/plain_script.py)", ""]
    if settings.get("quick"):
        lines += ["**Quick run (--quick): the tiny model; these numbers are not claims.**", ""]
    lines += [
        f"- Model: {settings['model'] if not settings.get('weights') else settings['weights']} "
        f"({result['model_config']['n_layers']} layers, width {result['model_config']['emb_dim']}), no dropout; "
        f"B={shape['batch_size']}, T={shape['seq_len']}; decode: batch 1, {shape['prompt_tokens']}-token prompt + "
        f"{shape['new_tokens']} new tokens, greedy.",
        f"- Machine: {machine['cpu']}, {machine['usable_cpus']} usable CPUs; {machine['platform']}; Python "
        f"{machine['python']}, NumPy {machine['numpy']}, torch {machine['torch']}.",
        f"- Threads as each library defaults (nothing limited): torch {machine['torch_threads']}, NumPy's BLAS "
        f"{machine['blas_threads']}. OPENBLAS_THREAD_TIMEOUT={machine['openblas_thread_timeout']} "
        f"({machine.get('openblas_thread_timeout_how')}); glibc malloc "
        f"keeps freed memory: {machine['malloc_keeps_freed_memory']} (import npgpt).",
        f"- NumPy's BLAS kernel: {harness.kernel_line(machine['blas_kernel'])}.",
        f"- Load average (1/5/15 min) at start {machine['load_average_start']}, at end "
        f"{machine.get('load_average_end')}. {settings['repeats']} interleaved repeats in one process; cells are "
        f"medians; ratios are medians of per-repeat ratios.", "",
        "| task | numpy | torch | hf | numpy / torch | numpy / hf |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for task in ("infer", "train_step"):
        stats = result[task]["stats"]
        cells = [f"{stats[k]['median']:.3f} s" if k in stats else "-" for k in ("numpy", "torch", "hf")]
        ratios = [result["ratios"][f"{task} numpy/{k} time"] for k in ("torch", "hf")]
        lines.append(f"| {task} | " + " | ".join(cells) + " | "
                     + " | ".join("-" if r is None else f"{r:.2f}" for r in ratios) + " |")
    lines += ["", "| decode engine | tokens/s (median) | speed-up over hf | same tokens as numpy |",
              "| --- | ---: | ---: | --- |"]
    decode = result["decode"]
    for name, rate in decode["median_tokens_per_s"].items():
        hf = decode["median_tokens_per_s"].get("hf")
        speedup = per_repeat_ratio(decode["times_s"], "hf", name) if hf else None
        lines.append(f"| {name} | {rate:.1f} | {'-' if speedup is None else f'{speedup:.2f}x'} | "
                     f"{decode['same_tokens_as_numpy'][name]} |")
    if "floor" in result:
        lines += floor_table(result["floor"])
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the tiny model, 2 repeats, no transformers unless "
                                                             "--hf: a smoke run (its numbers are not claims)")
    parser.add_argument("--weights", help="weights to load with npgpt.load_weights (default: random GPT-2 124M)")
    parser.add_argument("--repeats", type=int, help="interleaved repeats (default 5; quick 2)")
    hf = parser.add_mutually_exclusive_group()
    hf.add_argument("--hf", action="store_true", help="include transformers (the default of a full run)")
    hf.add_argument("--no-hf", action="store_true", help="leave transformers out")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    settings = dict(QUICK if args.quick else FULL, quick=args.quick)
    if args.repeats is not None:
        if args.repeats < 1:
            parser.error("--repeats must be at least 1")
        settings["repeats"] = args.repeats
    use_hf = args.hf or (not args.quick and not args.no_hf)
    if use_hf and not hf_installed():
        print("transformers is not installed (pip install -e .[bench]): running without the hf column", file=sys.stderr)
        use_hf = False
    result = run(settings, args.weights, use_hf, log=lambda message: print(message, file=sys.stderr, flush=True))
    table = markdown(result)
    atomic_write_json(args.out / "plain_script.json", result)
    atomic_write_text(args.out / "plain_script.md", table + "\n")
    print(table)
    print(f"\nwrote {args.out / 'plain_script.json'} and {args.out / 'plain_script.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
