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

    def __init__(self, token_ids: Sequence[int] | np.ndarray, max_length: int, stride: int, *,
                 copy: bool = True):
        """copy=False keeps `token_ids` as given (e.g. a read-only np.memmap of uint16 tokens on disk, see
        gptcore.corpus) instead of an int64 copy in memory; windows are then converted to int64 per access."""
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
        if copy:
            # Own read-only int64 copy: windows are views into it and nobody can change them.
            self.token_ids = np.array(ids, dtype=np.int64)
            self.token_ids.setflags(write=False)
        else:
            self.token_ids = ids
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
        inputs = self.token_ids[start:start + self.max_length]
        targets = self.token_ids[start + 1:start + self.max_length + 1]
        if inputs.dtype != np.int64:      # a stored uint16 stream: int64 copies (views need the int64 copy)
            return inputs.astype(np.int64), targets.astype(np.int64)
        return inputs, targets

    def batch(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Windows `indices` (B,) -> (X, Y), each (B, T) int64, gathered in one indexing step."""
        starts = np.asarray(indices, dtype=np.int64) * self.stride  # (B,)
        positions = starts[:, None] + self._offsets  # (B, T)
        return (self.token_ids[positions].astype(np.int64, copy=False),
                self.token_ids[positions + 1].astype(np.int64, copy=False))


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


class WindowStream:
    """An endless, resumable order of window indices for training, `windows_per_step` at a time.

    Epoch e visits the windows in epoch_order(N, shuffle=True, seed, e); each optimizer step takes the
    next G = windows_per_step of them; when fewer than G are left the rest of the epoch is dropped and
    epoch e + 1 starts (as iterate_batches with drop_last). So with G = B the steps are exactly the
    batches of iterate_batches(dataset, B, seed=seed, epoch=e) for e = 0, 1, 2, ...

    G is the GLOBAL batch of one optimizer step: micro-batch x gradient-accumulation steps x processes.
    shard(indices, micro_step, rank, ...) cuts out the B windows one process uses in one micro-step, so
    data-parallel processes see disjoint parts of one seeded order (DistributedSampler-style) and their
    union is exactly what a single process with the same global batch sees.

    The state is (epoch, position): position counts the windows of the current epoch already used, so a
    run resumed with another G (e.g. other process count) still continues where the order stopped.
    """

    def __init__(self, num_windows: int, windows_per_step: int, *, seed: int, epoch: int = 0,
                 position: int = 0):
        if not isinstance(windows_per_step, (int, np.integer)) or windows_per_step <= 0:
            raise ValueError(f"windows_per_step must be a positive integer, got {windows_per_step!r}")
        if num_windows < windows_per_step:
            raise ValueError(f"the training set has {num_windows} windows, fewer than one global batch of "
                             f"{windows_per_step} (batch size x gradient accumulation x processes); lower "
                             f"--batch-size, --grad-accum or the context length, or give more text")
        self.num_windows, self.windows_per_step, self.seed = int(num_windows), int(windows_per_step), int(seed)
        self.epoch, self.position = int(epoch), int(position)
        self._order_epoch, self._order = None, None

    def _epoch_order(self) -> np.ndarray:
        if self._order_epoch != self.epoch:
            self._order = epoch_order(self.num_windows, shuffle=True, seed=self.seed, epoch=self.epoch)
            self._order_epoch = self.epoch
        return self._order

    def next_step(self) -> np.ndarray:
        """The window indices of the next optimizer step: (G,) int64."""
        if self.position + self.windows_per_step > self.num_windows:
            self.epoch, self.position = self.epoch + 1, 0
        start = self.position
        self.position += self.windows_per_step
        return self._epoch_order()[start:start + self.windows_per_step]

    @staticmethod
    def shard(indices: np.ndarray, micro_step: int, rank: int, world_size: int, micro_batch: int) -> np.ndarray:
        """The `micro_batch` windows of process `rank` in micro-step `micro_step`: block micro_step * world_size
        + rank of the step's indices (blocks of micro_batch, micro-steps outermost)."""
        block = micro_step * world_size + rank
        return indices[block * micro_batch:(block + 1) * micro_batch]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed,
                "num_windows": self.num_windows}

    def load_state_dict(self, state: dict) -> None:
        if int(state.get("num_windows", self.num_windows)) != self.num_windows:
            raise ValueError(f"the checkpoint's data order covers {state['num_windows']} windows, this data has "
                             f"{self.num_windows}; resume with the same data, context length and stride, or "
                             f"start a new run from the checkpoint's weights (--init-from CHECKPOINT)")
        self.seed, self.epoch, self.position = int(state["seed"]), int(state["epoch"]), int(state["position"])


def split_train_val(tokens_or_text, train_ratio: float = 0.9):
    """First `int(train_ratio * len)` items for training, the rest for validation.

    Works on a str (split by characters, before tokenizing), a list or a 1-D array.
    """
    if not 0.0 < train_ratio < 1.0:
        raise ValueError(f"train_ratio must be strictly between 0 and 1, got {train_ratio}")
    split_at = int(train_ratio * len(tokens_or_text))
    return tokens_or_text[:split_at], tokens_or_text[split_at:]
