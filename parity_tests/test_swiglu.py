"""SwiGLU feed-forward down(silu(gate(x)) * up(x)) (Llama): npgpt vs torchgpt.SwiGLU, every gradient; SiLU
against torch's F.silu at large |g|; finite differences; a planted bug (no silu' term) must be caught."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import npgpt.swiglu as npsw
import torchgpt.swiglu as tsw
from gptcore.config import GPTConfig
from parity_tests.conftest import (Values, assert_close, assert_grads_close, assert_matches_finite_differences,
                                   budget, dtypes, make_array, planted_bug, record_example, to_torch,
                                   torch_with_reference, values, weights)


def swiglu_params(rng, C, F_, dtype):
    return {"gate.weight": weights(rng, (F_, C), dtype), "up.weight": weights(rng, (F_, C), dtype),
            "down.weight": weights(rng, (C, F_), dtype)}


def check_swiglu(B, T, C, F_, recipe, dtype):
    x = make_array(recipe, (B, T, C), dtype)
    p = swiglu_params(recipe.rng(1), C, F_, dtype)
    out, cache = npsw.swiglu_forward(x, p)
    dout = (make_array(recipe, out.shape, np.float64, salt=2) / recipe.scale).astype(dtype)
    dx, grads = npsw.swiglu_backward(dout, cache)
    assert out.dtype == dx.dtype == dtype and sorted(grads) == sorted(p)
    assert all(g.dtype == dtype for g in grads.values())

    def run(tdtype):
        # SwiGLU reads only emb_dim and ff_dim: a one-head config of width C (any C, odd too) serves
        config = GPTConfig(vocab_size=1, context_length=1, emb_dim=C, n_heads=1, n_layers=1, ff_dim=F_)
        module = tsw.SwiGLU(config).to(tdtype)
        module.load_state_dict({name: to_torch(value) for name, value in p.items()})
        x_t = to_torch(x).to(tdtype).requires_grad_()
        out_t = module(x_t)
        out_t.backward(to_torch(dout).to(tdtype))
        return {"out": out_t, "x": x_t.grad, **{name: param.grad for name, param in module.named_parameters()}}

    expected, reference = torch_with_reference(run, dtype)
    assert_grads_close({"out": out, "x": dx, **grads}, expected, references=reference, prefix="swiglu ")
    return x, p, dout, dx, grads


@budget(30)
@given(B=st.integers(1, 3), T=st.integers(1, 16), C=st.integers(1, 48), F_=st.integers(1, 64), recipe=values(),
       dtype=dtypes)
def test_swiglu(B, T, C, F_, recipe, dtype):
    record_example()
    check_swiglu(B, T, C, F_, recipe, dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_silu_matches_torch_far_out(dtype):
    """Large |g| (exp would overflow in a naive sigmoid): silu and its derivative against torch, no warning."""
    record_example()
    g = np.array([-1e4, -100.0, -30.0, -1.0, -1e-8, 0.0, 1e-8, 1.0, 30.0, 100.0, 1e4], dtype=dtype)
    out, cache = npsw.silu_forward(g)
    dg = npsw.silu_backward(np.ones_like(g), cache)
    assert out.dtype == dg.dtype == dtype
    g_t = to_torch(g, requires_grad=True)
    out_t = F.silu(g_t)
    out_t.sum().backward()
    assert_close(out, out_t, floor=1.0, name="silu far out")
    assert_close(dg, g_t.grad, floor=1.0, name="silu' far out")


@budget(5)
@given(recipe=values(scales=(1.0, 10.0)))
def test_swiglu_finite_differences(recipe):
    record_example()
    x, p, dout, dx, grads = check_swiglu(2, 3, 6, 10, recipe, np.float64)
    loss = lambda: float((npsw.swiglu_forward(x, p)[0] * dout).sum())
    assert_matches_finite_differences(loss, x, dx, name="swiglu dx", rtol=1e-5)
    for name in p:
        assert_matches_finite_differences(loss, p[name], grads[name], name=f"swiglu {name}", rtol=1e-5)


def silu_backward_without_its_derivative(dout, g, sig, out):
    """dg = dout * sigmoid(g): the g * sig * (1 - sig) part of silu' forgotten (the block helper that
    silu_backward and swiglu_backward's fused gate both use)."""
    np.multiply(dout, sig, out=out)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_planted_bug_swiglu_backward_without_silu_prime(dtype, monkeypatch):
    record_example()
    plain = Values(seed=1, scale=1.0, ties=False)
    check_swiglu(2, 3, 8, 12, plain, dtype)
    monkeypatch.setattr(npsw, "_silu_backward_into", silu_backward_without_its_derivative)
    with planted_bug("swiglu backward without the silu' term"):
        check_swiglu(2, 3, 8, 12, plain, dtype)


def test_function_form_equals_module():
    record_example()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 4))
    p = swiglu_params(rng, 4, 6, np.float64)
    out, _ = npsw.swiglu_forward(x, p)
    assert_close(tsw.swiglu(to_torch(x), *(to_torch(p[k]) for k in ("gate.weight", "up.weight", "down.weight"))),
                 out, name="swiglu function form")
    assert torch.is_grad_enabled()


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_sigmoid_relative_accuracy_and_its_limits(dtype):
    """sigmoid = 1 / (1 + exp(-g)) with exp's overflow silenced: relative error of a few ulp wherever the
    value is a normal number (a cancelling form would lose it for negative g), exactly 0 and 1 far out, and
    the same values however the blocks fall (more elements than one SILU_BLOCK)."""
    tiny = np.finfo(dtype).tiny
    g = np.concatenate([np.linspace(-80.0, 80.0, npsw.SILU_BLOCK + 7), [-1e4, -1e3, 1e3, 1e4]]).astype(dtype)
    s = npsw.sigmoid(g)
    assert s.dtype == dtype
    exact = 1.0 / (1.0 + np.exp(-g.astype(np.longdouble)))
    normal = exact > tiny
    assert np.all(np.abs(s[normal] - exact[normal]) <= 4 * np.finfo(dtype).eps * exact[normal])
    assert np.array_equal(s[-4:], np.array([0.0, 0.0, 1.0, 1.0], dtype=dtype))
    assert np.array_equal(npsw.sigmoid(g[:100]), s[:100])
