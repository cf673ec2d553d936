"""`gpt2 bench`: NumPy (npgpt) against PyTorch (torchgpt eager, torchgpt with SDPA) and Hugging Face
transformers, per component and end to end, with sweeps over T and model size.

    gpt2 bench                      # the full run (~10-20 minutes on 2 quiet cores), results in bench_results/
    gpt2 bench --quick              # a smoke run in under a minute (tiny sizes; its numbers are not claims)
    gpt2 bench --sections models decode --repeats 7 --threads 2 --out bench_results/run2
    python -m benchmarks.suite ...  # the same without the CLI

Sections (all by default):
    components   forward and backward of layernorm, gelu, softmax, attention, feedforward, block at
                 the width of --model, batch --batch-size, for every T of --t-values (the table shows T = --seq-len)
    models       model forward and train step (forward + backward + AdamW) at --batch-size x --seq-len for
                 every size of the size ladder up to --model, with achieved model FLOP/s (benchmarks.cases.model_flops)
    sweep_t      --model's forward and train step at batch 1 for every T of --t-values
    decode       batch-1 greedy decoding with KV caches, tokens/s (benchmarks.bench_decode)

Outputs in --out: bench.json (everything, including every repeat's time), bench.md (the tables printed on
stdout), time_vs_T.png, ratio_per_component.png, time_vs_size.png. Method: benchmarks/harness.py and
docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import gc
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from benchmarks import cases, harness, report
from benchmarks.cases import size_config

DEFAULT_OUT = Path("bench_results")

# Targets of the benchmarks issue, checked on the headline shape (GPT-2 124M, B=4, T=256) when it is run.
TARGETS = {
    "train_step numpy/torch time": 1.0,          # <=
    "forward numpy/torch time": 0.9,             # <=
    "decode numpy speed-up over hf": 1.4,        # >=
    "train_step model FLOP/s / numpy GEMM FLOP/s": 0.65,   # >=
}
HEADLINE = {"model": "gpt2-small", "batch_size": 4, "seq_len": 256}


@dataclass
class BenchSettings:
    threads: int = field(default_factory=harness.usable_cpus)
    repeats: int = 5
    warmup: int = 1
    model: str = "gpt2-small"
    batch_size: int = 4
    seq_len: int = 256
    t_values: tuple = (64, 128, 256, 512, 1024)
    sizes: tuple = ("tiny", "C256-L4", "C512-L8", "gpt2-small")
    sweep_t_batch_size: int = 1
    sections: tuple = ("components", "models", "sweep_t", "decode")
    use_hf: bool = True
    drop_rate: float | None = None                # None: the preset's (0.1 for the GPT-2 sizes)
    decode_prompt_tokens: int = 32
    decode_new_tokens: int = 100
    gemm_n: int = 2048
    min_time: float = 0.02                        # a measurement shorter than this loops the call
    quick: bool = False

    @classmethod
    def quick_settings(cls, **overrides) -> "BenchSettings":
        """Tiny sizes and few repeats: the whole thing in well under a minute (numbers are not claims)."""
        values = dict(repeats=3, model="tiny", batch_size=2, seq_len=32, t_values=(16, 32, 64),
                      sizes=("tiny", "C128-L2"), decode_prompt_tokens=8, decode_new_tokens=8, gemm_n=512, min_time=0.005,
                      quick=True)
        values.update(overrides)
        return cls(**values)


def _free_memory():
    gc.collect()


def run_components(settings: BenchSettings, log) -> list[dict]:
    config = size_config(settings.model, 0.0)
    rows = []
    for seq_len in settings.t_values:
        for component in cases.COMPONENTS:
            fns = cases.component_cases(component, config, settings.batch_size, seq_len)
            for direction in ("forward", "backward"):
                result = harness.measure(fns[direction], repeats=settings.repeats, warmup=settings.warmup,
                                         min_time=settings.min_time)
                rows.append({"component": component, "direction": direction, "batch_size": settings.batch_size,
                             "seq_len": seq_len, "emb_dim": config.emb_dim, "n_heads": config.n_heads} | result)
                log(f"component {component:11s} {direction:8s} T={seq_len:<5d} " + report.brief(result))
            del fns
            _free_memory()
    return rows


def _model_rows(config, size_name, batch_size, seq_len, settings, log, numpy_gemm_gflops) -> list[dict]:
    model_cases = cases.ModelCases(config, batch_size, seq_len, use_hf=settings.use_hf)
    rows = []
    for task in ("forward", "train_step"):
        result = harness.measure(model_cases.functions(task), repeats=settings.repeats,
                                 warmup=max(2, settings.warmup) if task == "train_step" else settings.warmup,
                                 min_time=settings.min_time)
        flops = model_cases.flops(task)
        achieved = {name: flops / stats["median"] / 1e9 for name, stats in result["stats"].items()}
        row = {"size": size_name, "task": task, "params": model_cases.n_params, "batch_size": batch_size,
               "seq_len": seq_len, "drop_rate": model_cases.config.drop_rate, "model_gflop": flops / 1e9,
               "achieved_gflops": achieved} | result
        if numpy_gemm_gflops:
            row["numpy_fraction_of_numpy_gemm"] = achieved["numpy"] / numpy_gemm_gflops
        rows.append(row)
        log(f"model {size_name:10s} {task:10s} B={batch_size} T={seq_len:<5d} " + report.brief(result))
    del model_cases
    _free_memory()
    return rows


def run_models(settings: BenchSettings, log, numpy_gemm_gflops) -> list[dict]:
    sizes = list(dict.fromkeys(list(settings.sizes) + [settings.model]))   # the headline size included, once
    rows = []
    for name in sizes:
        rows += _model_rows(size_config(name, settings.drop_rate), name, settings.batch_size, settings.seq_len,
                            settings, log, numpy_gemm_gflops)
    return rows


def run_sweep_t(settings: BenchSettings, log, numpy_gemm_gflops) -> list[dict]:
    config = size_config(settings.model, settings.drop_rate)
    rows = []
    for seq_len in settings.t_values:
        rows += _model_rows(config, settings.model, settings.sweep_t_batch_size, seq_len, settings, log,
                            numpy_gemm_gflops)
    return rows


def run_decode(settings: BenchSettings, log) -> dict:
    from benchmarks import bench_decode

    result = bench_decode.run_benchmark(settings.model, settings.decode_prompt_tokens, settings.decode_new_tokens,
                                        settings.repeats, settings.threads, use_hf=settings.use_hf)
    log("decode " + ", ".join(f"{name} {rate:.1f} tokens/s" for name, rate in result["median_tokens_per_s"].items()))
    return result


def check_targets(result: dict, settings: BenchSettings) -> list[dict]:
    """The issue's targets on the headline shape, with the measured value and whether it is met."""
    headline = (settings.model, settings.batch_size, settings.seq_len) == tuple(HEADLINE.values())
    checks = []
    for row in result.get("models", []):
        if row["size"] != settings.model or row["batch_size"] != settings.batch_size or row["seq_len"] != settings.seq_len:
            continue
        ratio = row["ratio_vs_torch"]["numpy"]
        if row["task"] == "train_step":
            checks.append({"target": "train_step numpy/torch time", "limit": "<= 1.0", "measured": ratio,
                           "met": ratio <= TARGETS["train_step numpy/torch time"]})
            if "numpy_fraction_of_numpy_gemm" in row:
                fraction = row["numpy_fraction_of_numpy_gemm"]
                checks.append({"target": "train_step model FLOP/s / numpy GEMM FLOP/s", "limit": ">= 0.65",
                               "measured": fraction,
                               "met": fraction >= TARGETS["train_step model FLOP/s / numpy GEMM FLOP/s"]})
        else:
            checks.append({"target": "forward numpy/torch time", "limit": "<= 0.9", "measured": ratio,
                           "met": ratio <= TARGETS["forward numpy/torch time"]})
    decode = result.get("decode")
    if decode and "median_speedup_vs_hf" in decode:
        speedup = decode["median_speedup_vs_hf"]["numpy"]
        checks.append({"target": "decode numpy speed-up over hf", "limit": ">= 1.4", "measured": speedup,
                       "met": speedup >= TARGETS["decode numpy speed-up over hf"]})
    for check in checks:
        check["headline_shape"] = headline      # the targets are stated for GPT-2 124M, B=4, T=256
    return checks


def command_line(settings: BenchSettings, out: Path) -> str:
    """A `gpt2 bench` command that repeats this run (every setting spelled out)."""
    parts = ["gpt2 bench"] + (["--quick"] if settings.quick else []) + [
        f"--threads {settings.threads}", f"--repeats {settings.repeats}", f"--model {settings.model}",
        f"--batch-size {settings.batch_size}", f"--seq-len {settings.seq_len}",
        "--t-values " + " ".join(map(str, settings.t_values)), "--sizes " + " ".join(settings.sizes),
        "--sections " + " ".join(settings.sections)]
    if settings.drop_rate is not None:
        parts.append(f"--drop-rate {settings.drop_rate}")
    if not settings.use_hf:
        parts.append("--no-hf")
    return " ".join(parts + [f"--out {out}"])


def run(settings: BenchSettings, out: Path, *, log=print) -> dict:
    """Runs the selected sections, writes bench.json, bench.md and the plots into `out`, returns the result."""
    from npgpt.fileio import atomic_write_json, atomic_write_text
    from npgpt.memory import keep_freed_memory

    unknown = set(settings.sections) - {"components", "models", "sweep_t", "decode"}
    if unknown:
        raise ValueError(f"unknown sections {sorted(unknown)}; choose from components, models, sweep_t, decode")
    if settings.threads < 1 or settings.repeats < 1:
        raise ValueError("--threads and --repeats must be at least 1")
    for name in list(settings.sizes) + [settings.model]:
        size_config(name, settings.drop_rate)        # bad names fail now, not after minutes of work
    if settings.use_hf and not cases.hf_available():
        log("transformers is not installed (pip install -e .[bench]): running without the hf column")
        settings.use_hf = False
    started = time.time()
    # Process-wide and for every library alike: freed arrays are reused instead of mapped anew (npgpt.memory).
    malloc_reuse = keep_freed_memory()
    result: dict = {"command": command_line(settings, out), "settings": asdict(settings),
                    "machine": harness.machine_info(settings.threads), "malloc_keeps_freed_memory": malloc_reuse}
    with harness.limited_threads(settings.threads):
        # torch's thread counts as the measurements see them (inside the limits), with its parallel backend
        result["machine"]["torch_parallel"] = harness.torch_parallel_info()
        result["gemm_gflops"] = harness.gemm_gflops(settings.gemm_n, max(3, settings.repeats))
        numpy_gemm = result["gemm_gflops"]["numpy"]["median"]
        log(f"GEMM {settings.gemm_n}^3: numpy {numpy_gemm:.1f} GFLOP/s, "
            f"torch {result['gemm_gflops']['torch']['median']:.1f} GFLOP/s ({settings.threads} threads)")
        sections = {"components": lambda: run_components(settings, log),
                    "models": lambda: run_models(settings, log, numpy_gemm),
                    "sweep_t": lambda: run_sweep_t(settings, log, numpy_gemm),
                    "decode": lambda: run_decode(settings, log)}
        result["section_seconds"] = {}
        for name, run_section in sections.items():
            if name in settings.sections:
                section_start = time.time()
                result[name] = run_section()
                result["section_seconds"][name] = round(time.time() - section_start, 1)
    result["targets"] = check_targets(result, settings)
    result["machine"]["load_average_end"] = harness.load_average()
    result["seconds"] = round(time.time() - started, 1)
    out = Path(out)
    markdown = report.markdown(result)
    atomic_write_json(out / "bench.json", result)
    atomic_write_text(out / "bench.md", markdown + "\n")
    result["plots"] = [str(path) for path in report.plots(result, out)]
    print(markdown)
    log(f"\nwrote {out / 'bench.json'}, {out / 'bench.md'} and {len(result['plots'])} plots")
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = BenchSettings()
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 3 repeats: a smoke run in under a minute "
                                                             "(its numbers are not claims)")
    parser.add_argument("--sections", nargs="+", choices=("components", "models", "sweep_t", "decode"),
                        help="what to run (default: all)")
    parser.add_argument("--threads", type=int, help=f"threads for every library (default: all usable CPUs, "
                                                     f"{defaults.threads} here)")
    parser.add_argument("--repeats", type=int, help="timed repeats per case (default 5; quick 3)")
    parser.add_argument("--model", help="the largest size and the components' width (default gpt2-small)")
    parser.add_argument("--batch-size", type=int, help="B of the component and model sections (default 4)")
    parser.add_argument("--seq-len", type=int, help="T of the model section and the headline tables (default 256)")
    parser.add_argument("--t-values", type=int, nargs="+", help="the T sweep (default 64 128 256 512 1024)")
    parser.add_argument("--sizes", nargs="+", help="the size ladder: presets or C<width>-L<layers> "
                                                   "(default tiny C256-L4 C512-L8 gpt2-small)")
    parser.add_argument("--drop-rate", type=float, help="dropout of the train step (default: the preset's)")
    parser.add_argument("--no-hf", action="store_true", help="leave out Hugging Face transformers")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT}/)")


def settings_from_args(args) -> BenchSettings:
    overrides = {key: value for key, value in {
        "threads": args.threads, "repeats": args.repeats, "model": args.model, "batch_size": args.batch_size,
        "seq_len": args.seq_len, "drop_rate": args.drop_rate,
        "t_values": tuple(args.t_values) if args.t_values else None,
        "sizes": tuple(args.sizes) if args.sizes else None,
        "sections": tuple(args.sections) if args.sections else None,
    }.items() if value is not None}
    if args.no_hf:
        overrides["use_hf"] = False
    settings = BenchSettings.quick_settings(**overrides) if args.quick else BenchSettings(**overrides)
    if settings.seq_len not in settings.t_values and "components" in settings.sections:
        settings.t_values = tuple(sorted(set(settings.t_values) | {settings.seq_len}))
    return settings


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.suite", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    run(settings_from_args(args), args.out, log=lambda message: print(message, file=sys.stderr, flush=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
