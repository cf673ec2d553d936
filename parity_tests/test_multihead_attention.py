"""Causal multi-head attention as GPT-2 uses it: npgpt vs torchgpt.MultiHeadAttention.

qkv bias on and off; dropout off, and on with the SAME (B, H, T, T) keep-mask fed to both; and torch's
fast path (F.scaled_dot_product_attention, use_sdpa=True) against the explicit one and against NumPy.
Score magnitudes are drawn as in test_attention.py (see its docstring).
"""
import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st

import npgpt.attention as npatt
import npgpt.dropout as npdrop
import torchgpt.attention as tatt
from parity_tests.conftest import (assert_close, assert_grads_close, budget, causal_split, make_array, model_dims,
                                   record_example, torch_dtype, torch_with_reference, values)
from parity_tests.test_attention import (attention_floors, attention_term_magnitudes, cast, dtype_and_score, load_into,
                                         projection_params, run_module, set_score_magnitude)


def check_multihead(B, T, C, H, qkv_bias, drop_rate, recipe, dtype, score, mask_seed=0):
    """npgpt multihead_attention forward/backward vs MultiHeadAttention (explicit, and SDPA without dropout)."""
    x64 = make_array(recipe, (B, T, C), np.float64)
    p64 = projection_params(recipe.rng(1), C, C, qkv_bias, np.float64, out_proj=True)
    set_score_magnitude(x64, p64, H, score)
    x, p = x64.astype(dtype), cast(p64, dtype)
    mask = npdrop.dropout_mask((B, H, T, T), drop_rate, np.random.default_rng(mask_seed)) if drop_rate else None
    out, cache = npatt.multihead_attention_forward(x, p, H, drop_rate=drop_rate, dropout_mask=mask)
    dout = (make_array(recipe, out.shape, np.float64, salt=2) / recipe.scale).astype(dtype)
    dx, grads = npatt.multihead_attention_backward(dout, cache)
    assert out.dtype == dx.dtype == dtype and sorted(grads) == sorted(p)
    ours = {"out": out, "x": dx, **grads}

    def runner(use_sdpa, keep_mask):
        def run(tdtype):
            att = tatt.MultiHeadAttention(C, C, context_length=T, drop_rate=drop_rate, n_heads=H,
                                          qkv_bias=qkv_bias, use_sdpa=use_sdpa)
            return run_module(load_into(att.to(tdtype), p), x, dout, keep_mask, tdtype)
        return run

    (expected, key_bias_terms), reference = torch_with_reference(runner(False, mask), dtype)
    references = reference and reference[0]
    floors = attention_floors(
        dtype, lambda: attention_term_magnitudes(x, p, H, dout, keep_mask=mask, drop_rate=drop_rate), key_bias_terms)
    assert_grads_close(ours, expected, references=references, floors=floors, prefix="multi-head ")
    if drop_rate == 0.0:
        # The fused kernel computes the same function: equal to the explicit path and to NumPy. In float32 the
        # float64 explicit run is the reference, so the allowance measures the fused kernel's own rounding.
        fused, _ = runner(True, None)(torch_dtype(dtype))
        assert_grads_close(expected, fused, references=references, floors=floors, prefix="explicit vs sdpa ")
        assert_grads_close(ours, fused, references=references, floors=floors, prefix="multi-head vs sdpa ")
    return dx, grads


@budget(40)
@given(dims=model_dims(), qkv_bias=st.booleans(), drop_rate=st.sampled_from([0.0, 0.0, 0.1, 0.5]),
       mask_seed=st.integers(0, 2**16), recipe=values(), case=dtype_and_score(), split=st.booleans())
def test_multihead_attention(dims, qkv_bias, drop_rate, mask_seed, recipe, case, split):
    record_example()
    B, T, C, H = dims
    with causal_split(split):
        check_multihead(B, T, C, H, qkv_bias, drop_rate, recipe, *case, mask_seed=mask_seed)


def test_one_head_equals_causal_attention_with_identity_projection():
    """H = 1 with out_proj = identity is the single-head CausalAttention, in NumPy as in torch."""
    record_example()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 5, 6))
    p = projection_params(rng, 6, 6, True, np.float64)
    single, _ = npatt.single_head_attention_forward(x, p, causal=True)
    identity = {"out_proj.weight": np.eye(6), "out_proj.bias": np.zeros(6)}
    multi, _ = npatt.multihead_attention_forward(x, {**p, **identity}, 1)
    assert_close(multi, single, name="H=1 multi-head vs single-head")
    causal = load_into(tatt.CausalAttention(6, 6, 5, 0.0, qkv_bias=True).double().eval(), p)
    assert_close(single, causal(torch.from_numpy(x)), name="single-head vs CausalAttention")
