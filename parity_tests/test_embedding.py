"""Token and positional embeddings: lookup forward and scatter-add backward (repeated ids on purpose)."""
import torch
from hypothesis import given
from hypothesis import strategies as st

import npgpt.embedding as npemb
import torchgpt.embedding as temb
from parity_tests.conftest import (assert_close, budget, dtypes, make_array, record_example, to_torch, values,
                                   weights)


def check_embedding(B, T, C, V, recipe, dtype):
    rng = recipe.rng(1)
    weight = weights(rng, (V, C), dtype)
    idx = rng.integers(0, V, size=(B, T))            # V small -> ids repeat, the scatter must ADD
    dout = make_array(recipe, (B, T, C), dtype)
    out, cache = npemb.embedding_forward(weight, idx)
    dweight = npemb.embedding_backward(dout, cache)
    weight_t = to_torch(weight, requires_grad=True)
    out_t = temb.embedding(weight_t, torch.from_numpy(idx))
    out_t.backward(to_torch(dout))
    assert out.dtype == dweight.dtype == dtype
    assert_close(out, out_t, name="embedding out")
    assert_close(dweight, weight_t.grad, name="embedding dweight")
    # nn.Embedding (what GPTModel uses) is the same lookup
    module = torch.nn.Embedding(V, C).to(weight_t.dtype)
    with torch.no_grad():
        module.weight.copy_(weight_t)
    module(torch.from_numpy(idx)).backward(to_torch(dout))
    assert_close(dweight, module.weight.grad, name="nn.Embedding dweight")


def check_pos_embedding(B, T, C, T_max, recipe, dtype):
    weight = weights(recipe.rng(2), (T_max, C), dtype)
    dout = make_array(recipe, (B, T, C), dtype)
    out, cache = npemb.pos_embedding_forward(weight, T)
    dweight = npemb.pos_embedding_backward(dout, cache)
    weight_t = to_torch(weight, requires_grad=True)
    out_t = temb.pos_embedding(weight_t, T).expand(B, T, C)     # broadcast over the batch, as in the model
    out_t.backward(to_torch(dout))
    assert_close(out, out_t[0], name="pos_embedding out")
    assert_close(dweight, weight_t.grad, name="pos_embedding dweight")


@budget(30)
@given(B=st.integers(1, 3), T=st.integers(1, 16), C=st.integers(1, 48), V=st.integers(1, 12),
       recipe=values(), dtype=dtypes)
def test_embedding(B, T, C, V, recipe, dtype):
    record_example()
    check_embedding(B, T, C, V, recipe, dtype)


@budget(30)
@given(B=st.integers(1, 3), T=st.integers(1, 16), C=st.integers(1, 48), extra=st.integers(0, 5),
       recipe=values(), dtype=dtypes)
def test_pos_embedding(B, T, C, extra, recipe, dtype):
    record_example()
    check_pos_embedding(B, T, C, T + extra, recipe, dtype)
