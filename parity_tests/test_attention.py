"""Single-head self-attention in the book's teaching steps: npgpt against its torch twins.

    simple_attention_forward/_backward (no weights) <-> torchgpt simple_attention (out and dx)
    single_head_attention(causal=False)           <-> SelfAttentionV1 (raw matrices, no bias), SelfAttentionV2
    single_head_attention(causal=True, dropout)   <-> CausalAttention, fed the SAME keep-mask

Score magnitudes are drawn, not left to chance (see set_score_magnitude): softmax stability needs scores
past exp's overflow (88.7 in float32, 709 in float64), and the tolerance holds only while the rounding in
the scores themselves stays small (a score S carries ~eps * S absolute error in ANY implementation, and
softmax passes it on unchanged): up to 100 in float32, 1e4 in float64.
"""
import math

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

import npgpt.attention as npatt
import npgpt.dropout as npdrop
import torchgpt.attention as tatt
from parity_tests.conftest import (KeyBiasFloors, assert_close, assert_grads_close, budget, causal_split, dtypes,
                                   fed_dropout_masks, make_array, record_example, to_torch, torch_with_reference,
                                   values, weights)

SCORE_MAGNITUDES = {np.float64: (1e-3, 1.0, 30.0, 1e3, 1e4), np.float32: (1e-3, 1.0, 10.0, 100.0)}
PROJECTIONS = ("W_query", "W_key", "W_value")


@st.composite
def dtype_and_score(draw):
    """(dtype, largest |score| to set) with the magnitudes the dtype can be held to (module docstring)."""
    dtype = draw(dtypes)
    return dtype, draw(st.sampled_from(SCORE_MAGNITUDES[dtype]))


def projection_params(rng, C, D, qkv_bias, dtype, out_proj=False):
    """W_query/W_key/W_value (D, C) [+ biases (D,)], and out_proj (C, C) + bias when asked; float64 first."""
    p = {}
    for name in PROJECTIONS:
        p[f"{name}.weight"] = weights(rng, (D, C), np.float64)
        if qkv_bias:
            p[f"{name}.bias"] = weights(rng, (D,), np.float64)
    if out_proj:
        p["out_proj.weight"], p["out_proj.bias"] = weights(rng, (C, C), np.float64), weights(rng, (C,), np.float64)
    return p


def set_score_magnitude(x, p, n_heads, target, causal=True):
    """Scales W_query (and its bias) in place so that max |q k^T / sqrt(D)| over the visible pairs is `target`.

    Scores are linear in the query projection, so one factor sets their largest magnitude exactly.
    x: (B, T, C) float64; p: float64 projection params (C, C) or (D, C).
    """
    q = x @ p["W_query.weight"].T + p.get("W_query.bias", 0.0)
    k = x @ p["W_key.weight"].T + p.get("W_key.bias", 0.0)
    B, T, width = q.shape
    D = width // n_heads
    q = q.reshape(B, T, n_heads, D).transpose(0, 2, 1, 3)
    k = k.reshape(B, T, n_heads, D).transpose(0, 2, 1, 3)
    scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(D)                   # (B, H, T, T)
    if causal:
        scores = np.where(npatt.causal_mask(T), 0.0, scores)
    largest = float(np.abs(scores).max(initial=0.0))
    if largest > 1e-300:
        p["W_query.weight"] *= target / largest
        if "W_query.bias" in p:
            p["W_query.bias"] *= target / largest


def cast(p, dtype):
    return {name: value.astype(dtype) for name, value in p.items()}


def load_into(module, p):
    """Copies a NumPy param dict into a torch module under the same names (its state_dict keys)."""
    module.load_state_dict({name: to_torch(value) for name, value in p.items()})
    return module


def attention_term_magnitudes(x, p, n_heads, dout, *, causal=True, keep_mask=None, drop_rate=0.0):
    """The magnitude of the terms every attention output and gradient sums: the forward and backward run on
    absolute values (|a| |b| for each product, softmax's two backward terms kept apart, not cancelled).

    Any correct order of summation errs by at most ~(number of terms) * eps * this (the standard rounding
    bound), so it is the magnitude to measure against where a result cancels far below its terms: the
    key-bias gradient (exactly 0: softmax ignores a shift shared by a query's scores), the query/key
    gradients of a one-position or saturated softmax (exactly 0 or nearly; SDPA's kernel returns rounding
    noise there), tiny scores. Used for float64 only (see attention_floors).
    x: (B, T, C); p: the layer's params (out_proj optional); dout: (B, T, width) -> {"out", "x", name: magnitude}
    """
    x, dout = x.astype(np.float64), np.abs(dout.astype(np.float64))
    p = {name: value.astype(np.float64) for name, value in p.items()}
    ax, B, T = np.abs(x), x.shape[0], x.shape[1]

    def split(t):                                                     # (B, T, H*D) -> (B, H, T, D)
        return t.reshape(B, T, n_heads, -1).transpose(0, 2, 1, 3)

    def merge(t):                                                     # (B, H, T, D) -> (B, T, H*D)
        return t.transpose(0, 2, 1, 3).reshape(B, T, -1)

    proj, proj_abs = {}, {}
    for name in PROJECTIONS:
        weight, bias = p[f"{name}.weight"], p.get(f"{name}.bias")
        proj[name] = split(x @ weight.T + (0.0 if bias is None else bias))
        proj_abs[name] = split(ax @ np.abs(weight).T + (0.0 if bias is None else np.abs(bias)))
    q, k = proj["W_query"], proj["W_key"]
    scale = 1.0 / math.sqrt(q.shape[-1])
    scores = q @ k.transpose(0, 1, 3, 2) * scale
    if causal:
        scores = np.where(npatt.causal_mask(T), -np.inf, scores)
    y = np.exp(scores - scores.max(-1, keepdims=True))
    y /= y.sum(-1, keepdims=True)                                     # (B, H, T, T), >= 0
    keep = 1.0 if keep_mask is None else keep_mask / (1.0 - drop_rate)
    dropped = y * keep
    context_abs = merge(dropped @ proj_abs["W_value"])                # (B, T, C) or (B, T, D)
    magnitudes = {}
    if "out_proj.weight" in p:
        magnitudes["out"] = context_abs @ np.abs(p["out_proj.weight"]).T + np.abs(p["out_proj.bias"])
        dout2d, context2d = dout.reshape(B * T, -1), context_abs.reshape(B * T, -1)
        magnitudes["out_proj.weight"] = dout2d.T @ context2d
        magnitudes["out_proj.bias"] = dout.reshape(-1, dout.shape[-1]).sum(0)
        dcontext = split(dout @ np.abs(p["out_proj.weight"]))
    else:
        magnitudes["out"] = context_abs
        dcontext = split(dout)
    dv = dropped.transpose(0, 1, 3, 2) @ dcontext
    dweights = (dcontext @ proj_abs["W_value"].transpose(0, 1, 3, 2)) * keep
    dscores = (y * dweights + y * (dweights * y).sum(-1, keepdims=True)) * scale
    dq = dscores @ proj_abs["W_key"]
    dk = dscores.transpose(0, 1, 3, 2) @ proj_abs["W_query"]
    dx = 0.0
    for name, d in (("W_query", dq), ("W_key", dk), ("W_value", dv)):
        d2 = merge(d).reshape(B * T, -1)
        magnitudes[f"{name}.weight"] = d2.T @ ax.reshape(B * T, -1)
        if f"{name}.bias" in p:
            magnitudes[f"{name}.bias"] = d2.sum(0)
        dx = dx + merge(d) @ np.abs(p[f"{name}.weight"])
    magnitudes["x"] = dx
    return {name: float(np.max(value, initial=0.0)) for name, value in magnitudes.items()}


# float32: the rounding noise of a sum of n terms is ~sqrt(n) * 6e-8 * their magnitude; measured against
# rtol 1e-5 that is a few % of the terms. So 3% of the terms is the float32 floor: it covers the gradients
# that are exactly 0 (all keys tied: the query gradient; the key bias) while a planted 1e-4 bug still shows.
FLOAT32_TERMS_SHARE = 0.03


def attention_floors(dtype, term_magnitudes, key_bias_terms):
    """The floors of an attention check (see assert_close).

    float64: the rigorous bound attention_term_magnitudes; a worst case, it can exceed the typical rounding
    by 100x, which costs nothing at 1e-10 (1e6 below any planted bug). float32: that much slack would hide
    a 1e-4 bug, so there FLOAT32_TERMS_SHARE of it, the float64 reference run (assert_close's `reference`)
    measures the rest of the rounding, and the key bias, pure rounding noise on both sides, is measured
    against the terms it sums (sum |dk|).
    """
    terms = term_magnitudes()
    if np.dtype(dtype) == np.float64:
        return terms
    floors = {name: FLOAT32_TERMS_SHARE * value for name, value in terms.items()}
    for name, value in key_bias_terms.items():
        floors[name] = max(floors.get(name, 0.0), value)
    return floors


# --------------------------------------------------------------------------------------------------------
def simple_attention_dx_terms(x, dout):
    """max of the terms dx = weights^T dout + (dscores + dscores^T) x sums, run on absolute values (softmax's
    two backward terms kept apart): the magnitude to measure dx against where it cancels (a saturated or
    uniform softmax row: dscores ~ 0; see attention_term_magnitudes). x, dout: (T, C)."""
    x, dout = x.astype(np.float64), dout.astype(np.float64)
    scores = x @ x.T
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    dweights = np.abs(dout) @ np.abs(x).T
    dscores = weights * dweights + weights * (weights * dweights).sum(-1, keepdims=True)
    dx = weights.T @ np.abs(dout) + (dscores + dscores.T) @ np.abs(x)
    return float(dx.max(initial=0.0))


def check_simple_attention(T, C, recipe, dtype, score):
    x = make_array(recipe, (T, C), np.float64)
    largest = float(np.abs(x @ x.T).max(initial=0.0))
    if largest > 1e-300:
        x *= math.sqrt(score / largest)                                    # scores are quadratic in x
    x = x.astype(dtype)
    out, cache = npatt.simple_attention_forward(x)
    assert np.array_equal(out, npatt.simple_attention(x))
    dout = (make_array(recipe, out.shape, np.float64, salt=2) / recipe.scale).astype(dtype)
    dx = npatt.simple_attention_backward(dout, cache)
    assert out.dtype == dx.dtype == dtype

    def run(tdtype):
        x_t = to_torch(x).to(tdtype).requires_grad_()
        out_t = tatt.simple_attention(x_t)
        out_t.backward(to_torch(dout).to(tdtype))
        return {"out": out_t, "x": x_t.grad}

    expected, reference = torch_with_reference(run, dtype)
    share = 1.0 if dtype == np.float64 else FLOAT32_TERMS_SHARE
    # each output is a weighted mean of rows of x (weights >= 0, summing to 1): max |x| bounds its terms
    floors = {"out": float(np.abs(x).max(initial=0.0)) * share, "x": simple_attention_dx_terms(x, dout) * share}
    for key, name in (("out", "simple_attention out"), ("x", "simple_attention dx")):
        assert_close({"out": out, "x": dx}[key], expected[key], floor=floors[key],
                     reference=reference and reference[key], name=name)


def check_single_head(B, T, C, D, causal, qkv_bias, drop_rate, recipe, dtype, score, mask_seed=0):
    """npgpt single_head_attention forward/backward vs the torch twin; returns the npgpt gradients."""
    rng = recipe.rng(1)
    x64 = make_array(recipe, (B, T, C), np.float64)
    p64 = projection_params(rng, C, D, qkv_bias, np.float64)
    set_score_magnitude(x64, p64, 1, score, causal=causal)
    x, p = x64.astype(dtype), cast(p64, dtype)
    mask = npdrop.dropout_mask((B, T, T), drop_rate, np.random.default_rng(mask_seed)) if drop_rate else None
    out, cache = npatt.single_head_attention_forward(x, p, causal=causal, drop_rate=drop_rate, dropout_mask=mask)
    dout = (make_array(recipe, out.shape, np.float64, salt=2) / recipe.scale).astype(dtype)
    dx, grads = npatt.single_head_attention_backward(dout, cache)
    assert out.dtype == dx.dtype == dtype and sorted(grads) == sorted(p)

    def run(tdtype):
        if causal:
            module = tatt.CausalAttention(C, D, context_length=T, drop_rate=drop_rate, qkv_bias=qkv_bias)
        else:
            module = tatt.SelfAttentionV2(C, D, qkv_bias=qkv_bias)
        return run_module(load_into(module.to(tdtype), p), x, dout, mask, tdtype, takes_mask=causal)

    (expected, key_bias_terms), reference = torch_with_reference(run, dtype)
    floors = attention_floors(dtype, lambda: attention_term_magnitudes(
        x, p, 1, dout, causal=causal, drop_rate=drop_rate, keep_mask=None if mask is None else mask[:, None]),
        key_bias_terms)
    ours = {"out": out, "x": dx, **grads}
    assert_grads_close(ours, expected, references=reference and reference[0], floors=floors, prefix="single-head ")

    if not causal and not qkv_bias:
        # SelfAttentionV1 keeps raw (D, C) matrices as Parameters named W_query, W_key, W_value.
        def run_v1(tdtype):
            v1 = tatt.SelfAttentionV1(C, D).to(tdtype)
            v1.load_state_dict({name: to_torch(p[f"{name}.weight"]) for name in PROJECTIONS})
            results, _ = run_module(v1, x, dout, None, tdtype, takes_mask=False)
            return {f"{key}.weight" if key in PROJECTIONS else key: value for key, value in results.items()}

        expected_v1, reference_v1 = torch_with_reference(run_v1, dtype)
        assert_grads_close(ours, expected_v1, references=reference_v1, floors=floors, prefix="SelfAttentionV1 ")
    return dx, grads


def run_module(module, x, dout, mask, tdtype, *, takes_mask=True):
    """Forward (train mode only with a keep-mask) and backward of a torch attention module in `tdtype`.

    Returns ({"out", "x", every parameter name: gradient}, {"W_key.bias": sum |dk|} (see KeyBiasFloors)).
    """
    module.train(mask is not None)
    key_bias_terms = KeyBiasFloors(module)
    x_t = to_torch(x).to(tdtype).requires_grad_()
    with fed_dropout_masks(module, [mask] if takes_mask and mask is not None else []):
        out = module(x_t)
    out.backward(to_torch(dout).to(tdtype))
    results = {"out": out, "x": x_t.grad}
    results.update({name: param.grad for name, param in module.named_parameters()})
    return results, key_bias_terms.floors()


@budget(25, thorough=240)
@given(T=st.integers(1, 16), C=st.integers(1, 48), recipe=values(), case=dtype_and_score())
def test_simple_attention(T, C, recipe, case):
    record_example()
    check_simple_attention(T, C, recipe, *case)


@budget(30)
@given(B=st.integers(1, 3), T=st.integers(1, 16), C=st.integers(1, 48), D=st.integers(1, 16),
       causal=st.booleans(), qkv_bias=st.booleans(), drop_rate=st.sampled_from([0.0, 0.0, 0.1, 0.5]),
       mask_seed=st.integers(0, 2**16), recipe=values(), case=dtype_and_score(), split=st.booleans())
def test_single_head_attention(B, T, C, D, causal, qkv_bias, drop_rate, mask_seed, recipe, case, split):
    record_example()
    dtype, score = case
    with causal_split(split):                        # unmasked weights must never be split (cache.causal False)
        check_single_head(B, T, C, D, causal, qkv_bias, drop_rate if causal else 0.0, recipe, dtype, score,
                          mask_seed)
