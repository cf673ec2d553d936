"""Linear layer y = x W^T + b: forward and (dx, dW, db), with and without bias."""
import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st

import npgpt.linear as nplin
import torchgpt.linear as tlin
from parity_tests.conftest import (assert_close, assert_matches_finite_differences, budget, dtypes, make_array,
                                   record_example, to_torch, values, weights)


def check_linear(B, T, n_in, n_out, with_bias, recipe, dtype):
    rng = recipe.rng(1)
    x = make_array(recipe, (B, T, n_in), dtype)
    weight = weights(rng, (n_out, n_in), dtype)
    bias = weights(rng, (n_out,), dtype) if with_bias else None
    dout = make_array(recipe, (B, T, n_out), dtype, salt=2)
    out, cache = nplin.linear_forward(x, weight, bias)
    dx, dweight, dbias = nplin.linear_backward(dout, cache)
    layer = tlin.Linear(n_in, n_out, bias=with_bias).to(torch.float64 if dtype == np.float64 else torch.float32)
    with torch.no_grad():
        layer.weight.copy_(to_torch(weight))
        if with_bias:
            layer.bias.copy_(to_torch(bias))
    x_t = to_torch(x, requires_grad=True)
    out_t = layer(x_t)
    out_t.backward(to_torch(dout))
    assert out.dtype == dx.dtype == dweight.dtype == dtype
    # Each result measured against its terms (the same products on absolute values): tied values can cancel a
    # sum over positions to rounding noise (dbias = sum dout)
    ax, ad, aw = (np.abs(a.astype(np.float64)).reshape(-1, a.shape[-1]) for a in (x, dout, weight))
    floor = {"out": (ax @ aw.T).max(initial=0.0) + (0.0 if bias is None else np.abs(bias).max(initial=0.0)),
             "dx": (ad @ aw).max(initial=0.0), "dweight": (ad.T @ ax).max(initial=0.0), "dbias": ad.sum(0).max()}
    assert_close(out, out_t, floor=floor["out"], name="linear out")
    assert_close(out, tlin.linear(x_t, layer.weight, layer.bias), floor=floor["out"], name="functional linear out")
    assert_close(dx, x_t.grad, floor=floor["dx"], name="linear dx")
    assert_close(dweight, layer.weight.grad, floor=floor["dweight"], name="linear dweight")
    if with_bias:
        assert_close(dbias, layer.bias.grad, floor=floor["dbias"], name="linear dbias")
    else:
        assert dbias is None
    return x, weight, bias, dout, dweight


@budget(30)
@given(B=st.integers(1, 3), T=st.integers(1, 16), n_in=st.integers(1, 48), n_out=st.integers(1, 48),
       with_bias=st.booleans(), recipe=values(), dtype=dtypes)
def test_linear(B, T, n_in, n_out, with_bias, recipe, dtype):
    record_example()
    check_linear(B, T, n_in, n_out, with_bias, recipe, dtype)


@budget(25, thorough=80)
@given(with_bias=st.booleans(), recipe=values(scales=(1.0,)))
def test_linear_finite_differences(with_bias, recipe):
    record_example()
    x, weight, bias, dout, dweight = check_linear(2, 3, 5, 4, with_bias, recipe, np.float64)
    loss = lambda: float((nplin.linear_forward(x, weight, bias)[0] * dout).sum())
    assert_matches_finite_differences(loss, weight, dweight, name="linear dweight")
