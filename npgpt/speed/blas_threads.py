"""OpenBLAS's idle worker threads sleep at once, whichever of NumPy and npgpt a script imports first.

After every multi-threaded product, OpenBLAS (NumPy's BLAS in the PyPI wheels) keeps its worker threads
busy-waiting for 2**OPENBLAS_THREAD_TIMEOUT cycles (default 2**28, ~0.1 s) in case another product comes.
Between its products npgpt runs elementwise work and attention heads on all cores (npgpt.speed.parallel),
and the spinning workers take those cores: measured here, SmolLM2's attention core took 11.8 + 17.3 ms per
layer (forward + backward) right after a projection with the default, 7.7 + 10.5 ms with 2**4 cycles.

OpenBLAS reads the variable once, when the library loads (`import numpy`) and starts its worker threads:
- npgpt imported before NumPy: setting the variable is enough;
- NumPy imported first (`import numpy as np` then `import npgpt`, the usual order): the workers already run
  with the long timeout, so restart_loaded_openblas() sets the variable, asks each loaded OpenBLAS to re-read
  its environment (openblas_read_env) and stops its worker threads (blas_thread_shutdown_, what OpenBLAS
  itself does before a fork); the next product starts them again, with the short timeout. Stopping them while
  another thread is inside a product deadlocks both, so `import npgpt` does it only when the importing thread
  is the process's only Python thread (a script). Elsewhere (a notebook kernel, a server) it leaves OpenBLAS
  as it runs and says so in state(); call restart_loaded_openblas() yourself at a moment when no other thread
  multiplies, or import npgpt before NumPy.

`import npgpt` does the applicable one (apply_at_import). A value already in the environment (yours, or
inherited from a parent process whose npgpt set it) is left alone: OPENBLAS_THREAD_TIMEOUT=28 keeps OpenBLAS's
default. OpenBLAS built with OpenMP and other BLAS libraries (MKL, Accelerate) are not handled: their
runtimes have their own idle-spin settings (OMP_WAIT_POLICY, GOMP_SPINCOUNT, KMP_BLOCKTIME).
"""
from __future__ import annotations

import ctypes
import os
import sys
import threading

ENV = "OPENBLAS_THREAD_TIMEOUT"
SHORT_TIMEOUT = "4"           # 2**4 cycles: OpenBLAS's smallest

# What apply_at_import found (state()): one of
USER_VALUE = "already set (by the user or a parent process): left alone"
SET_BEFORE_NUMPY = "set before NumPy loaded"
RESTARTED = "NumPy loaded first: OpenBLAS threads restarted with it"
OTHER_THREADS = ("NumPy loaded first, other threads running: OpenBLAS left spinning "
                 "(npgpt.speed.blas_threads.restart_loaded_openblas() when no other thread multiplies)")
NOT_APPLICABLE = "NumPy loaded first: no OpenBLAS thread pool to restart"

_state: str | None = None


def state() -> str | None:
    """What `import npgpt` did about OPENBLAS_THREAD_TIMEOUT (one of the constants above; None before)."""
    return _state


def apply_at_import() -> str:
    """What `import npgpt` runs first, before it imports NumPy itself: the short timeout for NumPy's OpenBLAS,
    unless the user set the variable. Returns (and records) what was done."""
    global _state
    if _state is not None:
        return _state
    if ENV in os.environ:
        _state = USER_VALUE
        return _state
    os.environ[ENV] = SHORT_TIMEOUT               # also for child processes, which read it when they load NumPy
    if "numpy" not in sys.modules:
        _state = SET_BEFORE_NUMPY
    elif threading.active_count() > 1:            # one of them may be inside a product: stopping its
        _state = OTHER_THREADS                    # workers now could deadlock it
    else:
        try:
            restarted = restart_loaded_openblas()
        except Exception:                         # never fail `import npgpt` over a speed setting
            restarted = []
        _state = RESTARTED if restarted else NOT_APPLICABLE
    return _state


def loaded_openblas_pools() -> list[str]:
    """File paths of the OpenBLAS libraries loaded in this process that run their own thread pool
    (threading layer "pthreads"), as threadpoolctl finds them."""
    from threadpoolctl import threadpool_info

    return [info["filepath"] for info in threadpool_info()
            if info.get("internal_api") == "openblas" and info.get("threading_layer") == "pthreads"]


def restart_loaded_openblas() -> list[str]:
    """Makes every loaded OpenBLAS thread pool take the current OPENBLAS_THREAD_TIMEOUT: re-reads its
    environment and stops its workers, which its next product starts again. Returns the libraries
    restarted (none where a library lacks the entry points: it keeps its timeout).

    Call it only when no other thread is inside a NumPy product: OpenBLAS's shutdown does not wait for running
    work, and the product and the shutdown then wait for each other for ever."""
    restarted = []
    for path in loaded_openblas_pools():
        try:
            library = _loaded_library(path)
            shutdown = library.blas_thread_shutdown_
        except (OSError, AttributeError):
            continue
        read_env = getattr(library, "openblas_read_env", None)   # older OpenBLAS read the variable at start
        if read_env is not None:
            read_env()
        shutdown()
        restarted.append(path)
    return restarted


def pool_timeout(path: str) -> int | None:
    """The timeout exponent the OpenBLAS at `path` will start its workers with (openblas_thread_timeout;
    0: the built-in default), or None where the library does not say."""
    try:
        return int(_loaded_library(path).openblas_thread_timeout())
    except (OSError, AttributeError):
        return None


def _loaded_library(path: str):
    """The already loaded library at `path` (RTLD_NOLOAD: never loads a second copy)."""
    return ctypes.CDLL(path, mode=getattr(os, "RTLD_NOLOAD", 0))
