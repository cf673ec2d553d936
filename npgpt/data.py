"""Next-token training data from one long token stream (NumPy only).

A window of T = max_length tokens starting at i * stride gives one example:

    inputs  = ids[s     : s + T]          s = i * stride
    targets = ids[s + 1 : s + T + 1]      (the next token at every position)

The batch order is one rule, shared with torchgpt.data (which yields the same batches):

    order = epoch_order(N, shuffle, seed, epoch)
          = np.random.default_rng([seed, epoch]).permutation(N)   if shuffle else np.arange(N)

i.e. a SeedSequence built from the pair (seed, epoch), so (seed=0, epoch=1) and (seed=1, epoch=0)
give different orders. Batch k holds the windows order[k*B : (k+1)*B]; with drop_last the short
final batch is dropped.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np


class SlidingWindowDataset:
    """Overlapping (inputs, targets) windows over a 1-D token stream.

    token_ids: 1-D integers, length L. max_length: T. stride: step between window starts.
    Number of windows N = (L - T - 1) // stride + 1: the last window must fit with its target
    token, so its start s satisfies s + T + 1 <= L.
    """

    def __init__(self, token_ids: Sequence[int] | np.ndarray, max_length: int, stride: int):
        if not isinstance(max_length, (int, np.integer)) or max_length <= 0:
            raise ValueError(f"max_length must be a positive integer, got {max_length!r}")
        if not isinstance(stride, (int, np.integer)) or stride <= 0:
            raise ValueError(f"stride must be a positive integer, got {stride!r}")
        ids = np.asarray(token_ids)
        if ids.ndim != 1:
            raise ValueError(f"token_ids must be 1-D, got shape {ids.shape}; flatten it or pass one stream")
        if ids.size and not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"token_ids must be integers, got dtype {ids.dtype}; tokenize the text first")
        needed = max_length + 1
        if ids.size < needed:
            raise ValueError(f"text too short: {ids.size} tokens, but one window of max_length={max_length} "
                             f"needs {needed} (inputs plus the shifted target); use more text or a "
                             f"smaller max_length")
        # Own read-only int64 copy: windows are views into it and nobody can change them.
        self.token_ids = np.array(ids, dtype=np.int64)
        self.token_ids.setflags(write=False)
        self.max_length = int(max_length)
        self.stride = int(stride)
        self._len = (ids.size - needed) // self.stride + 1
        self._offsets = np.arange(self.max_length)  # (T,)

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Window `index` -> (inputs (T,), targets (T,)) int64 read-only views."""
        index = int(index)
        if not -self._len <= index < self._len:
            raise IndexError(f"window {index} out of range for {self._len} windows")
        start = (index % self._len) * self.stride
        return (self.token_ids[start:start + self.max_length],
                self.token_ids[start + 1:start + self.max_length + 1])

    def batch(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Windows `indices` (B,) -> (X, Y), each (B, T) int64, gathered in one indexing step."""
        starts = np.asarray(indices, dtype=np.int64) * self.stride  # (B,)
        positions = starts[:, None] + self._offsets  # (B, T)
        return self.token_ids[positions], self.token_ids[positions + 1]


def epoch_order(num_windows: int, *, shuffle: bool, seed: int, epoch: int) -> np.ndarray:
    """The window order for one epoch (see the module docstring): (N,) int64."""
    if not shuffle:
        return np.arange(num_windows, dtype=np.int64)
    return np.random.default_rng([seed, epoch]).permutation(num_windows).astype(np.int64)


def check_batch_size(num_windows: int, batch_size: int, drop_last: bool) -> None:
    """Refuse settings that would silently give zero batches."""
    if not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if drop_last and num_windows < batch_size:
        raise ValueError(f"only {num_windows} windows, fewer than batch_size={batch_size}, and "
                         f"drop_last=True: not one batch; use a smaller batch_size or stride, "
                         f"more text, or drop_last=False")


def iterate_batches(dataset: SlidingWindowDataset, batch_size: int, *, shuffle: bool = True,
                    drop_last: bool = True, seed: int = 0,
                    epoch: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (X, Y) batches, each (B, T) int64, in the order of `epoch_order`.

    The last batch has fewer than B rows unless drop_last. Works with any dataset that has
    __len__ and __getitem__ -> (inputs, targets); SlidingWindowDataset gathers in one step.
    """
    count = len(dataset)
    check_batch_size(count, batch_size, drop_last)
    order = epoch_order(count, shuffle=shuffle, seed=seed, epoch=epoch)
    for start in range(0, count, batch_size):
        indices = order[start:start + batch_size]
        if drop_last and len(indices) < batch_size:
            return
        if isinstance(dataset, SlidingWindowDataset):
            yield dataset.batch(indices)
        else:
            pairs = [dataset[int(i)] for i in indices]
            yield (np.stack([np.asarray(x, dtype=np.int64) for x, _ in pairs]),
                   np.stack([np.asarray(y, dtype=np.int64) for _, y in pairs]))


def split_train_val(tokens_or_text, train_ratio: float = 0.9):
    """First `int(train_ratio * len)` items for training, the rest for validation.

    Works on a str (split by characters, before tokenizing), a list or a 1-D array.
    """
    if not 0.0 < train_ratio < 1.0:
        raise ValueError(f"train_ratio must be strictly between 0 and 1, got {train_ratio}")
    split_at = int(train_ratio * len(tokens_or_text))
    return tokens_or_text[:split_at], tokens_or_text[split_at:]
