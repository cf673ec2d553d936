"""GELU (tanh approximation): npgpt vs torch's GELU module (F.gelu(approximate="tanh"), the models' path),
the written-out torchgpt.gelu.gelu, and a third oracle independent of both codes: the formula and its
derivative written out here in float64, with GPT-2's constants spelled out in this file.

    gelu(x)  = 0.5 x (1 + tanh u),   u = sqrt(2/pi) (x + 0.044715 x^3)
    gelu'(x) = 0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) sqrt(2/pi) (1 + 3 * 0.044715 x^2)
"""
import math

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

import npgpt.gelu as npgelu
import torchgpt.gelu as tgelu
from parity_tests.conftest import (assert_close, budget, dtypes, make_array, record_example, to_torch,
                                   torch_with_reference, values)

# GPT-2's GELU (Hendrycks & Gimpel's tanh approximation), written here, not imported
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
CUBIC = 0.044715


def gelu_float64(x, dout):
    """(out, dx, out_terms, dx_terms) of the written-out formula in float64.

    For x << 0, 1 + tanh u cancels to ~0 in any code: the terms are the magnitudes the results are measured
    against, 0.5 |x| (1 + |tanh u|) and |dout| (0.5 (1 + |tanh u|) + 0.5 |x| (1 - tanh^2 u) du/dx).
    """
    x, dout = np.asarray(x, np.float64), np.asarray(dout, np.float64)
    u = SQRT_2_OVER_PI * (x + CUBIC * x ** 3)
    tanh_u = np.tanh(u)
    du_dx = SQRT_2_OVER_PI * (1.0 + 3.0 * CUBIC * x ** 2)
    out = 0.5 * x * (1.0 + tanh_u)
    dx = dout * (0.5 * (1.0 + tanh_u) + 0.5 * x * (1.0 - tanh_u ** 2) * du_dx)
    out_terms = float((0.5 * np.abs(x) * (1.0 + np.abs(tanh_u))).max(initial=0.0))
    dx_terms = float((np.abs(dout) * (0.5 * (1.0 + np.abs(tanh_u)) + 0.5 * np.abs(x) * (1.0 - tanh_u ** 2)
                                      * du_dx)).max(initial=0.0))
    return out, dx, out_terms, dx_terms


def check_gelu(shape, recipe, dtype):
    x = make_array(recipe, shape, dtype)
    dout = make_array(recipe, shape, dtype, salt=2)
    out, cache = npgelu.gelu_forward(x)
    dx = npgelu.gelu_backward(dout, cache)
    assert out.dtype == dx.dtype == dtype
    exact_out, exact_dx, out_terms, dx_terms = gelu_float64(x, dout)

    # the independent oracle: in float64 the math must agree to 1e-10 of the terms; in float32 NumPy must be
    # within 1e-5 of them (float32 rounding of 1 + tanh u and the products: a few ulps, ~1e-7)
    assert_close(out, exact_out.astype(dtype) if dtype == np.float64 else exact_out, floor=out_terms,
                 rtol=1e-10 if dtype == np.float64 else 1e-5, name="gelu out vs the formula")
    assert_close(dx, exact_dx if dtype == np.float32 else exact_dx.astype(dtype), floor=dx_terms,
                 rtol=1e-10 if dtype == np.float64 else 1e-5, name="gelu dx vs the formula")

    def runner(gelu):
        def run(tdtype):
            x_t = to_torch(x).to(tdtype).requires_grad_()
            out_t = gelu(x_t)
            out_t.backward(to_torch(dout).to(tdtype))
            return {"out": out_t, "dx": x_t.grad}
        return run

    # float32: for x < 0, 1 + tanh(u) cancels (relative error ~1e-5 at x = -3 in any float32 formula,
    # F.gelu's too), so the float64 run measures torch's own rounding
    for label, gelu in (("", tgelu.GELU()), (" vs torchgpt.gelu.gelu", tgelu.gelu)):
        expected, reference = torch_with_reference(runner(gelu), dtype)
        reference = reference or {"out": None, "dx": None}
        assert_close(out, expected["out"], floor=out_terms, name=f"gelu out{label}", reference=reference["out"])
        assert_close(dx, expected["dx"], floor=dx_terms, name=f"gelu dx{label}", reference=reference["dx"])


@budget(40)
@given(shape=st.tuples(st.integers(1, 3), st.integers(1, 16), st.integers(1, 48)),
       recipe=values(scales=(1e-3, 1.0, 3.0, 10.0, 1e3)), dtype=dtypes)
def test_gelu(shape, recipe, dtype):
    record_example()
    check_gelu(shape, recipe, dtype)


def test_the_tanh_approximation_stays_within_its_documented_gap_of_the_exact_gelu():
    """The formula above is GPT-2's approximation of x Phi(x) = 0.5 x (1 + erf(x / sqrt 2)): a sanity check of
    the constants written here against math.erf (max gap ~4.7e-4 near |x| = 2; 1e-3 allowed)."""
    x = np.linspace(-8.0, 8.0, 4001)
    exact = np.array([0.5 * v * (1.0 + math.erf(v / math.sqrt(2.0))) for v in x])
    approx, _, _, _ = gelu_float64(x, np.ones_like(x))
    gap = np.abs(approx - exact).max()
    assert 1e-4 < gap < 1e-3, f"tanh GELU differs from exact GELU by {gap:.2e}"
