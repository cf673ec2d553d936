"""Behaviour of the torch twin: canonical state_dict, weight tying, parameter counts, input errors,
the SDPA fast path against the explicit reference, GPT-2 init statistics, NumPy round trips."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import npgpt.model as npmodel
from gptcore.config import get_config
import torchgpt.gpt2
import torchgpt.model
from torchgpt import GPTModel, build_model, count_params, init_weights, load_numpy_params, pick_device, to_numpy_params
from torchgpt.attention import (CausalAttention, MultiHeadAttention, SelfAttentionV1, SelfAttentionV2,
                                simple_attention)
from torchgpt.dropout import Dropout, dropout, dropout_mask
from torchgpt.gelu import gelu
from torchgpt.layernorm import LayerNorm, layernorm
from torchgpt.loss import calc_loss_batch, calc_loss_loader, cross_entropy, perplexity
from torchgpt.optim import make_adamw, param_groups
from torchgpt.softmax import softmax
from parity_tests.conftest import fed_dropout_masks
from gptcore.arch import SPECS, param_shapes
from gptcore.engine.schedule import warmup_cosine_lr

SMALL = get_config("tiny", vocab_size=61, context_length=16, emb_dim=24, n_heads=3, n_layers=2, drop_rate=0.1)


def small(**changes):
    return SMALL.replace(**changes)


@pytest.mark.parametrize("qkv_bias", [False, True])
@pytest.mark.parametrize("tie", [False, True])
def test_state_dict_is_canonical(qkv_bias, tie):
    config = small(qkv_bias=qkv_bias, tie_weights=tie)
    state = GPTModel(config, seed=0).state_dict()
    expected = param_shapes(config)
    assert list(state) == list(expected)          # same names, same order
    assert {k: tuple(v.shape) for k, v in state.items()} == expected
    assert not any("mask" in name for name in state)   # causal mask buffers are not persistent


def test_tying_shares_storage_and_gradient():
    model = GPTModel(small(tie_weights=True), seed=0).eval()   # eval: no random dropout
    assert model.out_head.weight is model.tok_emb.weight
    state = model.state_dict()
    assert state["out_head.weight"].data_ptr() == state["tok_emb.weight"].data_ptr()
    idx = torch.tensor([[1, 2, 3, 2]])
    model(idx).sum().backward()
    grad = model.tok_emb.weight.grad
    # The gradient holds the head's part (every row: sum over positions of final_norm(x)) plus the
    # embedding's part (rows 1, 2, 3 only); an untied model with the same weights shows both pieces.
    untied = GPTModel(small(tie_weights=False), seed=0).eval()
    untied.load_state_dict(model.state_dict())
    untied(idx).sum().backward()
    assert torch.allclose(grad, untied.tok_emb.weight.grad + untied.out_head.weight.grad, atol=1e-6)
    assert untied.tok_emb.weight.grad[1:4].abs().sum() > 0 and untied.tok_emb.weight.grad[5].abs().sum() == 0


def test_param_counts_gpt2_small():
    config = get_config("gpt2-small")
    assert count_params(_meta_model(config)) == 124_439_808
    assert count_params(_meta_model(config.replace(tie_weights=False))) == 163_037_184


def _meta_model(config):
    """A GPTModel built on the meta device: real shapes, no memory (500 MB+ of weights not allocated)."""
    with torch.device("meta"):
        return GPTModel(config, seed=0)


def test_count_matches_numpy_count():
    config = small(qkv_bias=True)
    assert count_params(GPTModel(config, seed=0)) == npmodel.count_params(npmodel.init_params(config))


@pytest.mark.parametrize("bad, message", [
    (torch.zeros(2, 3), "integer"),
    (torch.zeros(3, dtype=torch.long), "shape (B, T)"),
    (torch.zeros(1, 17, dtype=torch.long), "exceeds the context length 16"),
    (torch.full((1, 4), 61), "in [0, 61)"),
    (torch.full((1, 4), -1), "in [0, 61)"),
])
def test_input_validation(bad, message):
    model = GPTModel(small(), seed=0)
    with pytest.raises(ValueError) as error:
        model(bad)
    assert message in str(error.value)
    with pytest.raises(ValueError) as error:                # the twin of npgpt.model.check_token_ids
        torchgpt.model.check_token_ids(bad, small())
    assert message in str(error.value)


def test_id_range_check_can_be_switched_off():
    """check_id_range=False (a training loop with known-good ids) skips only the range: no host sync."""
    config = small()
    out_of_range = torch.full((1, 4), 61)
    assert torchgpt.model.check_token_ids(out_of_range, config, check_range=False) is out_of_range
    model = GPTModel(config, seed=0)
    assert model.check_id_range
    model.check_id_range = False
    with pytest.raises(ValueError, match="integer"):
        model(torch.zeros(2, 3))


def test_build_model_follows_config_arch():
    """build_model picks the model of config.arch; every spec in gptcore.arch has its torch model."""
    assert sorted(torchgpt.model.ARCHITECTURES) == sorted(SPECS)
    model = build_model(small(), seed=0)
    assert type(model) is GPTModel is torchgpt.gpt2.GPTModel is torchgpt.model.GPTModel
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                  GPTModel(small(), seed=0).state_dict().values()))
    assert build_model(small(), use_sdpa=True).blocks[0].att.use_sdpa


def test_accepts_numpy_ids_and_empty_batch():
    model = GPTModel(small(), seed=0).eval()
    assert model(np.array([[1, 2, 3]])).shape == (1, 3, 61)
    assert model(torch.zeros(0, 4, dtype=torch.long)).shape == (0, 4, 61)


@pytest.mark.parametrize("qkv_bias", [False, True])
def test_sdpa_equals_explicit_attention(qkv_bias):
    torch.manual_seed(0)
    config = small(qkv_bias=qkv_bias)
    explicit = GPTModel(config, seed=3).double().eval()
    fast = GPTModel(config, use_sdpa=True, seed=3).double().eval()
    idx = torch.randint(0, config.vocab_size, (3, 16))
    a, b = explicit(idx), fast(idx)
    assert (a - b).abs().max() <= 1e-10 * a.abs().max()
    a.square().sum().backward()
    b.square().sum().backward()
    # Relative to the largest gradient: W_key.bias has a mathematically zero gradient (softmax ignores
    # a shift shared by a query's scores), so its own scale is only rounding noise.
    scale = max(p.grad.abs().max() for p in explicit.parameters())
    for (name, p), q in zip(explicit.named_parameters(), fast.parameters()):
        assert (p.grad - q.grad).abs().max() <= 1e-10 * scale, name


def test_sdpa_dropout_runs_in_training():
    att = MultiHeadAttention(8, 8, 6, drop_rate=0.5, n_heads=2, use_sdpa=True).train()
    out = att(torch.randn(2, 6, 8))
    assert out.shape == (2, 6, 8)


def test_init_statistics():
    config = get_config("tiny", vocab_size=500, n_layers=4, emb_dim=128, n_heads=4, qkv_bias=True)
    model = GPTModel(config, seed=0)
    state = model.state_dict()
    assert abs(state["tok_emb.weight"].std().item() - 0.02) < 0.001
    assert abs(state["blocks.0.ff.fc1.weight"].std().item() - 0.02) < 0.001
    residual_std = 0.02 / math.sqrt(2 * config.n_layers)
    for name in ("blocks.1.att.out_proj.weight", "blocks.3.ff.fc2.weight"):
        assert abs(state[name].std().item() - residual_std) < 0.1 * residual_std, name
    assert abs(state["blocks.0.att.W_query.weight"].mean().item()) < 0.002
    for name, value in state.items():
        if name.endswith(".scale"):
            assert torch.all(value == 1), name
        if name.endswith((".shift", ".bias")):
            assert torch.all(value == 0), name


def test_init_is_seeded():
    a, b, c = (GPTModel(small(), seed=s).state_dict() for s in (5, 5, 6))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["tok_emb.weight"], c["tok_emb.weight"])
    model = GPTModel(small(), seed=5)
    init_weights(model, 5)
    assert torch.equal(model.state_dict()["blocks.1.ff.fc2.weight"], a["blocks.1.ff.fc2.weight"])


@pytest.mark.parametrize("tie", [False, True])
def test_numpy_round_trip(tie):
    config = small(tie_weights=tie, qkv_bias=True)
    params = npmodel.init_params(config, seed=4)
    model = load_numpy_params(GPTModel(config, seed=0), params)
    back = to_numpy_params(model)
    assert list(back) == list(params)
    for name in params:
        assert back[name].dtype == np.float32 and np.array_equal(back[name], params[name]), name
    assert (back["out_head.weight"] is back["tok_emb.weight"]) == tie
    idx = np.array([[3, 1, 4, 1, 5, 9]])
    logits_np, _ = npmodel.forward(params, idx, config)
    logits_torch = model.eval()(torch.from_numpy(idx)).detach().numpy()
    assert np.abs(logits_np - logits_torch).max() < 1e-5
    # the design's promise in plain torch, no helper: a NumPy param dict IS a state dict
    plain = GPTModel(config, seed=1)
    plain.load_state_dict({k: torch.from_numpy(v) for k, v in params.items()})
    logits_plain = plain.eval()(torch.from_numpy(idx)).detach().numpy()
    assert np.abs(logits_np - logits_plain).max() < 1e-5


def test_load_numpy_params_errors():
    config = small()
    model = GPTModel(config, seed=0)
    params = npmodel.init_params(config)
    with pytest.raises(ValueError, match="missing"):
        load_numpy_params(model, {k: v for k, v in params.items() if k != "final_norm.scale"})
    with pytest.raises(ValueError, match="has shape"):
        load_numpy_params(model, {**params, "final_norm.scale": np.ones(5, np.float32)})
    untied = npmodel.init_params(config.replace(tie_weights=False), seed=1)
    with pytest.raises(ValueError, match="tie_weights=False"):
        load_numpy_params(model, untied)


def test_gelu_layernorm_softmax_match_torch_builtins():
    x = torch.randn(4, 7, 10, dtype=torch.float64) * 3
    assert torch.allclose(gelu(x), F.gelu(x, approximate="tanh"), rtol=0, atol=1e-14)
    scale, shift = torch.randn(10, dtype=torch.float64), torch.randn(10, dtype=torch.float64)
    assert torch.allclose(layernorm(x, scale, shift), F.layer_norm(x, (10,), scale, shift, 1e-5), atol=1e-12)
    norm = LayerNorm(10).double()
    assert [n for n, _ in norm.named_parameters()] == ["scale", "shift"]
    assert torch.allclose(norm(x), layernorm(x, norm.scale, norm.shift), atol=1e-12)
    big = x * 1e3
    assert torch.allclose(softmax(big), torch.softmax(big, -1), atol=1e-14)


def test_dropout_with_explicit_mask():
    x = torch.randn(3, 5)
    mask = dropout_mask((3, 5), 0.4, torch.Generator().manual_seed(0))
    assert torch.allclose(dropout(x, 0.4, mask=mask), x * mask / 0.6)
    fed = Dropout(0.4).train()
    with fed_dropout_masks(fed, [mask.numpy()]):
        assert torch.allclose(fed(x), x * mask / 0.6)
    assert torch.equal(Dropout(0.4).eval()(x), x)
    with pytest.raises(ValueError, match="does not match"):
        dropout(x, 0.4, mask=mask[:2])


def test_attention_teaching_steps_agree():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 6, dtype=torch.float64)
    v1 = SelfAttentionV1(6, 4).double()
    v2 = SelfAttentionV2(6, 4).double()
    with torch.no_grad():
        for name in ("W_query", "W_key", "W_value"):
            getattr(v2, name).weight.copy_(getattr(v1, name))
    assert torch.allclose(v1(x), v2(x))
    causal = CausalAttention(6, 4, context_length=8, drop_rate=0.0).double()
    causal.load_state_dict(v2.state_dict())
    out = causal(x)
    assert torch.allclose(out[:, 0], v2.W_value(x)[:, 0])   # the first token only sees itself
    assert not torch.allclose(out[:, 1:], v2(x)[:, 1:])
    assert simple_attention(x[0]).shape == (5, 6)


def test_multihead_single_head_equals_causal_attention():
    torch.manual_seed(1)
    x = torch.randn(2, 5, 6, dtype=torch.float64)
    causal = CausalAttention(6, 6, 8, 0.0).double()
    mha = MultiHeadAttention(6, 6, 8, 0.0, n_heads=1).double()
    mha.load_state_dict({**causal.state_dict(), "out_proj.weight": torch.eye(6, dtype=torch.float64),
                         "out_proj.bias": torch.zeros(6, dtype=torch.float64)})
    assert torch.allclose(mha(x), causal(x), atol=1e-14)


def test_model_dropout_masks_order_and_errors():
    config = small(n_layers=1, drop_rate=0.5)
    model = GPTModel(config, seed=0).double().train()
    idx = torch.tensor([[1, 2, 3]])
    ones = [torch.ones(1, 3, 24, dtype=torch.bool), torch.ones(1, 3, 3, 3, dtype=torch.bool),
            torch.ones(1, 3, 24, dtype=torch.bool), torch.ones(1, 3, 24, dtype=torch.bool)]
    # all-keep masks = no dropout but every activation scaled by 1/(1-p) = 2
    with fed_dropout_masks(model, ones) as feed:
        out = model(idx)
    assert torch.isfinite(out).all() and feed.taken == 4
    # SDPA draws its dropout inside the kernel: fed masks take the explicit attention, the same numbers
    fused = load_numpy_params(GPTModel(config, use_sdpa=True).double(), to_numpy_params(model)).train()
    with fed_dropout_masks(fused, ones):
        assert torch.allclose(fused(idx), out, rtol=1e-12, atol=0)
    assert all(block.att.use_sdpa for block in fused.blocks)
    with pytest.raises(ValueError, match="ran out at mask 3"):
        with fed_dropout_masks(model, ones[:3]):
            model(idx)
    with pytest.raises(ValueError, match="expected"):
        with fed_dropout_masks(model, [ones[1]] + ones[1:]):
            model(idx)
    with pytest.raises(ValueError, match="eval mode"):
        with fed_dropout_masks(model.eval(), ones):
            model(idx)


def test_loss_and_perplexity():
    logits = torch.randn(2, 3, 7, dtype=torch.float64)
    targets = torch.tensor([[1, -100, 2], [-100, -100, 6]])
    kept = targets != -100
    manual = -torch.log_softmax(logits, -1)[kept].gather(-1, targets[kept][:, None]).mean()
    assert torch.allclose(cross_entropy(logits, targets), manual)
    assert math.isnan(cross_entropy(logits, torch.full((2, 3), -100)).item())
    assert perplexity(0.0) == 1.0 and perplexity(1e4) == math.inf
    model = GPTModel(small(), seed=0).eval()
    x = torch.randint(0, 61, (2, 8))
    loader = [(x, x), (x, x)]
    batch_loss = calc_loss_batch(x, x, model, "cpu").item()
    assert calc_loss_loader(loader, model, "cpu") == pytest.approx(batch_loss)
    assert math.isnan(calc_loss_loader([], model, "cpu"))


def test_adamw_groups():
    model = GPTModel(small(qkv_bias=True), seed=0)
    decay, no_decay = param_groups(model, 0.1)
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])
    n_unique = len(list(model.parameters()))
    assert len(decay["params"]) + len(no_decay["params"]) == n_unique      # tied weight listed once
    assert len(param_groups(model, 0.1, decay="all")[0]["params"]) == n_unique
    optimizer = make_adamw(model, lr=1e-3, weight_decay=0.1)
    assert optimizer.param_groups[1]["weight_decay"] == 0.0
    with pytest.raises(ValueError, match="decay"):
        param_groups(model, 0.1, decay="some")


def test_warmup_cosine_schedule():
    kwargs = dict(max_lr=1.0, warmup_steps=4, max_steps=12, min_lr=0.1)
    lrs = [warmup_cosine_lr(s, **kwargs) for s in range(14)]
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0]
    assert lrs[4] == 1.0 and lrs[8] == pytest.approx(0.55) and lrs[12] == lrs[13] == 0.1
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:]))


def test_pick_device():
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("auto").type in {"cpu", "cuda", "mps"}
    with pytest.raises(ValueError, match="unknown device"):
        pick_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            pick_device("cuda")
