"""The products of a decoding step: torch's split product for few rows (torchgpt.linear.split_k_linear) and the
layers that read one input computed by one product when decoding_layout stores them side by side (both twins).

The oracle is the plain product on the plain layout (F.linear / npgpt's linear_layer_forward, one layer at a
time) in float64, where any difference can only be summation order; and the tokens the plain layout decodes.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import npgpt.generate as np_generate
import npgpt.linear as np_linear
import torchgpt.generate as torch_generate
import torchgpt.linear as torch_linear
from gptcore.config import get_config
from gptcore.lora import LoRAConfig
from npgpt.lora import add_lora as np_add_lora
from npgpt.model import infer, init_params
from torchgpt import build_model, load_numpy_params
from torchgpt.lora import add_lora as torch_add_lora

LLAMA_GROUPS = (("att.W_query", "att.W_key", "att.W_value"), ("ff.gate", "ff.up"))


def llama_config():
    """A small Llama with grouped-query attention (4 query heads, 2 key/value heads), like SmolLM2's."""
    return get_config("tiny-llama", vocab_size=101, context_length=32, n_kv_heads=2)


def stored_transposed(weight: torch.Tensor) -> torch.Tensor:
    return weight.t().contiguous().t()


# --- torch's split product ---------------------------------------------------------------------------

@pytest.mark.parametrize("rows", [1, 2, 5, 8])
@pytest.mark.parametrize("with_bias", [True, False])
def test_split_product_equals_the_plain_product(rows, with_bias):
    generator = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, 1, 48, generator=generator, dtype=torch.float64)
    weight = torch.randn(30, 48, generator=generator, dtype=torch.float64)
    bias = torch.randn(30, generator=generator, dtype=torch.float64) if with_bias else None
    relaid = stored_transposed(weight)
    with torch.no_grad():
        assert torch_linear.splits_input_axis(x, relaid)
        out = torch_linear.linear(x, relaid, bias)
    assert out.shape == (rows, 1, 30)
    torch.testing.assert_close(out, F.linear(x, weight, bias), rtol=1e-12, atol=1e-12)


def test_split_product_only_where_it_applies():
    x = torch.randn(1, 48)
    relaid = stored_transposed(torch.randn(30, 48))
    with torch.no_grad():
        assert torch_linear.splits_input_axis(x, relaid)
        assert not torch_linear.splits_input_axis(torch.randn(9, 48), relaid)           # a GEMM, not a GEMV
        assert not torch_linear.splits_input_axis(x, relaid.contiguous())               # (out, in) rows
        assert not torch_linear.splits_input_axis(torch.randn(1, 47), stored_transposed(torch.randn(30, 47)))
    assert not torch_linear.splits_input_axis(x, relaid.requires_grad_())                # autograd records


def test_split_product_layer_trains_like_nn_linear():
    """With a gradient to record the layer is F.linear: the same gradients as nn.Linear's."""
    torch.manual_seed(0)
    layer = torch_linear.Linear(48, 30).double()
    reference = torch.nn.Linear(48, 30).double()
    reference.load_state_dict(layer.state_dict())
    layer.weight.data = stored_transposed(layer.weight.data)
    x = torch.randn(1, 48, dtype=torch.float64)
    layer(x).square().sum().backward()
    reference(x).square().sum().backward()
    torch.testing.assert_close(layer.weight.grad, reference.weight.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(layer.bias.grad, reference.bias.grad, rtol=1e-12, atol=1e-12)


# --- layers side by side --------------------------------------------------------------------------------

def test_numpy_llama_layout_puts_each_group_side_by_side():
    config = llama_config()
    params = init_params(config, seed=1, dtype=np.float64, layout="torch")
    relaid = np_generate.decoding_layout(params, config)
    for i in range(config.n_layers):
        for group in LLAMA_GROUPS:
            names = [f"blocks.{i}.{layer}.weight" for layer in group]
            together = np_linear.side_by_side([relaid[name] for name in names])
            assert together is not None, names
            np.testing.assert_array_equal(together, np.concatenate([params[name].T for name in names], axis=1))
    # a group out of order, or of another block, is not side by side
    assert np_linear.side_by_side([relaid["blocks.0.att.W_key.weight"], relaid["blocks.0.att.W_query.weight"]]) is None
    assert np_linear.side_by_side([relaid["blocks.0.att.W_query.weight"], relaid["blocks.1.att.W_key.weight"]]) is None


def test_numpy_side_by_side_layers_give_the_separate_products():
    config = llama_config()
    params = init_params(config, seed=2, dtype=np.float64, layout="torch")
    relaid = np_generate.decoding_layout(params, config)
    x = np.random.default_rng(0).standard_normal((2, 3, config.emb_dim))
    block = {name[len("blocks.0.att."):]: value for name, value in relaid.items() if name.startswith("blocks.0.att.")}
    together = np_linear.linear_layers_together(x, block, ("W_query", "W_key", "W_value"))
    for out, name in zip(together, ("W_query", "W_key", "W_value")):
        expected = x @ params[f"blocks.0.att.{name}.weight"].T
        np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12, err_msg=name)
    idx = np.array([[3, 1, 4, 1, 5, 9, 2]])
    np.testing.assert_allclose(infer(relaid, idx, config), infer(params, idx, config), rtol=1e-12, atol=1e-12)


def test_numpy_gpt2_biases_join_the_side_by_side_product():
    config = get_config("tiny", vocab_size=97, context_length=24, qkv_bias=True)
    params = init_params(config, seed=3, dtype=np.float64, layout="torch")
    for name in ("W_query", "W_key", "W_value"):       # nonzero biases, so a lost or misplaced one shows
        params[f"blocks.0.att.{name}.bias"] = np.random.default_rng(len(name)).standard_normal(config.emb_dim)
    relaid = np_generate.decoding_layout(params, config)
    idx = np.array([[3, 1, 4, 1, 5]])
    np.testing.assert_allclose(infer(relaid, idx, config), infer(params, idx, config), rtol=1e-12, atol=1e-12)


def test_numpy_layout_leaves_a_group_with_a_lora_adapter_apart():
    config = llama_config()
    params = np_add_lora(init_params(config, seed=4, dtype=np.float64, layout="torch"), LoRAConfig(rank=2, targets=("att.W_key",)))
    for name in params:
        if name.endswith(".lora_B"):                    # nonzero B: the adapter changes the output
            params[name] = np.random.default_rng(0).standard_normal(params[name].shape) * 0.1
    relaid = np_generate.decoding_layout(params, config)
    qkv = [relaid[f"blocks.0.att.{name}.weight"] for name in ("W_query", "W_key", "W_value")]
    assert np_linear.side_by_side(qkv) is None
    assert np_linear.side_by_side([relaid["blocks.0.ff.gate.weight"], relaid["blocks.0.ff.up.weight"]]) is not None
    prompt = [5, 17, 3]
    assert (np_generate.generate(relaid, config, prompt, 10, stop_ids=())
            == np_generate.generate(params, config, prompt, 10, stop_ids=()))


def test_torch_llama_layout_side_by_side_and_the_same_tokens_as_numpy():
    config = llama_config()
    params = init_params(config, seed=5, layout="torch")
    model = load_numpy_params(build_model(config, use_sdpa=True), params).eval()
    plain_tokens = torch_generate.generate(model, [5, 17, 3], 12, stop_ids=())
    with torch.no_grad():
        logits_before = model(torch.tensor([[5, 17, 3, 40]]))
    torch_generate.decoding_layout(model)
    for block in model.blocks:
        for group in LLAMA_GROUPS:
            layers = [block.get_submodule(name) for name in group]
            assert torch_linear.side_by_side([layer.weight for layer in layers]) is not None, group
    with torch.no_grad():
        torch.testing.assert_close(model(torch.tensor([[5, 17, 3, 40]])), logits_before, rtol=1e-5, atol=1e-5)
    tokens = torch_generate.generate(model, [5, 17, 3], 12, stop_ids=())
    assert tokens == plain_tokens
    relaid = np_generate.decoding_layout(params, config)
    assert tokens == np_generate.generate(relaid, config, [5, 17, 3], 12, stop_ids=())


def test_torch_side_by_side_layers_still_train_each_weight():
    """With autograd on, the layers run one by one: every weight of a group gets its own gradient, equal
    to the plain layout's (the joint product would send them all to the first weight's view)."""
    config = llama_config()
    params = init_params(config, seed=6, dtype=np.float64, layout="torch")
    plain = load_numpy_params(build_model(config), params).double()
    relaid = torch_generate.decoding_layout(load_numpy_params(build_model(config), params).double())
    idx = torch.tensor([[3, 1, 4, 1, 5, 9]])
    for model in (plain, relaid):
        model(idx).square().mean().backward()
    for (name, p), (_, q) in zip(plain.named_parameters(), relaid.named_parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-10, atol=1e-12, msg=name)


def test_torch_layout_leaves_a_lora_wrapped_group_apart():
    config = llama_config()
    model = load_numpy_params(build_model(config, use_sdpa=True), init_params(config, seed=7, layout="torch")).eval()
    torch_add_lora(model, LoRAConfig(rank=2, targets=("att.W_value",)), seed=0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):
                p.normal_(0, 0.1)
        before = model(torch.tensor([[1, 2, 3]]))
    torch_generate.decoding_layout(model)
    assert torch_generate.shared_input_groups(model) == [[block.ff.gate, block.ff.up] for block in model.blocks]
    with torch.no_grad():
        torch.testing.assert_close(model(torch.tensor([[1, 2, 3]])), before, rtol=1e-5, atol=1e-5)
