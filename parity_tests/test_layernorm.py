"""LayerNorm (eps 1e-5, biased variance): out, dx, dscale, dshift, incl. large magnitudes and constant rows."""
import numpy as np
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import npgpt.layernorm as npln
import torchgpt.layernorm as tln
from parity_tests.conftest import (assert_close, assert_matches_finite_differences, budget, dtypes, make_array,
                                   Values, record_example, to_torch, torch_with_reference, values, weights)


def check_layernorm(B, T, C, recipe, dtype, x=None):
    """npgpt vs torchgpt.LayerNorm (F.layer_norm); x defaults to the recipe's values."""
    rng = recipe.rng(1)
    x = make_array(recipe, (B, T, C), dtype) if x is None else x
    scale = (1.0 + weights(rng, (C,), np.float64)).astype(dtype)
    shift = weights(rng, (C,), dtype)
    dout = make_array(recipe, (B, T, C), dtype, salt=2) / recipe.scale    # upstream grads of order 1
    dout = dout.astype(dtype)
    out, cache = npln.layernorm_forward(x, scale, shift)
    dx, dscale, dshift = npln.layernorm_backward(dout, cache)
    assert out.dtype == dx.dtype == dscale.dtype == dtype

    def run(tdtype):
        norm = tln.LayerNorm(C).to(tdtype)
        with torch.no_grad():
            norm.scale.copy_(to_torch(scale))
            norm.shift.copy_(to_torch(shift))
        x_t = to_torch(x).to(tdtype).requires_grad_()
        out_t = norm(x_t)
        out_t.backward(to_torch(dout).to(tdtype))
        return {"out": out_t, "dx": x_t.grad, "dscale": norm.scale.grad, "dshift": norm.shift.grad}

    # float32: the float64 run measures torch's own rounding (a constant row of 2000s: torch's float32
    # variance is not exactly 0, and with eps = 1e-5 that moves rstd by ~1e-3)
    expected, reference = torch_with_reference(run, dtype)
    reference = reference or {"out": None, "dx": None, "dscale": None, "dshift": None}
    # Magnitudes the roundoff is measured against: the terms each gradient sums, not its (possibly
    # cancelled) result. dx = rstd * (dxhat - mean(dxhat) - xhat mean(dxhat xhat)) cancels to ~0 when
    # C = 2 or rows are constant, so its scale is rstd * max |dout * scale|; dscale = sum_rows dout * xhat
    # with |xhat| = O(1) has scale max_c sum_rows |dout|.
    rstd = cache.rstd
    dx_scale = float(np.max(rstd)) * float(np.abs(dout * scale).max(initial=0.0))
    sum_scale = float(np.abs(dout).reshape(-1, C).sum(axis=0).max(initial=0.0))
    assert_close(out, expected["out"], name="layernorm out", reference=reference["out"])
    assert_close(dx, expected["dx"], floor=dx_scale, name="layernorm dx", reference=reference["dx"])
    for name, value in (("dscale", dscale), ("dshift", dshift)):
        assert_close(value, expected[name], floor=sum_scale, name=f"layernorm {name}", reference=reference[name])
    return x, scale, shift, dout, dx


@budget(40)
@given(B=st.integers(1, 3), T=st.integers(1, 16), C=st.integers(2, 48), recipe=values(), dtype=dtypes)
def test_layernorm(B, T, C, recipe, dtype):
    record_example()
    check_layernorm(B, T, C, recipe, dtype)


@budget(25, thorough=240)
@given(B=st.integers(1, 3), T=st.integers(1, 16), C=st.integers(2, 48), recipe=values())
def test_written_out_layer_norm_equals_fused(B, T, C, recipe):
    record_example()
    x = to_torch(make_array(recipe, (B, T, C), np.float64))
    scale, shift = to_torch(weights(recipe.rng(3), (C,), np.float64)), to_torch(weights(recipe.rng(4), (C,), np.float64))
    assert_close(tln.layernorm(x, scale, shift), F.layer_norm(x, (C,), scale, shift, 1e-5), name="layernorm vs F")


def test_constant_rows():
    """Every entry equal: var = 0, xhat = 0, out = shift; gradients finite in both."""
    record_example()
    x = np.full((2, 3, 8), 7.5)
    out, cache = npln.layernorm_forward(x, np.ones(8), np.arange(8.0))
    assert_close(out, np.broadcast_to(np.arange(8.0), x.shape), name="constant row out")
    check_layernorm(2, 3, 8, Values(seed=0, scale=1.0, ties=True), np.float64, x=x)


@budget(25, thorough=80)
@given(recipe=values(scales=(1.0, 1e3)))
def test_layernorm_finite_differences(recipe):
    record_example()
    x, scale, shift, dout, dx = check_layernorm(2, 3, 6, recipe, np.float64)
    loss = lambda: float((npln.layernorm_forward(x, scale, shift)[0] * dout).sum())
    assert_matches_finite_differences(loss, x, dx, name="layernorm dx", rtol=1e-5)
