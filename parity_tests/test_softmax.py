"""Softmax along an axis: forward and backward, incl. logits of magnitude 1e3 and exact ties."""
import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st

import npgpt.softmax as npsm
import torchgpt.softmax as tsm
from parity_tests.conftest import (assert_close, budget, dtypes, make_array, record_example, to_torch, values)


def check_softmax(shape, axis, recipe, dtype):
    x = make_array(recipe, shape, dtype)
    dout = make_array(recipe, shape, dtype, salt=2) / recipe.scale
    dout = dout.astype(dtype)
    out, cache = npsm.softmax_forward(x, axis=axis)
    dx = npsm.softmax_backward(dout, cache)
    assert out.dtype == dx.dtype == dtype and np.isfinite(out).all()
    x_t = to_torch(x, requires_grad=True)
    out_t = tsm.softmax(x_t, axis=axis)
    out_t.backward(to_torch(dout))
    assert_close(out, out_t, name="softmax out")
    assert_close(out, torch.softmax(to_torch(x), dim=axis), name="softmax out vs torch.softmax")
    # dx = y * dout - y * sum(dout * y) cancels (to ~0 for a saturated row); measure it against its terms
    terms = np.abs(out * dout) + out * np.abs((out * dout).sum(axis=axis, keepdims=True))
    assert_close(dx, x_t.grad, floor=float(terms.max(initial=0.0)), name="softmax dx")


@budget(40)
@given(shape=st.tuples(st.integers(1, 3), st.integers(1, 16), st.integers(1, 48)), axis=st.sampled_from([-1, 1, 0]),
       recipe=values(), dtype=dtypes)
def test_softmax(shape, axis, recipe, dtype):
    record_example()
    check_softmax(shape, axis, recipe, dtype)
