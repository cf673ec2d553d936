# Planted bug for notebooks/03_block.ipynb: LayerNorm's backward forgets the variance's path,
# dx = rstd * (dxhat - mean(dxhat)) without "- xhat * mean(dxhat * xhat)". npgpt.block and npgpt.gpt2 bound the
# name with `from npgpt.layernorm import layernorm_backward`, so all three modules get the broken function.
# The notebook's LayerNorm checks (torch, finite differences) and the whole block's must fail.
import npgpt.block as _block
import npgpt.gpt2 as _gpt2
import npgpt.layernorm as _layernorm


def _layernorm_backward_without_variance_path(dout, cache):
    rows_axes = tuple(range(dout.ndim - 1))
    dshift = dout.sum(axis=rows_axes)
    dscale = (dout * cache.xhat).sum(axis=rows_axes)
    dxhat = dout * cache.scale
    dx = cache.rstd * (dxhat - dxhat.mean(axis=-1, keepdims=True))
    return dx, dscale, dshift


_layernorm.layernorm_backward = _layernorm_backward_without_variance_path
_block.layernorm_backward = _layernorm_backward_without_variance_path
_gpt2.layernorm_backward = _layernorm_backward_without_variance_path
