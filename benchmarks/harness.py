"""How `gpt2 bench` measures: thread limits, interleaved repeats, robust statistics, the machine header.

The method, in short (docs/benchmarks.md has the long form):
- Every library gets the same number of threads: threadpoolctl limits NumPy's BLAS, npgpt.speed.parallel the
  threads of npgpt's elementwise blocks, torch.set_num_threads torch (its BLAS and its elementwise ops).
- Each case (one operation at one shape) is a set of functions, one per backend, measured in the SAME
  process and interleaved: repeat 1 runs numpy, torch, ...; repeat 2 starts with the next backend; and
  so on. A busy moment of a shared machine then slows the runs of one repeat alike, and the ratio
  numpy/torch is computed per repeat (runs that were neighbours in time) before its median is taken.
- Warm-up runs first (caches, allocator, torch's lazy init); a run shorter than `min_time` is repeated
  in a loop and divided, so sub-millisecond operations are not timer noise.
- Reported: the median of the repeats and their spread (min, max, and the quartiles).
"""
from __future__ import annotations

import contextlib
import math
import os
import platform
import re
import statistics
import sys
import time
from typing import Callable


@contextlib.contextmanager
def limited_threads(n: int):
    """NumPy's BLAS, npgpt's elementwise threads and torch all limited to n threads inside the block."""
    import torch
    from threadpoolctl import threadpool_limits

    from npgpt.speed import parallel

    previous_torch = torch.get_num_threads()
    previous_npgpt = parallel.set_num_threads(n)
    torch.set_num_threads(n)
    try:
        with threadpool_limits(limits=n, user_api="blas"):
            yield
    finally:
        torch.set_num_threads(previous_torch)
        parallel.set_num_threads(previous_npgpt)


def summarize(times: list[float]) -> dict:
    """median, min, max and quartiles (q1, q3) of a list of seconds."""
    ordered = sorted(times)
    if len(ordered) >= 2:
        q1, _, q3 = statistics.quantiles(ordered, n=4, method="inclusive")
    else:
        q1 = q3 = ordered[0]
    return {"median": statistics.median(ordered), "min": ordered[0], "max": ordered[-1], "q1": q1, "q3": q3,
            "n": len(ordered)}


def _calibrate(fn: Callable[[], object], min_time: float) -> int:
    """Calls per measurement so that one measurement lasts at least min_time (fn is called once here)."""
    start = time.perf_counter()
    fn()
    elapsed = time.perf_counter() - start
    return 1 if elapsed >= min_time else min(1000, math.ceil(min_time / max(elapsed, 1e-7)))


def time_interleaved(fns: dict[str, Callable[[], object]], *, repeats: int, warmup: int = 1,
                     min_time: float = 0.02) -> dict[str, list[float]]:
    """Seconds per call of each function, `repeats` values each, measured in rotating order.

    fns: backend name -> zero-argument function. Returns backend name -> list of per-call seconds, where
    entry i of every list comes from repeat i (so per-repeat ratios compare neighbours in time).
    """
    names = list(fns)
    for _ in range(max(0, warmup - 1)):
        for name in names:
            fns[name]()
    loops = {name: _calibrate(fns[name], min_time) for name in names}     # the last warm-up run
    times: dict[str, list[float]] = {name: [] for name in names}
    for repeat in range(repeats):
        shift = repeat % len(names)
        for name in names[shift:] + names[:shift]:
            fn, n = fns[name], loops[name]
            start = time.perf_counter()
            for _ in range(n):
                fn()
            times[name].append((time.perf_counter() - start) / n)
    return times


def ratio_medians(times: dict[str, list[float]], reference: str = "torch") -> dict[str, float]:
    """For each backend, the median over repeats of time[backend][i] / time[reference][i]."""
    if reference not in times:
        return {}
    return {name: statistics.median(t / r for t, r in zip(values, times[reference]))
            for name, values in times.items() if name != reference}


def measure(fns: dict[str, Callable[[], object]], *, repeats: int, warmup: int = 1, min_time: float = 0.02,
            reference: str = "torch") -> dict:
    """time_interleaved + statistics: {"times_s": {...}, "stats": {...}, "ratio_vs_<reference>": {...}}."""
    times = time_interleaved(fns, repeats=repeats, warmup=warmup, min_time=min_time)
    return {"times_s": times, "stats": {name: summarize(values) for name, values in times.items()},
            f"ratio_vs_{reference}": ratio_medians(times, reference)}


# --- the header: what machine, which BLAS, how fast is a plain GEMM ---------------------------------

def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else platform.processor()."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages (how busy the machine was), None where unknown."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def blas_info() -> list[dict]:
    """The native thread pools threadpoolctl sees (NumPy's BLAS, torch's OpenMP/MKL, ...), short form."""
    import numpy  # noqa: F401  (loads NumPy's BLAS so threadpoolctl can see it)
    import torch  # noqa: F401
    from threadpoolctl import threadpool_info

    keep = ("user_api", "internal_api", "prefix", "version", "num_threads", "architecture", "threading_layer")
    return [{key: info[key] for key in keep if info.get(key) is not None} | {"file": os.path.basename(info["filepath"])}
            for info in threadpool_info()]


# Environment variables that force OpenBLAS's kernel and cache size: a forced older core type changes NumPy's
# GEMM rate a lot (on one machine the forced Haswell kernel gave ~230 GFLOP/s, the CPU's own ~410).
OPENBLAS_KERNEL_VARIABLES = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def openblas_kernel() -> dict:
    """The kernel NumPy's BLAS runs and what may have forced it:
    {"environment": {OPENBLAS_CORETYPE: value or None, OPENBLAS_L2_SIZE: ...},
     "blas": [{"internal_api", "version", "architecture", "file"} for each BLAS threadpoolctl sees]}.

    threadpoolctl reports OpenBLAS's architecture (the core type it picked or was forced to, e.g. "Haswell",
    "SkylakeX"); MKL and BLIS report other fields, kept as they come. Imports NumPy, not torch.
    """
    import numpy  # noqa: F401  (loads NumPy's BLAS so threadpoolctl can see it)
    from threadpoolctl import threadpool_info

    blas = [{key: info.get(key) for key in ("internal_api", "version", "architecture")}
            | {"file": os.path.basename(info["filepath"])}
            for info in threadpool_info() if info.get("user_api") == "blas"]
    return {"environment": {name: os.environ.get(name) for name in OPENBLAS_KERNEL_VARIABLES}, "blas": blas}


def kernel_line(kernel: dict) -> str:
    """One line for a header: 'openblas 0.3.31 (SkylakeX, libscipy_openblas64_.so); OPENBLAS_CORETYPE unset,
    OPENBLAS_L2_SIZE unset'."""
    blas = "; ".join(f"{b.get('internal_api')} {b.get('version')} ({b.get('architecture') or 'architecture not reported'}"
                     f", {b['file']})" for b in kernel["blas"]) or "no BLAS found by threadpoolctl"
    env = ", ".join(f"{name}={value}" if value is not None else f"{name} unset"
                    for name, value in kernel["environment"].items())
    return f"{blas}; {env}"


def torch_blas() -> str:
    """torch's BLAS as its build reports it (e.g. 'mkl').

    torch.__config__.show() puts it inside a line like '  - Build settings: BLAS_INFO=mkl, BUILD_TYPE=...',
    so the key is searched anywhere in the text, not at the start of a line.
    """
    import torch

    found = re.search(r"BLAS_INFO=(\w+)", torch.__config__.show())
    return found[1] if found else "unknown"


def torch_parallel_info() -> list[str]:
    """The head of torch.__config__.parallel_info(): torch's intra-/inter-op thread counts as set now,
    its OpenMP/MKL/oneDNN versions and its parallel backend (the environment variable lines left out).

    Call it inside limited_threads() to record the thread counts the measurements ran with.
    """
    import torch

    lines = [line.strip() for line in torch.__config__.parallel_info().splitlines() if line.strip()]
    head = []
    for line in lines:
        if line.startswith("Environment variables"):
            break
        if not line.endswith(":"):                       # section titles like 'ATen/Parallel:'
            head.append(line)
    return head + [line for line in lines if line.startswith("ATen parallel backend")]


def openblas_thread_timeout_how() -> str | None:
    """What `import npgpt` did about OPENBLAS_THREAD_TIMEOUT (npgpt.speed.blas_threads.state), None before it."""
    module = sys.modules.get("npgpt.speed.blas_threads")
    return module.state() if module is not None else None


def machine_info(threads: int) -> dict:
    import numpy as np
    import torch

    return {
        "cpu": cpu_model(), "usable_cpus": usable_cpus(), "threads": threads,
        "platform": platform.platform(), "python": platform.python_version(),
        "numpy": np.__version__, "torch": torch.__version__, "torch_blas": torch_blas(),
        "thread_pools": blas_info(), "load_average_start": load_average(),
        "openblas_thread_timeout": os.environ.get("OPENBLAS_THREAD_TIMEOUT"),
        "openblas_thread_timeout_how": openblas_thread_timeout_how(),
        "blas_kernel": openblas_kernel(),
    }


def gemm_gflops(n: int, repeats: int) -> dict:
    """Measured float32 GEMM rate (n x n times n x n, 2 n^3 FLOP) of NumPy and torch, interleaved.

    Returns {"numpy": stats of GFLOP/s, "torch": ...}; call it inside limited_threads().
    """
    import numpy as np
    import torch

    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    out = np.empty((n, n), dtype=np.float32)
    ta, tb = torch.from_numpy(a.copy()), torch.from_numpy(b.copy())
    tout = torch.empty(n, n)
    times = time_interleaved({"numpy": lambda: np.matmul(a, b, out=out), "torch": lambda: torch.mm(ta, tb, out=tout)},
                             repeats=repeats, warmup=2, min_time=0.05)
    flop = 2.0 * n ** 3
    return {name: summarize([flop / t / 1e9 for t in values]) | {"n": n} for name, values in times.items()}


def best_numpy_gemm_rate(shapes: list[tuple[int, int, int]], min_time: float = 0.3, repeats: int = 3) -> dict:
    """NumPy's fastest float32 GEMM on this machine, as it is set up now (threads, kernel): each (M, K, N)
    product A (M, K) @ B (K, N) timed `repeats` times (each at least min_time), the median rate per shape.

    Returns {"best_gflops": the highest median, "best_shape": its (M, K, N), "rates": [[M, K, N, GFLOP/s]]}.
    No GEMM of a model runs faster than the fastest one measured, so model FLOPs / best_gflops is a lower
    bound on the time of any NumPy implementation (plain_script's floor)."""
    import numpy as np

    rng = np.random.default_rng(0)
    rates = []
    for m, k, n in shapes:
        a = rng.standard_normal((m, k), dtype=np.float32)
        b = rng.standard_normal((k, n), dtype=np.float32)
        out = np.empty((m, n), dtype=np.float32)
        times = time_interleaved({"gemm": lambda: np.matmul(a, b, out=out)}, repeats=repeats, warmup=1,
                                 min_time=min_time)["gemm"]
        rates.append([m, k, n, 2.0 * m * k * n / statistics.median(times) / 1e9])
    best = max(rates, key=lambda rate: rate[3])
    return {"best_gflops": best[3], "best_shape": best[:3], "rates": rates}
