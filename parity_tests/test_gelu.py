"""GELU (tanh approximation): npgpt vs the written-out torch gelu and F.gelu(approximate="tanh")."""
import numpy as np
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import npgpt.gelu as npgelu
import torchgpt.gelu as tgelu
from parity_tests.conftest import (assert_close, budget, dtypes, make_array, record_example, to_torch,
                                   torch_with_reference, values)


def check_gelu(shape, recipe, dtype):
    x = make_array(recipe, shape, dtype)
    dout = make_array(recipe, shape, dtype, salt=2)
    out, cache = npgelu.gelu_forward(x)
    dx = npgelu.gelu_backward(dout, cache)
    assert out.dtype == dx.dtype == dtype
    def runner(gelu):
        def run(tdtype):
            x_t = to_torch(x).to(tdtype).requires_grad_()
            out_t = gelu(x_t)
            out_t.backward(to_torch(dout).to(tdtype))
            return {"out": out_t, "dx": x_t.grad}
        return run

    # float32: for x < 0, 1 + tanh(u) cancels (relative error ~1e-5 at x = -3 in any float32 formula,
    # F.gelu's too), so the float64 run measures torch's own rounding
    # For x << 0 both cancel to ~0 (1 + tanh u -> 0): measure them against their terms, 0.5 |x| (1 + |tanh u|)
    # and |dout| (0.5 (1 + |tanh u|) + 0.5 |x| (1 - tanh^2 u) du/dx), as computed in float64
    x64 = x.astype(np.float64)
    u = npgelu.SQRT_2_OVER_PI * (x64 + npgelu.GELU_CUBIC * x64 * x64 * x64)
    tanh_u = np.tanh(u)
    du_dx = npgelu.SQRT_2_OVER_PI * (1.0 + 3.0 * npgelu.GELU_CUBIC * x64 * x64)
    out_terms = float((0.5 * np.abs(x64) * (1.0 + np.abs(tanh_u))).max(initial=0.0))
    dx_terms = float((np.abs(dout) * (0.5 * (1.0 + np.abs(tanh_u)) + 0.5 * np.abs(x64) * (1.0 - tanh_u * tanh_u)
                                      * du_dx)).max(initial=0.0))
    for label, gelu in (("", tgelu.GELU()), (" vs F.gelu", lambda t: F.gelu(t, approximate="tanh"))):
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
