"""Feed-forward network fc2(gelu(fc1(x))), C -> 4C -> C: npgpt vs torchgpt.FeedForward, every gradient."""
import numpy as np
from hypothesis import example, given
from hypothesis import strategies as st

import npgpt.feedforward as npff
import torchgpt.feedforward as tff
from gptcore.config import GPTConfig
from parity_tests.test_gelu import gelu_float64
from parity_tests.conftest import (Values, assert_grads_close, budget, dtypes, make_array, record_example, to_torch,
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
    assert_grads_close({"out": out, "x": dx, **grads}, expected, references=reference, prefix="feedforward ",
                       floors=weight_gradient_terms(x, dout, p))
    return dx, grads


def weight_gradient_terms(x, dout, p) -> dict:
    """The magnitudes the weight and bias gradients sum, in float64: |dh|^T |x| and sum |dh| for fc1 (dh the
    gradient at fc1's output), |dout|^T |gelu(h)| and sum |dout| for fc2. A gradient summed over positions
    can cancel to far below its terms (the thorough profile: C = 1, three positions with tied inputs at 10,
    fc1.weight 3.4e-4 from terms ~1e-2, float32 rounding 1.2e-7), and then carries their rounding noise."""
    x64, dout64 = (np.asarray(a, np.float64).reshape(-1, a.shape[-1]) for a in (x, dout))
    w1, b1, w2 = (np.asarray(p[name], np.float64) for name in ("fc1.weight", "fc1.bias", "fc2.weight"))
    h = x64 @ w1.T + b1
    dgelu = dout64 @ w2                                          # gradient at GELU's output
    g, dh, _, _ = gelu_float64(h, dgelu)
    return {"fc1.weight": float((np.abs(dh).T @ np.abs(x64)).max(initial=0.0)),
            "fc1.bias": float(np.abs(dh).sum(0).max(initial=0.0)),
            "fc2.weight": float((np.abs(dout64).T @ np.abs(g)).max(initial=0.0)),
            "fc2.bias": float(np.abs(dout64).sum(0).max(initial=0.0))}


@budget(30)
@given(B=st.integers(1, 3), T=st.integers(1, 16), C=st.integers(1, 48), recipe=values(), dtype=dtypes)
@example(B=1, T=3, C=1, recipe=Values(seed=120486, scale=10.0, ties=True), dtype=np.float32)   # cancelled fc1.weight
def test_feedforward(B, T, C, recipe, dtype):
    record_example()
    check_feedforward(B, T, C, recipe, dtype)
