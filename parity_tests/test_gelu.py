"""GELU (tanh approximation): npgpt vs the written-out torch gelu and F.gelu(approximate="tanh")."""
import numpy as np
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import npgpt.gelu as npgelu
import torchgpt.gelu as tgelu
from parity_tests.conftest import (assert_close, budget, dtypes, make_array, record_example, to_torch, values)


def check_gelu(shape, recipe, dtype):
    x = make_array(recipe, shape, dtype)
    dout = make_array(recipe, shape, dtype, salt=2)
    out, cache = npgelu.gelu_forward(x)
    dx = npgelu.gelu_backward(dout, cache)
    assert out.dtype == dx.dtype == dtype
    x_t = to_torch(x, requires_grad=True)
    out_t = tgelu.GELU()(x_t)
    out_t.backward(to_torch(dout))
    assert_close(out, out_t, name="gelu out")
    assert_close(dx, x_t.grad, name="gelu dx")
    x_f = to_torch(x, requires_grad=True)
    F.gelu(x_f, approximate="tanh").backward(to_torch(dout))
    assert_close(out, F.gelu(to_torch(x), approximate="tanh"), name="gelu out vs F.gelu")
    assert_close(dx, x_f.grad, name="gelu dx vs F.gelu")


@budget(40)
@given(shape=st.tuples(st.integers(1, 3), st.integers(1, 16), st.integers(1, 48)),
       recipe=values(scales=(1e-3, 1.0, 3.0, 10.0, 1e3)), dtype=dtypes)
def test_gelu(shape, recipe, dtype):
    record_example()
    check_gelu(shape, recipe, dtype)
