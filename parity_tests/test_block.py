"""The pre-LayerNorm transformer block: npgpt block_forward/backward vs torchgpt.TransformerBlock.

Dropout off, and on with identical masks: npgpt draws its three masks (attention weights, after attention,
after feed-forward) from a RecordingGenerator and torch is fed exactly those through fed_dropout_masks.
"""
import numpy as np
from hypothesis import example, given
from hypothesis import strategies as st

import npgpt.block as npblock
import torchgpt.block as tblock
from gptcore.config import GPTConfig
from parity_tests.conftest import (KeyBiasFloors, RecordingGenerator, Values, assert_grads_close, budget, dtypes,
                                   fed_dropout_masks, make_array, model_dims, record_example, to_torch,
                                   torch_with_reference, values, weights)
from gptcore.arch import block_param_shapes

DROP_RATES = [0.0, 0.0, 0.1, 0.5]


def block_params(config, rng, dtype):
    """One block's parameters under their in-block names; LayerNorm scales near 1, everything else N(0, 0.3)."""
    params = {}
    for name, shape in block_param_shapes(config).items():
        params[name] = weights(rng, shape, np.float64) + (1.0 if name.endswith(".scale") else 0.0)
    return {name: value.astype(dtype) for name, value in params.items()}


def check_block(B, T, C, H, qkv_bias, drop_rate, recipe, dtype, mask_seed=0):
    config = GPTConfig(vocab_size=1, context_length=T, emb_dim=C, n_heads=H, n_layers=1, drop_rate=drop_rate,
                       qkv_bias=qkv_bias)
    x = make_array(recipe, (B, T, C), dtype)
    p = block_params(config, recipe.rng(1), dtype)
    rng = RecordingGenerator(mask_seed)
    out, cache = npblock.block_forward(x, p, config, train=drop_rate > 0, rng=rng)
    masks = rng.keep_masks(drop_rate)
    assert len(masks) == (3 if drop_rate else 0)
    dout = (make_array(recipe, out.shape, np.float64, salt=2) / recipe.scale).astype(dtype)
    dx, grads = npblock.block_backward(dout, cache)
    assert out.dtype == dx.dtype == dtype and sorted(grads) == sorted(p)
    floors = {}

    def run(tdtype):
        module = tblock.TransformerBlock(config).to(tdtype)
        module.load_state_dict({name: to_torch(value) for name, value in p.items()})
        module.train(drop_rate > 0)
        keys = KeyBiasFloors(module)
        x_t = to_torch(x).to(tdtype).requires_grad_()
        with fed_dropout_masks(module, masks) as feed:
            out_t = module(x_t)
        assert feed.taken == len(masks)
        out_t.backward(to_torch(dout).to(tdtype))
        floors.update(keys.floors())
        return {"out": out_t, "x": x_t.grad, **{name: param.grad for name, param in module.named_parameters()}}

    # float64 too gets torch's sensitivity to one-ulp input changes added to its budget (nudge_float64): at
    # width 2 with values at 1e3 and exact ties (rows whose two entries are equal), dx is ill-conditioned:
    # measured, a one-ulp nudge of the inputs moves torch's own float64 dx by up to 1e-8 of its magnitude
    # (seed 1: 1.1e-9, NumPy's distance 3.0e-10), beyond the plain 1e-10.
    expected, reference = torch_with_reference(run, dtype, nudge_float64=True)
    assert_grads_close({"out": out, "x": dx, **grads}, expected, references=reference, floors=floors, prefix="block ")
    return dx, grads


@budget(30)
@given(dims=model_dims(), qkv_bias=st.booleans(), drop_rate=st.sampled_from(DROP_RATES),
       mask_seed=st.integers(0, 2**16), recipe=values(), dtype=dtypes)
# the thorough profile's counterexample (ill-conditioned dx, see check_block)
@example(dims=(2, 2, 2, 1), qkv_bias=True, drop_rate=0.0, mask_seed=1, recipe=Values(seed=1, scale=1000.0, ties=True),
         dtype=np.float64)
def test_block(dims, qkv_bias, drop_rate, mask_seed, recipe, dtype):
    record_example()
    B, T, C, H = dims
    check_block(B, T, C, H, qkv_bias, drop_rate, recipe, dtype, mask_seed)
