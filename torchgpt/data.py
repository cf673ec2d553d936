"""PyTorch data loading that yields exactly the batches of gptcore.data.iterate_batches.

The windows come from gptcore.data.SlidingWindowDataset and the order from gptcore.data.epoch_order,
so for the same arguments

    list(create_dataloader(ids, batch_size=B, max_length=T, stride=S, seed=s, epoch=e))
    == list(iterate_batches(SlidingWindowDataset(ids, T, S), B, seed=s, epoch=e))

batch for batch (as int64 tensors of shape (B, T)). Call `loader.sampler.set_epoch(e)` (or build a
new loader) to get epoch e's order.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from gptcore.data import SlidingWindowDataset, check_batch_size, epoch_order


class TokenWindowDataset(Dataset):
    """Window i -> (inputs (T,), targets (T,)) int64 tensors; the same windows as npgpt's."""

    def __init__(self, token_ids: Sequence[int] | np.ndarray, max_length: int, stride: int):
        self.windows = SlidingWindowDataset(token_ids, max_length, stride)

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        inputs, targets = self.windows[index]
        # copy: the NumPy windows are read-only views and torch wants writable memory.
        return torch.from_numpy(inputs.copy()), torch.from_numpy(targets.copy())


class EpochOrderSampler(Sampler[int]):
    """Yields window indices in gptcore.data.epoch_order(N, shuffle, seed, epoch)."""

    def __init__(self, num_windows: int, *, shuffle: bool, seed: int, epoch: int = 0):
        self.num_windows, self.shuffle, self.seed, self.epoch = num_windows, shuffle, seed, epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_windows

    def __iter__(self):
        order = epoch_order(self.num_windows, shuffle=self.shuffle, seed=self.seed, epoch=self.epoch)
        return iter(order.tolist())


def stack_pairs(batch: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """[(inputs (T,), targets (T,))] * B -> (X (B, T), Y (B, T)); module-level so workers can pickle it."""
    inputs, targets = zip(*batch)
    return torch.stack(inputs), torch.stack(targets)


def create_dataloader(token_ids: Sequence[int] | np.ndarray, *, batch_size: int, max_length: int,
                      stride: int, shuffle: bool = True, drop_last: bool = True, seed: int = 0,
                      epoch: int = 0, num_workers: int = 0) -> DataLoader:
    """A DataLoader over sliding windows of `token_ids` yielding (X, Y) int64 (B, T) tensors."""
    dataset = TokenWindowDataset(token_ids, max_length, stride)
    check_batch_size(len(dataset), batch_size, drop_last)
    sampler = EpochOrderSampler(len(dataset), shuffle=shuffle, seed=seed, epoch=epoch)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last,
                      num_workers=num_workers, collate_fn=stack_pairs)
