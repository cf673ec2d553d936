"""Sliding-window datasets and batches: gptcore.data, and torchgpt.data yielding the same batches."""
from __future__ import annotations

import numpy as np
import pytest

from gptcore.data import SlidingWindowDataset, epoch_order, iterate_batches, split_train_val


def naive_windows(ids, max_length, stride):
    """The book's loop, written independently: one window per start in range(0, L - T, stride)."""
    return [(ids[s:s + max_length], ids[s + 1:s + max_length + 1])
            for s in range(0, len(ids) - max_length, stride)]


@pytest.mark.parametrize("length, max_length, stride", [
    (20, 4, 1), (20, 4, 3), (20, 4, 4), (20, 4, 16), (21, 4, 4), (5, 4, 1), (9, 4, 4), (100, 7, 5),
])
def test_windows_match_naive_loop(length, max_length, stride):
    ids = np.random.default_rng(length).integers(0, 50257, size=length)
    dataset = SlidingWindowDataset(ids, max_length, stride)
    expected = naive_windows(ids, max_length, stride)
    assert len(dataset) == len(expected)
    for (x, y), (ex, ey) in zip((dataset[i] for i in range(len(dataset))), expected):
        assert x.dtype == np.int64 and y.dtype == np.int64 and x.shape == (max_length,)
        np.testing.assert_array_equal(x, ex)
        np.testing.assert_array_equal(y, ey)
    last_start = (len(dataset) - 1) * stride
    assert last_start + max_length + 1 <= length  # the last window fits, target included
    assert last_start + stride + max_length + 1 > length  # and no further window would


def test_targets_are_inputs_shifted_by_one():
    dataset = SlidingWindowDataset(list(range(10)), max_length=4, stride=2)
    x, y = dataset[1]
    assert x.tolist() == [2, 3, 4, 5] and y.tolist() == [3, 4, 5, 6]
    np.testing.assert_array_equal(dataset[-1][0], dataset[len(dataset) - 1][0])
    with pytest.raises(IndexError):
        dataset[len(dataset)]
    with pytest.raises(ValueError):  # windows are read-only views
        x[0] = 99


def test_bad_arguments_are_explained():
    with pytest.raises(ValueError, match="max_length must be a positive integer, got 0"):
        SlidingWindowDataset(range(10), 0, 1)
    with pytest.raises(ValueError, match="stride must be a positive integer, got -1"):
        SlidingWindowDataset(range(10), 4, -1)
    with pytest.raises(ValueError, match="text too short: 5 tokens.*max_length=8 needs 9"):
        SlidingWindowDataset(range(5), 8, 1)
    with pytest.raises(ValueError, match="must be 1-D"):
        SlidingWindowDataset(np.zeros((2, 10), dtype=np.int64), 4, 1)
    with pytest.raises(ValueError, match="must be integers"):
        SlidingWindowDataset(np.zeros(10), 4, 1)


def test_batches_follow_the_documented_order():
    ids = np.arange(1000, 1100)
    dataset = SlidingWindowDataset(ids, max_length=8, stride=3)
    seed, epoch, batch_size = 7, 2, 5
    order = np.random.default_rng([seed, epoch]).permutation(len(dataset))  # the documented rule
    batches = list(iterate_batches(dataset, batch_size, seed=seed, epoch=epoch))
    assert len(batches) == len(dataset) // batch_size
    for k, (X, Y) in enumerate(batches):
        assert X.shape == Y.shape == (batch_size, 8) and X.dtype == Y.dtype == np.int64
        for row, window in enumerate(order[k * batch_size:(k + 1) * batch_size]):
            np.testing.assert_array_equal(X[row], dataset[window][0])
            np.testing.assert_array_equal(Y[row], dataset[window][1])


def test_epochs_and_seeds_change_the_order_reproducibly():
    dataset = SlidingWindowDataset(np.arange(200), max_length=4, stride=2)

    def first_rows(**kwargs):
        return next(iterate_batches(dataset, 8, **kwargs))[0][:, 0].tolist()

    assert first_rows(seed=0, epoch=0) == first_rows(seed=0, epoch=0)
    assert first_rows(seed=0, epoch=0) != first_rows(seed=0, epoch=1)
    assert first_rows(seed=0, epoch=1) != first_rows(seed=1, epoch=0)  # not seed + epoch
    assert first_rows(shuffle=False) == list(range(0, 16, 2))


def test_drop_last_and_sequential_cover_every_window_once():
    dataset = SlidingWindowDataset(np.arange(50), max_length=4, stride=2)  # 23 windows
    batches = list(iterate_batches(dataset, 5, shuffle=False, drop_last=False))
    assert [len(X) for X, _ in batches] == [5, 5, 5, 5, 3]
    starts = np.concatenate([X[:, 0] for X, _ in batches])
    np.testing.assert_array_equal(starts, np.arange(23) * 2)
    assert [len(X) for X, _ in iterate_batches(dataset, 5, drop_last=True)] == [5] * 4
    shuffled = np.concatenate([X[:, 0] for X, _ in iterate_batches(dataset, 5, drop_last=False, seed=3)])
    np.testing.assert_array_equal(np.sort(shuffled), np.arange(23) * 2)


def test_too_few_windows_for_one_batch_is_an_error():
    dataset = SlidingWindowDataset(np.arange(10), max_length=4, stride=4)  # 2 windows
    with pytest.raises(ValueError, match="only 2 windows, fewer than batch_size=4"):
        list(iterate_batches(dataset, 4))
    assert len(list(iterate_batches(dataset, 4, drop_last=False))) == 1
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        list(iterate_batches(dataset, 0))


def test_generic_dataset_is_stacked_the_same_way():
    dataset = SlidingWindowDataset(np.arange(60), max_length=6, stride=5)

    class PlainWindows:  # anything with __len__ and __getitem__
        def __len__(self):
            return len(dataset)

        def __getitem__(self, i):
            return tuple(a.tolist() for a in dataset[i])

    for (X1, Y1), (X2, Y2) in zip(iterate_batches(dataset, 3, seed=4), iterate_batches(PlainWindows(), 3, seed=4),
                                  strict=True):
        np.testing.assert_array_equal(X1, X2)
        np.testing.assert_array_equal(Y1, Y2)


def test_split_train_val():
    train, val = split_train_val("abcdefghij", 0.9)
    assert (train, val) == ("abcdefghi", "j")
    train, val = split_train_val(np.arange(100), 0.85)
    assert len(train) == 85 and val[0] == 85
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        split_train_val("abc", 1.0)


def test_real_text_windows(shared_data_dir):
    # The Verdict's bytes stand in for token ids: a long, real, non-synthetic stream.
    ids = np.frombuffer((shared_data_dir / "the-verdict.txt").read_bytes(), dtype=np.uint8)
    dataset = SlidingWindowDataset(ids, max_length=256, stride=256)
    assert len(dataset) == (len(ids) - 257) // 256 + 1 == 79
    X, Y = next(iterate_batches(dataset, 4, shuffle=False))
    assert bytes(X[0, :10].astype(np.uint8)) == b"I HAD alwa"
    np.testing.assert_array_equal(X[:, 1:], Y[:, :-1])


# ---- torchgpt.data: the same batches as torch tensors ---------------------------------------

@pytest.mark.parametrize("shuffle, drop_last, seed, epoch, batch_size, stride", [
    (True, True, 0, 0, 4, 3), (True, False, 5, 3, 7, 1), (False, False, 0, 0, 6, 5), (False, True, 1, 1, 2, 8),
    (True, True, 123, 9, 1, 2),
])
def test_torch_dataloader_yields_the_numpy_batches(shuffle, drop_last, seed, epoch, batch_size, stride):
    torch = pytest.importorskip("torch")
    from torchgpt.data import create_dataloader

    ids = np.random.default_rng(seed).integers(0, 50257, size=300)
    options = dict(shuffle=shuffle, drop_last=drop_last, seed=seed, epoch=epoch)
    loader = create_dataloader(ids, batch_size=batch_size, max_length=16, stride=stride, **options)
    expected = list(iterate_batches(SlidingWindowDataset(ids, 16, stride), batch_size, **options))
    got = list(loader)
    assert len(got) == len(expected) == len(loader)
    for (X, Y), (eX, eY) in zip(got, expected):
        assert X.dtype == Y.dtype == torch.int64
        np.testing.assert_array_equal(X.numpy(), eX)
        np.testing.assert_array_equal(Y.numpy(), eY)


def test_torch_sampler_set_epoch_and_errors():
    pytest.importorskip("torch")
    from torchgpt.data import TokenWindowDataset, create_dataloader

    ids = np.arange(500)
    loader = create_dataloader(ids, batch_size=8, max_length=4, stride=4)
    loader.sampler.set_epoch(3)
    first = next(iter(loader))[0].numpy()
    expected = next(iterate_batches(SlidingWindowDataset(ids, 4, 4), 8, epoch=3))[0]
    np.testing.assert_array_equal(first, expected)
    assert epoch_order(5, shuffle=False, seed=0, epoch=0).tolist() == [0, 1, 2, 3, 4]
    x, y = TokenWindowDataset(ids, 4, 4)[2]
    assert x.tolist() == [8, 9, 10, 11] and y.tolist() == [9, 10, 11, 12]
    with pytest.raises(ValueError, match="text too short: 3 tokens"):
        create_dataloader([1, 2, 3], batch_size=1, max_length=4, stride=1)
    with pytest.raises(ValueError, match="fewer than batch_size=200"):
        create_dataloader(ids, batch_size=200, max_length=4, stride=4)
