"""Feed-forward network fc2(gelu(fc1(x))), C -> 4C -> C: npgpt vs torchgpt.FeedForward, every gradient."""
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

import npgpt.feedforward as npff
import torchgpt.feedforward as tff
from gptcore.config import GPTConfig
from parity_tests.conftest import (assert_grads_close, budget, dtypes, make_array, record_example, to_torch,
                                   torch_with_reference, values, weights)


def feedforward_params(rng, C, dtype):
    F = 4 * C
    return {"fc1.weight": weights(rng, (F, C), dtype), "fc1.bias": weights(rng, (F,), dtype),
            "fc2.weight": weights(rng, (C, F), dtype), "fc2.bias": weights(rng, (C,), dtype)}


def check_feedforward(B, T, C, recipe, dtype):
    x = make_array(recipe, (B, T, C), dtype)
    p = feedforward_params(recipe.rng(1), C, dtype)
    out, cache = npff.feedforward_forward(x, p)
    dout = (make_array(recipe, out.shape, np.float64, salt=2) / recipe.scale).astype(dtype)
    dx, grads = npff.feedforward_backward(dout, cache)
    assert out.dtype == dx.dtype == dtype and sorted(grads) == sorted(p)

    def run(tdtype):
        module = tff.FeedForward(GPTConfig(vocab_size=1, context_length=1, emb_dim=C, n_heads=1, n_layers=1)).to(tdtype)
        module.load_state_dict({name: to_torch(value) for name, value in p.items()})   # widened exactly
        x_t = to_torch(x).to(tdtype).requires_grad_()
        out_t = module(x_t)
        out_t.backward(to_torch(dout).to(tdtype))
        return {"out": out_t, "x": x_t.grad, **{name: param.grad for name, param in module.named_parameters()}}

    expected, reference = torch_with_reference(run, dtype)
    assert_grads_close({"out": out, "x": dx, **grads}, expected, references=reference, prefix="feedforward ")
    return dx, grads


@budget(30)
@given(B=st.integers(1, 3), T=st.integers(1, 16), C=st.integers(1, 48), recipe=values(), dtype=dtypes)
def test_feedforward(B, T, C, recipe, dtype):
    record_example()
    check_feedforward(B, T, C, recipe, dtype)
