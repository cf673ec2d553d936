"""decoding_layout: the weights a batch-1 decoding step reads fastest stored transposed, and the layers that read
one input stored side by side, in both backends; torch's split product for few rows (torchgpt.linear).

Same names, shapes and values; only the memory order changes. So everything that reads the parameters
(generation, the forward, training, state_dict) must give what it gave before.
"""
import numpy as np
import pytest
import torch

import npgpt.generate as np_generate
import npgpt.linear as np_linear
import torchgpt.generate as torch_generate
import torchgpt.linear as torch_linear
from gptcore.config import get_config
from npgpt.model import forward, init_params
from torchgpt import GPTModel, load_numpy_params

QKV = ("blocks.0.att.W_query.weight", "blocks.0.att.W_key.weight", "blocks.0.att.W_value.weight")
TRANSPOSED = ("blocks.0.att.out_proj.weight", "blocks.0.ff.fc1.weight", "out_head.weight")
KEPT = ("blocks.0.ff.fc2.weight", "pos_emb.weight", "blocks.0.norm1.scale", "blocks.0.ff.fc1.bias")


def small_config(tie_weights=True):
    return get_config("tiny", vocab_size=97, context_length=24, tie_weights=tie_weights, drop_rate=0.0)


def is_stored_transposed(array) -> bool:
    """A 2-D (out, in) array whose memory holds the (in, out) matrix in row order."""
    return array.ndim == 2 and array.T.flags.c_contiguous and not array.flags.c_contiguous


@pytest.mark.parametrize("tie_weights", [True, False])
def test_numpy_layout_keeps_names_shapes_values_and_the_tie(tie_weights):
    config = small_config(tie_weights)
    params = init_params(config, seed=3, layout="torch")
    relaid = np_generate.decoding_layout(params, config)
    assert list(relaid) == list(params)
    for name in params:
        assert relaid[name].shape == params[name].shape and relaid[name].dtype == params[name].dtype
        np.testing.assert_array_equal(relaid[name], params[name], err_msg=name)
    for name in TRANSPOSED:
        assert is_stored_transposed(relaid[name]), name
    together = np_linear.side_by_side([relaid[name] for name in QKV])         # (C, 3C): W_q^T | W_k^T | W_v^T
    assert together is not None and together.flags.c_contiguous
    np.testing.assert_array_equal(together, np.concatenate([params[name].T for name in QKV], axis=1))
    for name in KEPT:
        assert relaid[name] is params[name], name
    if tie_weights:
        assert relaid["tok_emb.weight"] is relaid["out_head.weight"]
        assert is_stored_transposed(relaid["tok_emb.weight"])
    else:
        assert relaid["tok_emb.weight"] is params["tok_emb.weight"]     # read by rows: stays as it is
    assert all(params[name].flags.c_contiguous for name in TRANSPOSED + QKV)   # the input dict is not touched
    assert np_linear.side_by_side([params[name] for name in QKV]) is None


def test_numpy_layout_gives_the_same_logits_and_tokens():
    config = small_config()
    params = init_params(config, seed=4, dtype=np.float64, layout="torch")    # float64: any difference is summation order only
    relaid = np_generate.decoding_layout(params, config)
    idx = np.random.default_rng(0).integers(0, config.vocab_size, size=(2, 10))
    logits, _ = forward(params, idx, config)
    logits_relaid, _ = forward(relaid, idx, config)
    np.testing.assert_allclose(logits_relaid, logits, rtol=1e-12, atol=1e-12)
    prompt = [5, 17, 3]
    for options in ({}, {"temperature": 0.9, "top_k": 20, "seed": 1}, {"num_beams": 3}):
        assert (np_generate.generate(relaid, config, prompt, 12, stop_ids=(), **options)
                == np_generate.generate(params, config, prompt, 12, stop_ids=(), **options)), options


@pytest.mark.parametrize("tie_weights", [True, False])
def test_torch_layout_in_place_keeps_state_dict_tie_and_tokens(tie_weights):
    config = small_config(tie_weights)
    params = init_params(config, seed=5, layout="torch")
    model = load_numpy_params(GPTModel(config, use_sdpa=True), params).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    idx = torch.tensor([[1, 2, 3, 40, 5]])
    with torch.no_grad():
        logits_before = model(idx)
    assert torch_generate.decoding_layout(model) is model
    after = model.state_dict()
    assert list(after) == list(before)
    for name in before:
        assert after[name].shape == before[name].shape
        assert torch.equal(after[name], before[name]), name
    for name in TRANSPOSED + ("blocks.0.ff.fc2.weight",):        # torch: every linear weight (split product)
        weight = after[name]
        assert weight.t().is_contiguous() and not weight.is_contiguous(), name
    together = torch_linear.side_by_side([after[name] for name in QKV])
    assert together is not None and together.is_contiguous()
    torch.testing.assert_close(together, torch.cat([before[name].t() for name in QKV], dim=1), rtol=0, atol=0)
    assert (model.out_head.weight is model.tok_emb.weight) == tie_weights
    with torch.no_grad():
        torch.testing.assert_close(model(idx), logits_before, rtol=1e-5, atol=1e-6)
    prompt = [5, 17, 3]
    relaid = np_generate.decoding_layout(params, config)
    assert (torch_generate.generate(model, prompt, 12, stop_ids=())
            == np_generate.generate(relaid, config, prompt, 12, stop_ids=()))


def test_numpy_layout_refuses_parameters_of_another_config():
    params = init_params(small_config(), seed=0)
    with pytest.raises(ValueError):
        np_generate.decoding_layout(params, get_config("tiny", vocab_size=50, context_length=24))
