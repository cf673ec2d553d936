# Planted bug for notebooks/04_gpt.ipynb: the token embedding's backward uses buffered indexing,
# dweight[idx] += dout, which keeps only ONE of the gradients of a token that appears twice (the scatter-add
# np.add.at keeps all). npgpt.gpt2 bound the name with `from npgpt.embedding import embedding_backward`, so both
# modules get the broken function. The notebook's batch repeats ' a'; its whole-model checks (the embedding rows
# by finite differences, every gradient against torch autograd) must fail.
import numpy as np

import npgpt.embedding as _embedding
import npgpt.gpt2 as _gpt2


def _embedding_backward_buffered(dout, cache, dweight=None):
    if dweight is None:
        dweight = np.zeros(cache.weight_shape, dtype=dout.dtype)
    dweight[cache.idx.reshape(-1)] += dout.reshape(-1, cache.weight_shape[1])
    return dweight


_embedding.embedding_backward = _embedding_backward_buffered
_gpt2.embedding_backward = _embedding_backward_buffered
