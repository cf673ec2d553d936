"""LoRA: npgpt's hand-written adapter (linear_layer_forward/backward with lora_A/lora_B) against
torchgpt.lora.LoRALinear, finite differences, the whole adapted model (gradients only for the adapters),
the Kaiming-uniform init, and a planted bug that the checks must catch."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given
from hypothesis import strategies as st

import npgpt.linear as nplin
import npgpt.lora as nplora
import npgpt.model as npmodel
import torchgpt.lora as tlora
from gptcore.config import GPTConfig
from npgpt.loss import cross_entropy_backward, cross_entropy_forward
from parity_tests.conftest import (assert_close, assert_grads_close, assert_matches_finite_differences,
                                   budget, dtypes, make_array, Values, model_dims, record_example, to_torch, torch_dtype,
                                   nudged_params, planted_bug, torch_with_reference, values, weights)
from gptcore.lora import A_SUFFIX, B_SUFFIX, LoRAConfig, SCALING_SUFFIX, trainable_grads, trainable_params

LAYER = "proj"


def lora_layer_params(rng, n_in, n_out, rank, alpha, with_bias, dtype):
    """A layer's parameter dict: base weight (+ bias) and an adapter whose B is NOT zero (so dA is too)."""
    p = {f"{LAYER}.weight": weights(rng, (n_out, n_in), dtype)}
    if with_bias:
        p[f"{LAYER}.bias"] = weights(rng, (n_out,), dtype)
    p[LAYER + A_SUFFIX] = weights(rng, (rank, n_in), dtype)
    p[LAYER + B_SUFFIX] = weights(rng, (n_out, rank), dtype)
    p[LAYER + SCALING_SUFFIX] = np.array(alpha / rank, dtype=dtype)
    return p


def torch_lora_layer(p, n_in, n_out, rank, alpha, with_bias, dtype):
    linear = torch.nn.Linear(n_in, n_out, bias=with_bias).to(torch_dtype(dtype))
    layer = tlora.LoRALinear(linear, rank, alpha)
    state = {name[len(LAYER) + 1:]: to_torch(value) for name, value in p.items()}
    layer.load_state_dict(state)      # the same keys: weight, bias, lora_A, lora_B, lora_scaling
    return layer


def check_lora_linear(B, T, n_in, n_out, rank, alpha, with_bias, recipe, dtype):
    rng = recipe.rng(1)
    p = lora_layer_params(rng, n_in, n_out, rank, alpha, with_bias, dtype)
    x = make_array(recipe, (B, T, n_in), dtype)
    dout = make_array(recipe, (B, T, n_out), dtype, salt=2)
    out, cache = nplin.linear_layer_forward(x, p, LAYER)
    dx, grads = nplin.linear_layer_backward(dout, cache)
    assert out.dtype == dx.dtype == grads[LAYER + ".lora_A"].dtype == grads[LAYER + ".lora_B"].dtype == dtype
    assert sorted(grads) == [LAYER + ".lora_A", LAYER + ".lora_B"]      # the frozen base gets no gradient

    layer = torch_lora_layer(p, n_in, n_out, rank, alpha, with_bias, dtype)
    x_t = to_torch(x, requires_grad=True)
    out_t = layer(x_t)
    out_t.backward(to_torch(dout))
    assert layer.weight.grad is None and (layer.bias is None or layer.bias.grad is None)
    # Each result measured against its terms (the same products on absolute values): with tied or tiny
    # inputs a sum over positions can cancel to rounding noise (dA ~ 1e-22 from terms ~ 1e-6)
    a = {name[len(LAYER) + 1:]: np.abs(value.astype(np.float64)) for name, value in p.items()}
    ax, ad = np.abs(x.reshape(-1, n_in).astype(np.float64)), np.abs(dout.reshape(-1, n_out).astype(np.float64))
    s = float(a["lora_scaling"])
    terms = {"out": ax @ a["weight"].T + a.get("bias", 0.0) + s * (ax @ a["lora_A"].T) @ a["lora_B"].T,
             "dx": ad @ a["weight"] + s * (ad @ a["lora_B"]) @ a["lora_A"],
             "dA": s * (ad @ a["lora_B"]).T @ ax, "dB": s * ad.T @ (ax @ a["lora_A"].T)}
    floor = {name: float(value.max(initial=0.0)) for name, value in terms.items()}
    assert_close(out, out_t, floor=floor["out"], name="lora out")
    assert_close(dx, x_t.grad, floor=floor["dx"], name="lora dx")
    assert_close(grads[LAYER + ".lora_A"], layer.lora_A.grad, floor=floor["dA"], name="lora dA")
    assert_close(grads[LAYER + ".lora_B"], layer.lora_B.grad, floor=floor["dB"], name="lora dB")
    return p, x, dout, dx, grads


@budget(30)
@given(B=st.integers(1, 3), T=st.integers(1, 16), n_in=st.integers(1, 48), n_out=st.integers(1, 48),
       rank=st.integers(1, 8), alpha=st.sampled_from([1.0, 8.0, 16.0]), with_bias=st.booleans(),
       recipe=values(), dtype=dtypes)
def test_lora_linear(B, T, n_in, n_out, rank, alpha, with_bias, recipe, dtype):
    record_example()
    check_lora_linear(B, T, n_in, n_out, rank, alpha, with_bias, recipe, dtype)


@budget(25, thorough=80)
@given(with_bias=st.booleans(), rank=st.integers(1, 4), recipe=values(scales=(1.0,)))
def test_lora_finite_differences(with_bias, rank, recipe):
    record_example()
    p, x, dout, dx, grads = check_lora_linear(2, 3, 5, 4, rank, 8.0, with_bias, recipe, np.float64)
    loss = lambda: float((nplin.linear_layer_forward(x, p, LAYER)[0] * dout).sum())
    assert_matches_finite_differences(loss, p[LAYER + ".lora_A"], grads[LAYER + ".lora_A"], name="lora dA")
    assert_matches_finite_differences(loss, p[LAYER + ".lora_B"], grads[LAYER + ".lora_B"], name="lora dB")
    assert_matches_finite_differences(loss, x, dx, name="lora dx")


def test_planted_bug_in_lora_backward_is_caught(monkeypatch):
    """A dA off by 1e-4 relative (the smallest bug the tolerances are built to see) must fail the check."""
    record_example()
    honest = nplora.lora_backward

    def slightly_wrong(ddelta, cache):
        dx, dA, dB = honest(ddelta, cache)
        return dx, dA * (1 + 1e-4), dB

    monkeypatch.setattr(nplin, "lora_backward", slightly_wrong)
    with planted_bug("LoRA backward: dA off by 1e-4", match="lora dA"):
        check_lora_linear(2, 3, 6, 5, 3, 8.0, True, Values(seed=1, scale=1.0, ties=False), np.float64)


# ---------------------------------------------------------------------------------------------------------
# the adapted model
# ---------------------------------------------------------------------------------------------------------

TARGET_CHOICES = [("attention",), ("feedforward",), ("head",), ("attention", "feedforward", "head"), ("W_value", "fc2")]


def random_adapters(base, lora_config, seed, dtype):
    """Adapters with B drawn at random too (fresh ones have B = 0, which would make every dA zero)."""
    adapters = nplora.init_lora(base, lora_config, seed=seed, dtype=dtype)
    rng = np.random.default_rng(seed + 1)
    for name in adapters:
        if name.endswith(B_SUFFIX):
            adapters[name] = weights(rng, adapters[name].shape, dtype, std=0.1)
    return adapters


@budget(25, thorough=160)
@given(dims=model_dims(max_c=24), V=st.integers(2, 40), L=st.integers(1, 2), tie=st.booleans(),
       qkv_bias=st.booleans(), targets=st.sampled_from(TARGET_CHOICES), rank=st.integers(1, 4),
       seed=st.integers(0, 2**16), dtype=dtypes)
def test_model_with_lora(dims, V, L, tie, qkv_bias, targets, rank, seed, dtype):
    """npgpt.model.forward/backward with adapters in the params dict = torch GPTModel after add_lora:
    same loss, same adapter gradients, and gradients ONLY for the adapters in both."""
    record_example()
    from torchgpt import GPTModel, load_numpy_params

    B, T, C, H = dims
    # C <= 2: a LayerNorm's output is its shift (C = 1) or +-scale + shift up to eps (C = 2), so the loss
    # hardly depends on the attention or feed-forward adapters: their gradients are ~1e-5 of the terms they
    # cancel (exactly 0 for C = 1) and both sides return rounding noise (see test_model.WIDTH_AT_LEAST_3).
    assume(C > 2)
    config = GPTConfig(vocab_size=V, context_length=16, emb_dim=C, n_heads=H, n_layers=L, drop_rate=0.0,
                       qkv_bias=qkv_bias, tie_weights=tie)
    lora_config = LoRAConfig(rank=rank, alpha=2.0 * rank, targets=targets)
    base = npmodel.init_params(config, seed=seed, dtype=dtype)
    rng = np.random.default_rng(seed)
    for name, value in base.items():            # biases and norms away from their 0/1 init
        if value.ndim == 1:
            value += weights(rng, value.shape, dtype, std=0.1)
    params = {**base, **random_adapters(base, lora_config, seed, dtype)}
    idx = rng.integers(0, V, size=(B, T))
    targets_ids = rng.integers(0, V, size=(B, T))

    logits, cache = npmodel.forward(params, idx, config)
    loss, loss_cache = cross_entropy_forward(logits, targets_ids)
    grads = trainable_grads(npmodel.backward(cross_entropy_backward(loss_cache), cache))

    def run(tdtype):
        model = GPTModel(config).to(tdtype)
        tlora.add_lora(model, lora_config)
        load_numpy_params(model, nudged_params(params))  # one state dict (base + adapters) loads into both
        logits_t = model(torch.from_numpy(idx))
        loss_t = F.cross_entropy(logits_t.reshape(-1, V), torch.from_numpy(targets_ids).reshape(-1))
        loss_t.backward()
        frozen_with_grad = [name for name, p in model.named_parameters() if not p.requires_grad and p.grad is not None]
        assert frozen_with_grad == []
        trainable = {name: p.grad for name, p in model.named_parameters() if p.requires_grad}
        return {"loss": loss_t, "logits": logits_t}, trainable

    # float32: the float64 run is the reference that measures torch's own rounding (see conftest.assert_close)
    (expected, expected_grads), reference = torch_with_reference(run, dtype)
    reference_values, reference_grads = reference or ({"loss": None, "logits": None}, None)
    assert sorted(grads) == sorted(expected_grads) == sorted(trainable_params(params))
    assert_close(np.asarray(loss, dtype), expected["loss"], name="lora model loss", reference=reference_values["loss"])
    assert_close(logits, expected["logits"], name="lora model logits", reference=reference_values["logits"])
    assert_grads_close(grads, expected_grads, references=reference_grads, prefix="lora model ")


def test_fresh_adapters_change_nothing():
    """B = 0 at the start: the adapted model's logits equal the base model's in both backends."""
    record_example()
    from torchgpt import GPTModel, load_numpy_params

    config = GPTConfig(vocab_size=30, context_length=8, emb_dim=16, n_heads=2, n_layers=1, drop_rate=0.0)
    base = npmodel.init_params(config, seed=3, dtype=np.float64)
    lora_config = LoRAConfig(rank=2, alpha=4.0, targets=("attention", "feedforward", "head"))
    idx = np.array([[1, 2, 3, 4, 5]])
    plain, _ = npmodel.forward(base, idx, config)
    adapted, _ = npmodel.forward(nplora.add_lora(base, lora_config), idx, config)
    np.testing.assert_array_equal(plain, adapted)
    model = load_numpy_params(GPTModel(config).double(), base).eval()
    before = model(torch.from_numpy(idx)).detach()
    tlora.add_lora(model, lora_config)
    assert_close(model(torch.from_numpy(idx)), before, name="fresh torch adapter")
    assert_close(plain, before, name="fresh adapter npgpt vs torch")


@pytest.mark.parametrize("n_in", [1, 7, 768])
def test_kaiming_uniform_init_matches_torch(n_in):
    """A ~ U(-1/sqrt(in), 1/sqrt(in)) in both: the bound formula equals torch's, and draws fill the range."""
    record_example()
    assert math.isclose(nplora.kaiming_uniform_bound(n_in), 1 / math.sqrt(n_in), rel_tol=1e-12)
    linear = torch.nn.Linear(n_in, 5)
    layer = tlora.LoRALinear(linear, rank=64, alpha=64, generator=torch.Generator().manual_seed(0))
    params = {"fc.weight": np.zeros((5, n_in), np.float32)}
    adapters = nplora.init_lora(params, LoRAConfig(rank=64, alpha=64, targets=("fc",)), seed=0)
    bound = 1 / math.sqrt(n_in)
    for A in (layer.lora_A.detach().numpy(), adapters["fc.lora_A"]):
        assert A.shape == (64, n_in)
        assert np.abs(A).max() <= bound
        assert np.abs(A).max() > 0.9 * bound                   # the whole range is used (64 * n_in draws)
        assert abs(float(A.std()) - bound / math.sqrt(3)) < 0.25 * bound / math.sqrt(3)   # uniform std = bound/sqrt 3
    assert not layer.lora_B.detach().any() and not adapters["fc.lora_B"].any()
