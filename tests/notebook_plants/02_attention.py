# Planted bug for notebooks/02_attention.ipynb: the softmax backward keeps only the Jacobian's diagonal,
# dx = y * dout, dropping the "- sum(dout * y)" term (the off-diagonal -y y^T). npgpt.attention bound the name
# with `from npgpt.softmax import softmax_backward`, so both modules get the broken function. The notebook's
# softmax check (Jacobian, torch, finite differences) and every attention-gradient check must fail.
import npgpt.attention as _attention
import npgpt.softmax as _softmax


def _softmax_backward_diagonal_only(dout, cache, *, out=None):
    dx = dout * cache.probs
    if out is None:
        return dx
    out[...] = dx
    return out


_softmax.softmax_backward = _softmax_backward_diagonal_only
_attention.softmax_backward = _softmax_backward_diagonal_only
