"""Token and positional embeddings: a table lookup forward, a scatter-add backward."""
from typing import NamedTuple

import numpy as np


class EmbeddingCache(NamedTuple):
    """What embedding_backward needs: the looked-up ids and the table's shape (not the table itself)."""
    idx: np.ndarray                  # (B, T) integer ids
    weight_shape: tuple              # (V, C)


class PositionCache(NamedTuple):
    """What pos_embedding_backward needs: how many rows were read, and the table's shape."""
    T: int                           # rows 0 .. T-1 were read
    weight_shape: tuple              # (T_max, C)


def embedding_forward(weight, idx):
    """out[b, t] = weight[idx[b, t]].

    weight: (V, C); idx: (B, T) integer ids -> out: (B, T, C), EmbeddingCache(idx, weight_shape).
    """
    out = weight[idx]                                # (B, T, C), a gather (copies the rows)
    return out, EmbeddingCache(idx=idx, weight_shape=weight.shape)


def embedding_backward(dout, cache, dweight=None):
    """dweight[v] = sum of dout[b, t] over every (b, t) with idx[b, t] == v.

    dout: (B, T, C) -> dweight: (V, C). A scatter-ADD: a token that appears twice receives both
    gradients (`dweight[idx] += dout` would keep only one of them). Pass `dweight` to accumulate
    into an existing (V, C) array, e.g. the tied output head's gradient.
    """
    if dweight is None:
        dweight = np.zeros(cache.weight_shape, dtype=dout.dtype)
    np.add.at(dweight, cache.idx.reshape(-1), dout.reshape(-1, cache.weight_shape[1]))
    return dweight


def pos_embedding_forward(weight, T):
    """out[t] = weight[t] for t < T.  weight: (T_max, C) -> out: (T, C), broadcast over the batch;
    PositionCache(T, weight_shape)."""
    if T > weight.shape[0]:
        raise ValueError(f"sequence length {T} exceeds the context length {weight.shape[0]}")
    return weight[:T], PositionCache(T=T, weight_shape=weight.shape)


def pos_embedding_backward(dout, cache):
    """dweight[t] = sum_b dout[b, t] for t < T, zero beyond.  dout: (B, T, C) or (T, C) -> (T_max, C)."""
    dweight = np.zeros(cache.weight_shape, dtype=dout.dtype)
    dweight[:cache.T] = dout.sum(axis=0) if dout.ndim == 3 else dout
    return dweight
