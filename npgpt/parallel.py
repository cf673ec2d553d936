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

The number of threads defaults to the CPUs this process may use; set it with set_num_threads(n) or the
NPGPT_NUM_THREADS environment variable (1 turns the pool off: everything runs in the calling thread).
"""
from __future__ import annotations

import itertools
import os
import threading
from concurrent.futures import ThreadPoolExecutor

_state = threading.local()     # .busy is True inside a worker: nested calls run serially
_pool: ThreadPoolExecutor | None = None
_pool_threads = 0


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


def rows_per_block(row_length: int, target_elements: int = 1 << 16) -> int:
    """How many rows of `row_length` elements make a block of about target_elements (at least one row).

    2**16 float32 elements are 256 KiB: a few such arrays (input, output, a scratch) fit a core's L2 cache.
    """
    return max(1, target_elements // max(1, row_length))
