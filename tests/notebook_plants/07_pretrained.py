# Planted bug for notebooks/07_pretrained.ipynb: reading GPT-2's release layout, the first two thirds of the
# fused c_attn are handed out in the wrong order (W_query gets the key columns, W_key the query columns). The
# writer is untouched, so saving and loading no longer agree. gptcore.formats.weights calls the layout through
# the module (layout.canonical_from_layout), so patching the module attribute is enough. The notebook's round
# trip (same numbers back) and the comparison with transformers' logits must fail.
import gptcore.formats.gpt2_release as _release

_correct_canonical_from_layout = _release.canonical_from_layout


def _canonical_from_layout_swapping_query_and_key(read, config, lm_head=None):
    params = _correct_canonical_from_layout(read, config, lm_head=lm_head)
    for i in range(config.n_layers):
        query, key = f"blocks.{i}.att.W_query.weight", f"blocks.{i}.att.W_key.weight"
        params[query], params[key] = params[key], params[query]
    return params


_release.canonical_from_layout = _canonical_from_layout_swapping_query_and_key
