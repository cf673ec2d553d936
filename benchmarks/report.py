"""The outputs of `gpt2 bench`: markdown tables (stdout and bench.md) and PNG plots, from the result dict."""
from __future__ import annotations

from pathlib import Path

from benchmarks import bench_smollm2
from benchmarks.harness import kernel_line

BACKEND_LABELS = {"numpy": "numpy", "torch": "torch eager", "torch_sdpa": "torch sdpa", "hf": "hf transformers"}
DIRECTION_LABELS = {"forward": "fwd", "backward": "bwd"}


def fmt_seconds(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1.0:
        return f"{seconds * 1e3:.1f} ms" if seconds < 0.1 else f"{seconds * 1e3:.0f} ms"
    return f"{seconds:.2f} s"


def cell(stats: dict | None) -> str:
    """'median [min-max]' of a stats dict, '-' when the backend was not run."""
    if not stats:
        return "-"
    return f"{fmt_seconds(stats['median'])} [{fmt_seconds(stats['min'])}-{fmt_seconds(stats['max'])}]"


def ratio(row: dict, backend: str = "numpy", reference: str = "torch") -> str:
    value = row.get(f"ratio_vs_{reference}", {}).get(backend)
    return "-" if value is None else f"{value:.2f}"


def brief(result: dict) -> str:
    """One log line: median per backend and numpy/torch."""
    parts = [f"{name} {fmt_seconds(stats['median'])}" for name, stats in result["stats"].items()]
    r = result.get("ratio_vs_torch", {}).get("numpy")
    return ", ".join(parts) + (f"; numpy/torch {r:.2f}" if r is not None else "")


def _backends(rows: list[dict]) -> list[str]:
    seen = {name for row in rows for name in row["stats"]}
    return [name for name in BACKEND_LABELS if name in seen]


def header(result: dict) -> list[str]:
    machine, settings = result["machine"], result["settings"]
    pools = "; ".join(f"{p.get('internal_api', p.get('user_api'))} {p.get('version') or ''} "
                      f"({p.get('user_api')}{', ' + p['architecture'] if p.get('architecture') else ''}, "
                      f"{p.get('num_threads')} threads by default, {p['file']})".replace("  ", " ")
                      for p in machine["thread_pools"])
    gemm = result["gemm_gflops"]
    lines = ["# gpt2 bench", ""]
    if settings.get("quick"):
        lines += ["**Quick run (--quick): tiny sizes and few repeats; these numbers are not claims.**", ""]
    if not result.get("complete", True):
        failed = result.get("failed_section")
        stopped = (f"stopped in {failed['section']} ({failed['error']})" if failed
                   else "the run is still going (this file is rewritten after every section)")
        lines += [f"**Partial results: sections done: {', '.join(result.get('sections_done', [])) or 'none'}; "
                  f"{stopped}.**", ""]
    if result.get("command"):
        lines += [f"Command: `{result['command']}`", ""]
    load_start, load_end = machine.get("load_average_start"), machine.get("load_average_end")
    lines += [
        f"- Machine: {machine['cpu']}, {machine['usable_cpus']} usable CPUs; {machine['platform']}; "
        f"Python {machine['python']}, NumPy {machine['numpy']}, torch {machine['torch']} (BLAS: {machine['torch_blas']}).",
        f"- Threads: {settings['threads']} for every library (NumPy BLAS via threadpoolctl, npgpt.speed.parallel, "
        f"torch.set_num_threads). Load average (1/5/15 min) at start {load_start}, at end {load_end}.",
        f"- torch parallel info (as measured): {'; '.join(machine.get('torch_parallel') or ['not recorded'])}.",
        f"- Native thread pools: {pools}. OPENBLAS_THREAD_TIMEOUT={machine.get('openblas_thread_timeout')} "
        f"(idle OpenBLAS workers sleep after 2^n cycles; npgpt sets 4, see npgpt/speed/blas_threads.py: "
        f"{machine.get('openblas_thread_timeout_how') or 'not recorded'}).",
        f"- NumPy's BLAS kernel: {kernel_line(machine['blas_kernel']) if machine.get('blas_kernel') else 'not recorded'} "
        f"(a forced core type changes NumPy's GEMM rate; compare runs with the same kernel, docs/benchmarks.md).",
        f"- Measured GEMM ({gemm['numpy']['n']}^3, float32): numpy {gemm['numpy']['median']:.1f} GFLOP/s "
        f"[{gemm['numpy']['min']:.1f}-{gemm['numpy']['max']:.1f}], torch {gemm['torch']['median']:.1f} GFLOP/s "
        f"[{gemm['torch']['min']:.1f}-{gemm['torch']['max']:.1f}].",
        f"- Method: {settings['warmup']} warm-up run(s), then {settings['repeats']} timed repeats per case, backends "
        f"interleaved in rotating order in one process; cells are median [min-max]; ratios are the median of "
        f"per-repeat ratios (numpy time / torch eager time: below 1 means NumPy is faster). "
        f"glibc malloc keeps freed memory: {result.get('malloc_keeps_freed_memory')}.",
        "",
    ]
    return lines


def _measured_cell(target: dict) -> str:
    value = target["measured"]
    if value is None:
        return f"not measured: {target.get('note', '')}"
    return f"{value:.1f}" if "tokens/s" in target["target"] else f"{value:.2f}"


def targets_table(result: dict) -> list[str]:
    if not result.get("targets"):
        return []
    lines = ["## Targets", "",
             "| target | set by project issue | limit | measured | met | stated on | on the stated shape |",
             "| --- | --- | --- | ---: | --- | --- | --- |"]
    for t in result["targets"]:
        met = "-" if t["met"] is None else ("yes" if t["met"] else "NO")
        lines.append(f"| {t['target']} | #{t['issue']} | {t['limit']} | {_measured_cell(t)} | {met} | "
                     f"{t['stated_shape']} | {'yes' if t['headline_shape'] else 'no'} |")
    return lines + [""]


def model_table(rows: list[dict], title: str) -> list[str]:
    if not rows:
        return []
    backends = _backends(rows)
    names = [BACKEND_LABELS[b] for b in backends]
    lines = [f"## {title}", "",
             "| size | params | B | T | task | " + " | ".join(names) + " | numpy/torch | numpy/torch sdpa | "
             "model GFLOP | numpy GFLOP/s | torch GFLOP/s | numpy share of its GEMM rate |",
             "| --- | ---: | ---: | ---: | --- | " + " | ".join("---:" for _ in names) + " | ---: | ---: | ---: | ---: | "
             "---: | ---: |"]
    for row in rows:
        sdpa_ratio = "-"
        if "torch_sdpa" in row["times_s"]:
            sdpa_ratio = f"{_ratio_to(row, 'torch_sdpa'):.2f}"
        share = row.get("numpy_fraction_of_numpy_gemm")
        lines.append(
            f"| {row['size']} | {row['params'] / 1e6:.1f}M | {row['batch_size']} | {row['seq_len']} | {row['task']} | "
            + " | ".join(cell(row["stats"].get(b)) for b in backends)
            + f" | {ratio(row)} | {sdpa_ratio} | {row['model_gflop']:.1f} | {row['achieved_gflops']['numpy']:.1f} | "
              f"{row['achieved_gflops']['torch']:.1f} | {'-' if share is None else f'{share:.0%}'} |")
    return lines + [""]


def _ratio_to(row: dict, reference: str) -> float:
    import statistics
    return statistics.median(n / r for n, r in zip(row["times_s"]["numpy"], row["times_s"][reference]))


def component_table(rows: list[dict], seq_len: int) -> list[str]:
    rows = [r for r in rows if r["seq_len"] == seq_len]
    if not rows:
        return []
    backends = _backends(rows)
    first = rows[0]
    lines = [f"## Components (C={first['emb_dim']}, H={first['n_heads']}, B={first['batch_size']}, T={seq_len})", "",
             "| component | direction | " + " | ".join(BACKEND_LABELS[b] for b in backends)
             + " | numpy/torch | numpy/torch sdpa |",
             "| --- | --- | " + " | ".join("---:" for _ in backends) + " | ---: | ---: |"]
    for row in rows:
        sdpa = f"{_ratio_to(row, 'torch_sdpa'):.2f}" if "torch_sdpa" in row["times_s"] else "-"
        lines.append(f"| {row['component']} | {row['direction']} | "
                     + " | ".join(cell(row["stats"].get(b)) for b in backends) + f" | {ratio(row)} | {sdpa} |")
    return lines + [""]


def component_sweep_table(rows: list[dict]) -> list[str]:
    t_values = sorted({r["seq_len"] for r in rows})
    if len(t_values) < 2:
        return []
    first = rows[0]
    lines = [f"## Components over T (C={first['emb_dim']}, B={first['batch_size']}): numpy time (numpy/torch)", "",
             "| component | direction | " + " | ".join(f"T={t}" for t in t_values) + " |",
             "| --- | --- | " + " | ".join("---:" for _ in t_values) + " |"]
    by_key = {(r["component"], r["direction"], r["seq_len"]): r for r in rows}
    swept = [(c, d) for c, d in dict.fromkeys((r["component"], r["direction"]) for r in rows)
             if sum((c, d, t) in by_key for t in t_values) >= 2]     # the step components run at one T only
    for component, direction in swept:
        cells = []
        for t in t_values:
            row = by_key.get((component, direction, t))
            cells.append("-" if row is None else f"{fmt_seconds(row['stats']['numpy']['median'])} ({ratio(row)})")
        lines.append(f"| {component} | {direction} | " + " | ".join(cells) + " |")
    return lines + [""]


# (part, component, multiplier of its forward + backward time): a train step of L blocks, read off the components
def _step_parts(n_layers: int):
    return [("embedding", "embedding", 1), (f"block x {n_layers}", "block", n_layers),
            ("final layernorm", "layernorm", 1), ("head + cross-entropy", "head_ce", 1), ("AdamW update", "adamw", 1)]


def _component_seconds(rows: list[dict], backend: str) -> float | None:
    """Sum over directions of the backend's median; torch_sdpa falls back to torch where SDPA changes nothing."""
    total = 0.0
    for row in rows:
        stats = row["stats"].get(backend) or (row["stats"].get("torch") if backend == "torch_sdpa" else None)
        if stats is None:
            return None
        total += stats["median"]
    return total


def step_accounting_table(result: dict) -> list[str]:
    """The train step of --model rebuilt from the components at --seq-len, beside the measured one: how much
    of the step each part is, and what the components do not explain (the rest: dropout, reshapes, Python)."""
    settings, model_config = result["settings"], result.get("model_config")
    B, T = settings["batch_size"], settings["seq_len"]
    step = next((r for r in result.get("models", []) if r["task"] == "train_step" and r["size"] == settings["model"]
                 and (r["batch_size"], r["seq_len"]) == (B, T)), None)
    components = [r for r in result.get("components", []) if r["seq_len"] == T and r["batch_size"] == B]
    if model_config is None or step is None:
        return []
    parts = _step_parts(model_config["n_layers"])
    by_component = {name: [r for r in components if r["component"] == name] for _, name, _ in parts}
    if not all(by_component.values()):
        return []
    backends = [b for b in ("numpy", "torch", "torch_sdpa") if b in step["stats"]]
    lines = [f"## Train step by component ({settings['model']}, B={B}, T={T})", "",
             f"Components' forward + backward medians (AdamW: one update) times their count, beside the measured "
             f"train step. Components run without dropout, the train step with drop_rate {model_config['drop_rate']}"
             f" (as --drop-rate or the preset says). NumPy's head_ce forward already holds the softmax gradient "
             f"(its fused loss); torch computes it in the backward, so the part is compared whole.", "",
             "| part | " + " | ".join(BACKEND_LABELS[b] for b in backends) + " | numpy/torch |",
             "| --- | " + " | ".join("---:" for _ in backends) + " | ---: |"]
    sums = dict.fromkeys(backends, 0.0)
    for label, name, count in parts:
        seconds = {b: _component_seconds(by_component[name], b) for b in backends}
        for b in backends:
            sums[b] += count * (seconds[b] or 0.0)
        cells = ["-" if seconds[b] is None else fmt_seconds(count * seconds[b]) for b in backends]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {seconds['numpy'] / seconds['torch']:.2f} |")
    measured = {b: step["stats"][b]["median"] for b in backends}
    lines.append("| **sum of the parts** | " + " | ".join(fmt_seconds(sums[b]) for b in backends)
                 + f" | {sums['numpy'] / sums['torch']:.2f} |")
    lines.append("| **train step (measured)** | " + " | ".join(fmt_seconds(measured[b]) for b in backends)
                 + f" | {ratio(step)} |")
    lines.append("| parts / measured | " + " | ".join(f"{sums[b] / measured[b]:.0%}" for b in backends) + " | |")
    return lines + [""]


def markdown(result: dict) -> str:
    from benchmarks.bench_decode import markdown_table as decode_table

    settings = result["settings"]
    lines = header(result) + targets_table(result)
    lines += model_table(result.get("models", []),
                         f"Model forward, infer and train step (B={settings['batch_size']}, T={settings['seq_len']})")
    lines += component_table(result.get("components", []), settings["seq_len"])
    lines += step_accounting_table(result)
    lines += model_table(result.get("sweep_t", []),
                         f"{settings['model']} over T (B={settings['sweep_t_batch_size']})")
    lines += component_sweep_table(result.get("components", []))
    if result.get("decode"):
        lines += ["## Decode (KV cache)", "", decode_table(result["decode"]), ""]
    if result.get("smollm2"):
        smollm2 = result["smollm2"]
        lines += model_table(smollm2["models"], f"{smollm2['model']}: forward and train step "
                                                f"(B={settings['batch_size']}, T={settings['seq_len']})")
        lines += [f"## {smollm2['model']}: decode (KV cache)", ""] + bench_smollm2.decode_table(smollm2["decode"])
    lines.append(f"Total time of this run: {result.get('seconds', 0):.0f} s.")
    return "\n".join(lines)


# --- plots ---------------------------------------------------------------------------------------

def _series(rows: list[dict], x_key: str, backends: list[str]):
    xs = sorted({r[x_key] for r in rows})
    by_x = {r[x_key]: r for r in rows}
    return xs, {BACKEND_LABELS[b]: [by_x[x]["stats"][b]["median"] if b in by_x[x]["stats"] else None for x in xs]
                for b in backends}


def plots(result: dict, out: Path) -> list[Path]:
    """time_vs_T.png, ratio_per_component.png and time_vs_size.png (those whose data were measured)."""
    from gptcore.plots import plot_bars, plot_panels

    out = Path(out)
    written = []
    components = result.get("components", [])
    sweep = result.get("sweep_t", [])
    panels = {}
    for component in dict.fromkeys(r["component"] for r in components):
        for direction in ("forward", "backward"):
            rows = [r for r in components if r["component"] == component and r["direction"] == direction]
            if len({r["seq_len"] for r in rows}) >= 2:
                panels[f"{component} {direction} (B={rows[0]['batch_size']})"] = _series(rows, "seq_len", _backends(rows))
    for task in ("forward", "infer", "train_step"):
        rows = [r for r in sweep if r["task"] == task]
        if len(rows) >= 2:
            panels[f"{rows[0]['size']} {task} (B={rows[0]['batch_size']})"] = _series(rows, "seq_len", _backends(rows))
    if panels:
        written.append(plot_panels(out / "time_vs_T.png", panels, xlabel="T (tokens per sequence)",
                                   ylabel="seconds (median)", logx=True, logy=True, ncols=4,
                                   title="time vs sequence length T"))
    seq_len = result["settings"]["seq_len"]
    headline = [r for r in components if r["seq_len"] == seq_len]
    categories, numpy_vs_torch, numpy_vs_sdpa = [], [], []
    for row in headline:
        categories.append(f"{row['component']} {DIRECTION_LABELS.get(row['direction'], row['direction'])}")
        numpy_vs_torch.append(row["ratio_vs_torch"].get("numpy"))
        numpy_vs_sdpa.append(_ratio_to(row, "torch_sdpa") if "torch_sdpa" in row["times_s"] else None)
    size = result["settings"]["model"]
    for row in result.get("models", []):
        if row["size"] == size:
            categories.append(f"model {row['task']}")
            numpy_vs_torch.append(row["ratio_vs_torch"].get("numpy"))
            numpy_vs_sdpa.append(_ratio_to(row, "torch_sdpa"))
    if categories:
        written.append(plot_bars(out / "ratio_per_component.png", categories,
                                 {"numpy / torch eager": numpy_vs_torch, "numpy / torch sdpa": numpy_vs_sdpa},
                                 ylabel="time ratio (below 1: NumPy faster)", reference=1.0,
                                 title=f"NumPy / torch time, {size}, B={result['settings']['batch_size']}, T={seq_len}"))
    models = result.get("models", [])
    size_panels = {}
    for task in ("forward", "infer", "train_step"):
        rows = [r for r in models if r["task"] == task]
        if len(rows) >= 2:
            size_panels[f"{task} (B={rows[0]['batch_size']}, T={rows[0]['seq_len']})"] = _series(rows, "params",
                                                                                             _backends(rows))
    if size_panels:
        written.append(plot_panels(out / "time_vs_size.png", size_panels, xlabel="parameters",
                                   ylabel="seconds (median)", logx=True, logy=True, ncols=2,
                                   title="time vs model size"))
    return written
