"""RMSNorm (Llama): out, dx, dscale against torchgpt.RMSNorm's autograd; finite differences; a planted bug
(the backward without its mean term) must be caught."""
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import npgpt.rmsnorm as nprms
import torchgpt.rmsnorm as trms
from parity_tests.conftest import (Values, assert_close, assert_matches_finite_differences, budget, dtypes,
                                   make_array, planted_bug, record_example, to_torch, torch_with_reference,
                                   values, weights)

EPS = st.sampled_from([1e-5, 1e-6])


def check_rmsnorm(B, T, C, recipe, dtype, eps=1e-5):
    """npgpt vs torchgpt.RMSNorm on the recipe's values; returns what the finite differences need."""
    rng = recipe.rng(1)
    x = make_array(recipe, (B, T, C), dtype)
    scale = (1.0 + weights(rng, (C,), np.float64)).astype(dtype)
    dout = (make_array(recipe, (B, T, C), np.float64, salt=2) / recipe.scale).astype(dtype)   # order 1
    out, cache = nprms.rmsnorm_forward(x, scale, eps)
    dx, dscale = nprms.rmsnorm_backward(dout, cache)
    assert out.dtype == dx.dtype == dscale.dtype == dtype

    def run(tdtype):
        norm = trms.RMSNorm(C, eps).to(tdtype)
        with torch.no_grad():
            norm.scale.copy_(to_torch(scale))
        x_t = to_torch(x).to(tdtype).requires_grad_()
        out_t = norm(x_t)
        out_t.backward(to_torch(dout).to(tdtype))
        return {"out": out_t, "dx": x_t.grad, "dscale": norm.scale.grad}

    expected, reference = torch_with_reference(run, dtype)
    reference = reference or {"out": None, "dx": None, "dscale": None}
    # Magnitudes of the terms each gradient sums (dx cancels to ~0 for C = 1 or rows along one direction):
    # dx's are rstd * |dout * scale|, dscale's sum_rows |dout| (|xhat| <= sqrt(C)).
    dx_scale = float(np.max(cache.rstd)) * float(np.abs(dout * scale).max(initial=0.0))
    sum_scale = float(np.abs(dout).reshape(-1, C).sum(axis=0).max(initial=0.0))
    assert_close(out, expected["out"], name="rmsnorm out", reference=reference["out"])
    assert_close(dx, expected["dx"], floor=dx_scale, name="rmsnorm dx", reference=reference["dx"])
    assert_close(dscale, expected["dscale"], floor=sum_scale, name="rmsnorm dscale", reference=reference["dscale"])
    return x, scale, dout, dx, dscale


@budget(40)
@given(B=st.integers(1, 3), T=st.integers(1, 16), C=st.integers(1, 48), recipe=values(), dtype=dtypes, eps=EPS)
def test_rmsnorm(B, T, C, recipe, dtype, eps):
    record_example()
    check_rmsnorm(B, T, C, recipe, dtype, eps)


def test_rmsnorm_known_values():
    """By hand: x = (3, 4), mean(x^2) = 12.5, eps 0 -> x / sqrt(12.5); a zero row stays 0 (rstd = 1/sqrt(eps))."""
    record_example()
    out, _ = nprms.rmsnorm_forward(np.array([[3.0, 4.0], [0.0, 0.0]]), np.array([1.0, 2.0]), eps=1e-300)
    assert_close(out, np.array([[3.0 / np.sqrt(12.5), 8.0 / np.sqrt(12.5)], [0.0, 0.0]]), name="rmsnorm by hand")


@budget(5)
@given(recipe=values(scales=(1.0, 1e3)))
def test_rmsnorm_finite_differences(recipe):
    record_example()
    x, scale, dout, dx, dscale = check_rmsnorm(2, 3, 6, recipe, np.float64)
    loss = lambda: float((nprms.rmsnorm_forward(x, scale)[0] * dout).sum())
    assert_matches_finite_differences(loss, x, dx, name="rmsnorm dx", rtol=1e-5)
    assert_matches_finite_differences(loss, scale, dscale, name="rmsnorm dscale", rtol=1e-5)


def backward_without_mean_term(dout, cache):
    """dx = rstd * dxhat: the mean(dxhat * xhat) term (the derivative of rstd) forgotten."""
    return dout * cache.scale * cache.rstd, (dout * cache.xhat).sum(axis=tuple(range(dout.ndim - 1)))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_planted_bug_rmsnorm_backward_without_mean_term(dtype, monkeypatch):
    record_example()
    plain = Values(seed=1, scale=1.0, ties=False)
    check_rmsnorm(2, 3, 8, plain, dtype)
    monkeypatch.setattr(nprms, "rmsnorm_backward", backward_without_mean_term)
    with planted_bug("rmsnorm backward without its mean term"):
        check_rmsnorm(2, 3, 8, plain, dtype)
