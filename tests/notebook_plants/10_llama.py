# Planted bug for notebooks/10_llama.ipynb: RoPE's backward rotates by +angle (R instead of R^T = R(-angle)).
# The notebook must fail: the RoPE section checks rope_backward against torch autograd, finite differences and
# R^T R = I, and the whole model's gradients against torch. npgpt.gqa_attention bound the name with
# `from npgpt.rope import rope_backward`, so it is patched there too.
import npgpt.gqa_attention
import npgpt.rope


def rope_backward_by_plus_angle(dout, cache):
    return npgpt.rope._rotate(dout, cache.cos, cache.sin)


npgpt.rope.rope_backward = rope_backward_by_plus_angle
npgpt.gqa_attention.rope_backward = rope_backward_by_plus_angle
