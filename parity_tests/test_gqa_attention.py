"""Grouped-query attention with RoPE (Llama): npgpt vs torchgpt.GroupedQueryAttention (autograd), every
gradient, for n_kv_heads = 1 (multi-query), a proper divisor of n_heads, and n_heads (multi-head); T from 1;
positions with an offset; the SDPA fast path; finite differences; a planted bug (the backward not summing the
gradients of the query heads that share a key/value head) must be caught."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import npgpt.attention as npattention
import npgpt.gqa_attention as npgqa
import torchgpt.gqa_attention as tgqa
from gptcore.config import GPTConfig
from npgpt.rope import rope_tables
from parity_tests.conftest import (Values, assert_close, assert_grads_close, assert_matches_finite_differences,
                                   budget, causal_split, dtypes, make_array, planted_bug, record_example, to_torch,
                                   torch_with_reference, values, weights)
from torchgpt.rope import rope_tables as torch_rope_tables

# The largest |score| a test sets (see set_score_magnitude): up to a softmax that is nearly one-hot.
SCORE_MAGNITUDES = (1e-3, 1.0, 10.0, 30.0)


@st.composite
def gqa_dims(draw):
    """(B, T, KV, G, D): n_kv_heads KV in 1..3, group size G in 1..3 (H = KV * G), even head width D <= 8."""
    return (draw(st.integers(1, 3)), draw(st.integers(1, 12)), draw(st.integers(1, 3)), draw(st.integers(1, 3)),
            2 * draw(st.integers(1, 4)))


def llama_config(C, H, KV):
    return GPTConfig(arch="llama", vocab_size=1, context_length=1, emb_dim=C, n_heads=H, n_kv_heads=KV,
                     n_layers=1, ff_dim=1, drop_rate=0.0)


def gqa_params(rng, C, KVD):
    """float64 weights: W_query, out_proj (C, C); W_key, W_value (KV*D, C)."""
    return {"W_query.weight": weights(rng, (C, C), np.float64), "W_key.weight": weights(rng, (KVD, C), np.float64),
            "W_value.weight": weights(rng, (KVD, C), np.float64), "out_proj.weight": weights(rng, (C, C), np.float64)}


def set_score_magnitude(x, p, H, KV, cos, sin, target):
    """Scales W_query in place so that max |q k^T / sqrt(D)| over the visible (causal) pairs is `target`:
    the scores are linear in the query projection (RoPE included), so one factor sets them exactly."""
    B, T, C = x.shape
    D = C // H
    q = npgqa._split_heads(x @ p["W_query.weight"].T, H)
    k = npgqa.repeat_kv(npgqa._split_heads(x @ p["W_key.weight"].T, KV), H // KV)
    q, k = npgqa.rope_forward(q, cos, sin)[0], npgqa.rope_forward(k, cos, sin)[0]
    scores = np.where(np.triu(np.ones((T, T), bool), 1), 0.0, q @ k.swapaxes(-1, -2) / math.sqrt(D))
    largest = float(np.abs(scores).max(initial=0.0))
    if largest > 1e-300:
        p["W_query.weight"] *= target / largest


def check_gqa(B, T, KV, G, D, offset, recipe, dtype, score, use_sdpa=False):
    """npgpt vs torchgpt on one example; returns what the finite differences need."""
    H = KV * G
    C = H * D
    x = make_array(recipe, (B, T, C), np.float64)
    positions = offset + np.arange(T)
    p = gqa_params(recipe.rng(1), C, KV * D)
    set_score_magnitude(x, p, H, KV, *rope_tables(positions, D, 10000.0, np.float64), score)
    x, p = x.astype(dtype), {name: value.astype(dtype) for name, value in p.items()}
    cos, sin = rope_tables(positions, D, 10000.0, dtype)
    out, cache = npgqa.gqa_attention_forward(x, p, H, KV, cos, sin)
    dout = (make_array(recipe, out.shape, np.float64, salt=2)).astype(dtype)
    dx, grads = npgqa.gqa_attention_backward(dout, cache)
    assert out.dtype == dx.dtype == dtype and sorted(grads) == sorted(p)
    assert all(g.dtype == dtype and g.shape == p[name].shape for name, g in grads.items())

    def run(tdtype):
        module = tgqa.GroupedQueryAttention(llama_config(C, H, KV), use_sdpa=use_sdpa).to(tdtype)
        module.load_state_dict({name: to_torch(value) for name, value in p.items()})
        cos_t, sin_t = torch_rope_tables(torch.as_tensor(positions), D, 10000.0, tdtype)
        x_t = to_torch(x).to(tdtype).requires_grad_()
        out_t = module(x_t, cos_t, sin_t)
        out_t.backward(to_torch(dout).to(tdtype))
        return {"out": out_t, "x": x_t.grad, **{name: param.grad for name, param in module.named_parameters()}}

    expected, reference = torch_with_reference(run, dtype)
    assert_grads_close({"out": out, "x": dx, **grads}, expected, references=reference, prefix="gqa ")
    return x, p, cos, sin, dout, dx, grads


@budget(40)
@given(dims=gqa_dims(), offset=st.integers(0, 5000), recipe=values(scales=(1e-3, 1.0, 10.0)), dtype=dtypes,
       score=st.sampled_from(SCORE_MAGNITUDES), split=st.booleans())
def test_gqa_attention(dims, offset, recipe, dtype, score, split):
    record_example()
    with causal_split(split):
        check_gqa(*dims, offset, recipe, dtype, score)


@budget(10)
@given(dims=gqa_dims(), offset=st.integers(0, 100), recipe=values(scales=(1.0,)), score=st.sampled_from((1.0, 10.0)))
def test_gqa_attention_sdpa_path(dims, offset, recipe, score):
    """torch's fused F.scaled_dot_product_attention path equals NumPy too (float64)."""
    record_example()
    check_gqa(*dims, offset, recipe, np.float64, score, use_sdpa=True)


@pytest.mark.parametrize("split", [False, True])
@pytest.mark.parametrize("KV, G", [(1, 4), (2, 2), (4, 1)])       # multi-query, grouped, multi-head
def test_gqa_attention_finite_differences(KV, G, split):
    record_example()
    with causal_split(split):
        x, p, cos, sin, dout, dx, grads = check_gqa(2, 4, KV, G, 4, 7, Values(seed=3, scale=1.0, ties=False),
                                                    np.float64, 3.0)
        loss = lambda: float((npgqa.gqa_attention_forward(x, p, KV * G, KV, cos, sin)[0] * dout).sum())
        assert_matches_finite_differences(loss, x, dx, name="gqa dx", rtol=1e-5)
        for name in p:
            assert_matches_finite_differences(loss, p[name], grads[name], name=f"gqa {name}", rtol=1e-5)


def test_multi_head_case_equals_gpt2_attention_with_rotated_inputs():
    """KV = H with RoPE switched off (theta so large that every angle rounds to ~0 is not exact; instead,
    position 0 only: T = 1, angle 0) equals npgpt's multi-head attention without biases: an independent path."""
    record_example()
    from npgpt.attention import multihead_attention_forward
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 1, 8))
    p = gqa_params(rng, 8, 8)
    cos, sin = rope_tables(np.arange(1), 4, 10000.0, np.float64)
    out, _ = npgqa.gqa_attention_forward(x, p, 2, 2, cos, sin)
    reference, _ = multihead_attention_forward(x, {**p, "out_proj.bias": np.zeros(8)}, 2)
    assert_close(out, reference, name="gqa at position 0 = multi-head attention")


def backward_without_summing_the_group(a, b, out):
    """Keeps the first query head's share of each kv head's gradient only (summed_over_group without the sum)."""
    np.matmul(a[0].T, b[0], out=out)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("split", [False, True])
def test_planted_bug_gqa_backward_not_summing_over_the_group(dtype, split, monkeypatch):
    record_example()
    plain = Values(seed=1, scale=1.0, ties=False)
    with causal_split(split):
        check_gqa(2, 5, 2, 2, 4, 3, plain, dtype, 3.0)
        monkeypatch.setattr(npattention, "summed_over_group", backward_without_summing_the_group)
        with planted_bug("gqa backward not summing over the group"):
            check_gqa(2, 5, 2, 2, 4, 3, plain, dtype, 3.0)
