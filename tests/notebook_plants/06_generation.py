# Planted bug for notebooks/06_generation.ipynb: the KV cache stores the new keys and values but hands the
# attention only those, forgetting the cached ones, so a decoding step's query sees its own token alone.
# LayerKV.append is a method looked up on the class by npgpt.attention (and the Llama attention) at every
# step, so patching the class reaches every cache. The notebook's "cached logits equal the plain forward"
# check must fail.
import npgpt.kvcache as _kvcache

_correct_append = _kvcache.LayerKV.append


def _append_forgetting_the_cache(self, k, v):
    _correct_append(self, k, v)
    return k, v


_kvcache.LayerKV.append = _append_forgetting_the_cache
