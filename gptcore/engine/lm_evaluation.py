"""A language model's loss and perplexity on a text, written once for both backends (`gpt2 evaluate-lm`).

The token stream t_0 .. t_{N-1} is cut into windows of at most `context` tokens that do not overlap, and every
token after the first is predicted exactly once, from the tokens before it in its window:

    window k:  X = t[kT : kT + T]      Y = t[kT + 1 : kT + T + 1]      (the last window may be shorter)
    loss = (1 / (N - 1)) * sum over all predicted tokens of -log p(t_i | its window's tokens before it)
    perplexity = exp(loss)

Windows of the same length go through the model together, `batch_size` at a time. A backend supplies one
function, summed_loss(X, Y) -> float: the SUM (not the mean) of the cross-entropy over the (B, T) batch, so a
short last window weighs by its tokens, not by its batch.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LMEvaluation:
    loss: float              # mean cross-entropy per predicted token (nats)
    perplexity: float        # exp(loss)
    tokens: int              # predicted tokens: the text's tokens less one
    windows: int
    context: int             # the longest window


def check_evaluation(n_tokens: int, context: int, batch_size: int, model_context: int) -> None:
    """ValueError naming the flag to change, for a text or settings that cannot be evaluated."""
    if n_tokens < 2:
        raise ValueError(f"the text has {n_tokens} token(s); the loss needs at least 2 (one to predict from, one "
                         f"to predict): give a longer text to --data")
    if context < 2 or batch_size < 1:
        raise ValueError(f"--context must be at least 2 and --batch-size at least 1 (got {context}, {batch_size})")
    if context > model_context:
        raise ValueError(f"--context {context} is longer than the model's context length ({model_context}); "
                         f"give --context {model_context} or less")


def evaluation_windows(ids: np.ndarray, context: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(X, Y) pairs of shape (T_k,) cutting `ids` into non-overlapping windows of at most `context` predictions."""
    ids = np.asarray(ids, dtype=np.int64)
    windows = []
    for start in range(0, len(ids) - 1, context):
        stop = min(start + context, len(ids) - 1)
        windows.append((ids[start:stop], ids[start + 1:stop + 1]))
    return windows


def window_batches(windows, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(X, Y) batches of shape (B, T): windows of one length stacked, in order, at most batch_size each."""
    by_length: dict[int, list] = {}
    for X, Y in windows:
        by_length.setdefault(len(X), []).append((X, Y))
    for same_length in by_length.values():
        for start in range(0, len(same_length), batch_size):
            chunk = same_length[start:start + batch_size]
            yield np.stack([X for X, _ in chunk]), np.stack([Y for _, Y in chunk])


def evaluate_language_model(summed_loss: Callable[[np.ndarray, np.ndarray], float], ids, context: int,
                            batch_size: int, *, on_batch: Callable[[int], None] | None = None) -> LMEvaluation:
    """The mean next-token loss of `ids` (see the module docstring); on_batch(tokens) after each batch (progress)."""
    windows = evaluation_windows(ids, context)
    total, count = 0.0, 0
    for X, Y in window_batches(windows, batch_size):
        total += float(summed_loss(X, Y))
        count += Y.size
        if on_batch is not None:
            on_batch(Y.size)
    loss = total / count
    return LMEvaluation(loss=loss, perplexity=math.exp(loss) if loss < 700 else math.inf, tokens=count,
                        windows=len(windows), context=max(len(X) for X, _ in windows))
