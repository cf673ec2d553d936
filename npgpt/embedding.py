"""Token and positional embeddings: a table lookup forward, a scatter-add backward."""
import numpy as np


def embedding_forward(weight, idx):
    """out[b, t] = weight[idx[b, t]].

    weight: (V, C); idx: (B, T) integer ids -> out: (B, T, C).
    """
    out = weight[idx]                                # (B, T, C), a gather (copies the rows)
    cache = (idx, weight.shape)
    return out, cache


def embedding_backward(dout, cache, dweight=None):
    """dweight[v] = sum of dout[b, t] over every (b, t) with idx[b, t] == v.

    dout: (B, T, C) -> dweight: (V, C). A scatter-ADD: a token that appears twice receives both
    gradients (`dweight[idx] += dout` would keep only one of them). Pass `dweight` to accumulate
    into an existing (V, C) array, e.g. the tied output head's gradient.
    """
    idx, weight_shape = cache
    if dweight is None:
        dweight = np.zeros(weight_shape, dtype=dout.dtype)
    np.add.at(dweight, idx.reshape(-1), dout.reshape(-1, weight_shape[1]))
    return dweight


def pos_embedding_forward(weight, T):
    """out[t] = weight[t] for t < T.  weight: (T_max, C) -> out: (T, C), broadcast over the batch."""
    if T > weight.shape[0]:
        raise ValueError(f"sequence length {T} exceeds the context length {weight.shape[0]}")
    return weight[:T], (T, weight.shape)


def pos_embedding_backward(dout, cache):
    """dweight[t] = sum_b dout[b, t] for t < T, zero beyond.  dout: (B, T, C) or (T, C) -> (T_max, C)."""
    T, weight_shape = cache
    dweight = np.zeros(weight_shape, dtype=dout.dtype)
    dweight[:T] = dout.sum(axis=0) if dout.ndim == 3 else dout
    return dweight
