"""Elementwise work on every core: a tiny thread pool for blocks of NumPy ufunc calls.

Only BLAS (`@`) uses all cores by itself; `exp`, `tanh`, `+`, `*` and reductions run on one. They do
release the GIL while they loop, though, so two Python threads that each call ufuncs on their own
part of an array keep two cores busy. The big elementwise passes of a GPT-2 train step (the softmax
over the (B*T, V) logits, GELU, the attention softmax, AdamW over every parameter) use

    parallel_for(update_block, n, block_size)    # update_block(start, stop) on [0, n) in blocks

where `update_block` reads and writes only its own slice [start:stop] (rows or flat elements). Each
block is computed by the same ufunc calls as an unsplit array would be, so results do not depend on the
number of threads. Small blocks also keep the several passes over one block in the CPU cache, which
matters as much as the second core: a pass over a cached block costs a fraction of one over memory.

The second tool, matmul_stack(a, b), is np.matmul for stacks of SMALL matrices (attention's per-head
q k^T and weights v): the stack is split among the threads, each matrix done by single-threaded BLAS.

The number of threads defaults to the CPUs this process may use; set it with set_num_threads(n) or the
NPGPT_NUM_THREADS environment variable (1 turns the pool off: everything runs in the calling thread).
"""
from __future__ import annotations

import contextlib
import itertools
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

_state = threading.local()     # .busy is True inside a worker: nested calls run serially
_pool: ThreadPoolExecutor | None = None
_pool_threads = 0
_blas_controller = None        # threadpoolctl.ThreadpoolController, made on first use
SMALL_STACK_MULTIPLY_ADDS = 1 << 24   # below this, matmul_stack is plain np.matmul (see there)


def _default_num_threads() -> int:
    value = os.environ.get("NPGPT_NUM_THREADS")
    if value:
        if not value.isdigit() or int(value) < 1:
            raise ValueError(f"NPGPT_NUM_THREADS must be a positive integer, got {value!r}")
        return int(value)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


_num_threads = _default_num_threads()


def num_threads() -> int:
    """Threads parallel_for uses (the calling thread included)."""
    return _num_threads


def set_num_threads(n: int) -> int:
    """Sets the thread count for elementwise work; returns the previous one. BLAS has its own
    (threadpoolctl.threadpool_limits limits it)."""
    global _num_threads
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"number of threads must be a positive integer, got {n!r}")
    previous, _num_threads = _num_threads, n
    return previous


def _get_pool(workers: int) -> ThreadPoolExecutor:
    global _pool, _pool_threads
    if _pool is None or _pool_threads != workers:
        if _pool is not None:
            _pool.shutdown(wait=True)
        _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="npgpt")
        _pool_threads = workers
    return _pool


def parallel_for(fn, n: int, block_size: int) -> None:
    """Calls fn(start, stop) for the blocks [0, b), [b, 2b), ... covering range(n), b = block_size, spread
    over num_threads() threads (the caller is one of them); returns when every block is done.

    Threads take the next undone block from a shared counter, so a thread slowed down by a busy machine
    simply does fewer blocks. fn must write only inside its block. An exception in any block is re-raised.
    """
    if n <= 0:
        return
    block_size = max(1, int(block_size))
    n_blocks = -(-n // block_size)
    threads = min(_num_threads, n_blocks)
    if threads == 1 or getattr(_state, "busy", False):
        for start in range(0, n, block_size):
            fn(start, min(start + block_size, n))
        return
    next_block = itertools.count()        # next() on a count is atomic under the GIL

    def worker():
        _state.busy = True
        try:
            for i in iter(next_block.__next__, None):
                if i >= n_blocks:
                    return
                start = i * block_size
                fn(start, min(start + block_size, n))
        finally:
            _state.busy = False

    futures = [_get_pool(_num_threads - 1).submit(worker) for _ in range(threads - 1)]
    try:
        worker()
    finally:
        for future in futures:
            future.result()


def flat_views(*arrays):
    """1-D views of same-shaped arrays, for parallel_for's flat blocks (a contiguous copy of any array that is
    not contiguous: pass those only for reading; an output must be made C-contiguous, e.g. by np.empty)."""
    return [np.ascontiguousarray(a).reshape(-1) for a in arrays]


def rows_per_block(row_length: int, target_elements: int = 1 << 16) -> int:
    """How many rows of `row_length` elements make a block of about target_elements (at least one row).

    2**16 float32 elements are 256 KiB: a few such arrays (input, output, a scratch) fit a core's L2 cache.
    """
    return max(1, target_elements // max(1, row_length))


@contextlib.contextmanager
def _one_blas_thread():
    """NumPy's BLAS limited to one thread inside the block (threadpoolctl; ~15 us)."""
    global _blas_controller
    if _blas_controller is None:
        from threadpoolctl import ThreadpoolController
        _blas_controller = ThreadpoolController()
    with _blas_controller.limit(limits=1, user_api="blas"):
        yield


def matmul_stack(a, b):
    """a @ b for stacks of matrices, (..., n, k) @ (..., k, m) -> (..., n, m), equal to np.matmul(a, b).

    For many SMALL matrices, such as attention's per-head q k^T (48 matrices of 256 x 64 per GPT-2 layer
    at B=4, T=256). np.matmul hands the matrices to BLAS one after another, and a multi-threaded BLAS
    wakes and synchronises its threads for each of them: at these sizes that costs more than the
    arithmetic, and on a busy machine (a worker thread waiting for a core) many times more. Here the
    stack is shared among the worker threads instead, each matrix computed by single-threaded BLAS, as
    torch does for its batched matmul. With one thread, a single matrix, or little work in all, it is
    np.matmul: handing the stack to the threads costs ~0.2 ms, which a decoding step's (1, 64) @ (64, S)
    per head cannot repay (measured here: 12 heads of (1, 64) @ (64, 512) 22 us by np.matmul, 200 us
    shared; the two break even near 2**24 multiply-adds in all, e.g. 12 heads of (128, 64) @ (64, 128)).
    """
    lead = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    n_matrices = math.prod(lead)
    multiply_adds = n_matrices * a.shape[-2] * a.shape[-1] * b.shape[-1]
    if (_num_threads == 1 or n_matrices < 2 or multiply_adds < SMALL_STACK_MULTIPLY_ADDS
            or getattr(_state, "busy", False)):
        return np.matmul(a, b)
    a = np.broadcast_to(a, lead + a.shape[-2:])
    b = np.broadcast_to(b, lead + b.shape[-2:])
    out = np.empty(lead + (a.shape[-2], b.shape[-1]), dtype=np.result_type(a, b))
    indices = list(np.ndindex(*lead))

    def matmul_block(start, stop):
        for i in indices[start:stop]:
            np.matmul(a[i], b[i], out=out[i])

    for_each_matrix(matmul_block, n_matrices)
    return out


def for_each_matrix(fn, n_matrices: int) -> None:
    """fn(start, stop) over [0, n_matrices) shared among the threads, as matmul_stack shares its matrices:
    NumPy's BLAS on one thread inside (each thread's products are small; threads are the parallelism), about
    four blocks per thread so a thread slowed by a busy machine does fewer."""
    with _one_blas_thread():
        parallel_for(fn, n_matrices, max(1, n_matrices // (4 * _num_threads)))
