"""npgpt.model.infer: the forward's logits without a cache, freeing activations as it goes.

The oracle is npgpt.model.forward (proven equal to torch autograd by parity_tests/): infer must give its
logits, float64 to ~1e-12 and float32 as close as two float32 orders of summation, on GPT-2, with a chunked
causal attention whose chunks do not divide T, through LoRA adapters, and under a dropout config (infer
never drops). Generation and npgpt.train.evaluate_loss must run through it (a trunk_forward that raises
proves they do not call the caching path).
"""
import tracemalloc

import numpy as np
import pytest

from gptcore.config import GPTConfig, get_config
from gptcore.data import SlidingWindowDataset
from gptcore.lora import LoRAConfig
from npgpt import (attention, block, feedforward, gelu, generate, gpt2, gqa_attention, kvcache, layernorm, llama, model,
                   rmsnorm, rope, swiglu, train)
from npgpt.loss import cross_entropy_forward
from npgpt.lora import add_lora

CONFIG = GPTConfig(vocab_size=97, context_length=160, emb_dim=48, n_heads=4, n_layers=3, drop_rate=0.0)


def _random_params(config, seed, dtype=np.float64):
    """Every parameter random (LayerNorm scales and shifts, biases too: init's ones and zeros would hide a
    dropped shift or bias); the tied head stays tied."""
    params = model.init_params(config, seed=seed, dtype=dtype)
    rng = np.random.default_rng(seed + 100)
    for name, value in params.items():
        if value.ndim == 1:
            value += (rng.standard_normal(value.shape) * 0.3).astype(dtype)
    return params


def _idx(config, B, T, seed=0):
    return np.random.default_rng(seed).integers(0, config.vocab_size, (B, T))


@pytest.mark.parametrize("chunk", [7, attention.CAUSAL_ROW_CHUNK], ids=["chunk-7", "chunk-default"])
@pytest.mark.parametrize("T", [1, 13, 150])
def test_infer_equals_forward_in_float64(monkeypatch, chunk, T):
    monkeypatch.setattr(attention, "CAUSAL_ROW_CHUNK", chunk)
    params = _random_params(CONFIG, 1)
    idx = _idx(CONFIG, 2, T)
    expected, _ = model.forward(params, idx, CONFIG)
    logits = model.infer(params, idx, CONFIG)
    assert logits.shape == (2, T, CONFIG.vocab_size) and logits.dtype == np.float64
    np.testing.assert_allclose(logits, expected, rtol=1e-12, atol=1e-12 * np.abs(expected).max())


def test_infer_equals_forward_in_float32_on_gpt2_shapes():
    """GPT-2's layout (qkv bias, tied head, 64-wide heads) at a few layers; float32 as it runs for speed."""
    config = get_config("gpt2-small", n_layers=2, context_length=200)
    params = _random_params(config, 0, np.float32)
    idx = _idx(config, 2, 130)
    expected, _ = model.forward(params, idx, config)
    logits = model.infer(params, idx, config)
    assert logits.dtype == np.float32
    np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-5 * np.abs(expected).max())


def test_infer_applies_no_dropout_and_runs_through_lora_adapters():
    config = CONFIG.replace(drop_rate=0.3)                            # infer never drops, whatever the config
    base = _random_params(config, 2)
    params = add_lora(base, LoRAConfig(rank=2, alpha=4.0, targets=("attention", "feedforward")), seed=3)
    for name in params:
        if name.endswith("lora_B"):                                   # B = 0 at init: give the adapters an effect
            params[name] = np.random.default_rng(4).standard_normal(params[name].shape) * 0.1
    idx = _idx(config, 3, 70)
    expected, _ = model.forward(params, idx, config)                  # train=False: no dropout
    np.testing.assert_allclose(model.infer(params, idx, config), expected, rtol=1e-12,
                               atol=1e-12 * np.abs(expected).max())
    assert np.abs(expected - model.forward(base, idx, config)[0]).max() > 1e-3   # the adapters did something


def test_components_infer_equal_their_forwards():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 21, 48))
    p = model.block_params(_random_params(CONFIG, 6), CONFIG)[0]
    x_before = x.copy()
    np.testing.assert_array_equal(layernorm.layernorm_infer(x, p["norm1.scale"], p["norm1.shift"]),
                                  layernorm.layernorm_forward(x, p["norm1.scale"], p["norm1.shift"])[0])
    att = {k[len("att."):]: v for k, v in p.items() if k.startswith("att.")}
    np.testing.assert_allclose(attention.multihead_attention_infer(x, att, CONFIG.n_heads),
                               attention.multihead_attention_forward(x, att, CONFIG.n_heads)[0], rtol=1e-12, atol=1e-13)
    ff = {k[len("ff."):]: v for k, v in p.items() if k.startswith("ff.")}
    np.testing.assert_array_equal(feedforward.feedforward_infer(x, ff), feedforward.feedforward_forward(x, ff)[0])
    hidden = rng.standard_normal((3, 40000)).astype(np.float32)        # more than one GELU_BLOCK per row
    np.testing.assert_array_equal(gelu.gelu_infer(hidden.copy()), gelu.gelu_forward(hidden)[0])
    with pytest.raises(ValueError, match="C-contiguous"):
        gelu.gelu_infer(hidden.T)
    np.testing.assert_allclose(block.block_infer(x, p, CONFIG), block.block_forward(x, p, CONFIG)[0],
                               rtol=1e-12, atol=1e-13)
    np.testing.assert_array_equal(x, x_before)                        # the caller's input is not written


def test_infer_holds_far_less_memory_than_the_forward_and_its_cache():
    """The forward keeps every block's cache until the backward; infer frees each block's activations once
    the next block has its input, so its peak stays near one block's work (NumPy reports to tracemalloc)."""
    config = GPTConfig(vocab_size=64, context_length=128, emb_dim=64, n_heads=4, n_layers=8, drop_rate=0.0)
    params = model.init_params(config, seed=0)
    idx = _idx(config, 4, 128)

    def peak(fn):
        tracemalloc.start()
        result = fn()
        current, peak_bytes = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        del result
        return peak_bytes

    forward_peak = peak(lambda: model.forward(params, idx, config))
    infer_peak = peak(lambda: model.infer(params, idx, config))
    assert infer_peak * 3 < forward_peak, (infer_peak, forward_peak)


def test_an_architecture_without_trunk_infer_falls_back_to_its_forward(monkeypatch):
    params = _random_params(CONFIG, 7)
    idx = _idx(CONFIG, 1, 9)
    expected = model.infer(params, idx, CONFIG)
    monkeypatch.delattr(gpt2, "trunk_infer")
    np.testing.assert_allclose(model.infer(params, idx, CONFIG), expected, rtol=1e-12, atol=1e-13)


def test_infer_checks_its_inputs():
    params = model.init_params(CONFIG, seed=0)
    with pytest.raises(ValueError, match="exceeds the context length"):
        model.infer(params, _idx(CONFIG, 1, CONFIG.context_length + 1), CONFIG)
    with pytest.raises(ValueError, match="must be integers"):
        model.infer(params, np.zeros((1, 3)), CONFIG)


def _no_caching_forward(*args, **kwargs):
    raise AssertionError("the caching trunk_forward was called where inference needs none")


@pytest.mark.parametrize("use_cache", [True, False])
def test_generation_runs_through_the_inference_trunk(monkeypatch, use_cache):
    params = _random_params(CONFIG, 8)
    prompt = _idx(CONFIG, 1, 11)[0].tolist()
    expected = generate.generate(params, CONFIG, prompt, 6, stop_ids=(), use_cache=use_cache)
    # the oracle: greedy tokens from the full forward's last logits, one token at a time
    ids = list(prompt)
    for _ in range(6):
        logits, _ = model.forward(params, np.array([ids]), CONFIG)
        ids.append(int(np.argmax(logits[0, -1])))
    assert expected == ids[len(prompt):]
    monkeypatch.setattr(gpt2, "trunk_forward", _no_caching_forward)
    assert generate.generate(params, CONFIG, prompt, 6, stop_ids=(), use_cache=use_cache) == expected


def test_evaluate_loss_runs_through_infer(monkeypatch):
    params = _random_params(CONFIG, 9)
    tokens = np.random.default_rng(10).integers(0, CONFIG.vocab_size, 200)
    dataset = SlidingWindowDataset(tokens, 16, 16)
    windows = [dataset[i] for i in range(4)]                          # the first two batches of 2, in order
    X, Y = np.stack([w[0] for w in windows]), np.stack([w[1] for w in windows])
    expected = float(cross_entropy_forward(model.forward(params, X, CONFIG)[0], Y)[0])
    monkeypatch.setattr(gpt2, "trunk_forward", _no_caching_forward)
    assert train.evaluate_loss(params, CONFIG, dataset, 2, 2) == pytest.approx(expected, rel=1e-12)


# --------------------------------------------------------------------------------------------------------
# Llama: its own inference trunk (npgpt/llama.py trunk_infer), the same oracle (the caching forward)
# --------------------------------------------------------------------------------------------------------
LLAMA = GPTConfig(vocab_size=89, context_length=160, emb_dim=48, n_heads=6, n_layers=3, drop_rate=0.0, arch="llama",
                  n_kv_heads=2, ff_dim=72, qkv_bias=False, tie_weights=False, rope_theta=500.0)


@pytest.mark.parametrize("chunk", [7, attention.CAUSAL_ROW_CHUNK], ids=["chunk-7", "chunk-default"])
@pytest.mark.parametrize("T", [1, 13, 150])
def test_llama_infer_equals_forward_in_float64(monkeypatch, chunk, T):
    monkeypatch.setattr(attention, "CAUSAL_ROW_CHUNK", chunk)
    params = _random_params(LLAMA, 11)
    idx = _idx(LLAMA, 2, T)
    expected, _ = model.forward(params, idx, LLAMA)
    logits = model.infer(params, idx, LLAMA)
    assert logits.shape == (2, T, LLAMA.vocab_size) and logits.dtype == np.float64
    np.testing.assert_allclose(logits, expected, rtol=1e-12, atol=1e-12 * np.abs(expected).max())


def test_llama_infer_equals_forward_in_float32_on_smollm2_shapes():
    """SmolLM2-135M's layout (9 query / 3 kv heads of 64, tied head) at two layers, float32 as it runs."""
    config = get_config("smollm2-135m", n_layers=2, context_length=200)
    params = _random_params(config, 12, np.float32)
    idx = _idx(config, 2, 130)
    expected, _ = model.forward(params, idx, config)
    logits = model.infer(params, idx, config)
    assert logits.dtype == np.float32
    np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-5 * np.abs(expected).max())


def test_llama_components_infer_equal_their_forwards():
    rng = np.random.default_rng(13)
    x = rng.standard_normal((2, 21, LLAMA.emb_dim))
    p = model.block_params(_random_params(LLAMA, 14), LLAMA)[0]
    cos, sin = rope.rope_tables(np.arange(21), LLAMA.head_dim, LLAMA.rope_theta, x.dtype)
    x_before = x.copy()
    np.testing.assert_array_equal(rmsnorm.rmsnorm_infer(x, p["norm1.scale"], LLAMA.norm_eps),
                                  rmsnorm.rmsnorm_forward(x, p["norm1.scale"], LLAMA.norm_eps)[0])
    ff = {k[len("ff."):]: v for k, v in p.items() if k.startswith("ff.")}
    np.testing.assert_array_equal(swiglu.swiglu_infer(x, ff), swiglu.swiglu_forward(x, ff)[0])
    att = {k[len("att."):]: v for k, v in p.items() if k.startswith("att.")}
    np.testing.assert_allclose(
        gqa_attention.gqa_attention_infer(x, att, LLAMA.n_heads, LLAMA.n_kv_heads, cos, sin),
        gqa_attention.gqa_attention_forward(x, att, LLAMA.n_heads, LLAMA.n_kv_heads, cos, sin)[0],
        rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(llama.llama_block_infer(x, p, LLAMA, cos, sin),
                               llama.llama_block_forward(x, p, LLAMA, cos, sin)[0], rtol=1e-12, atol=1e-13)
    np.testing.assert_array_equal(x, x_before)                        # the caller's input is not written


def test_llama_infer_holds_far_less_memory_than_the_forward_and_its_cache():
    config = LLAMA.replace(n_layers=8, context_length=128, emb_dim=64, n_heads=4, ff_dim=96)
    params = model.init_params(config, seed=0)
    idx = _idx(config, 4, 128)

    def peak(fn):
        tracemalloc.start()
        result = fn()
        peak_bytes = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        del result
        return peak_bytes

    assert peak(lambda: model.infer(params, idx, config)) * 3 < peak(lambda: model.forward(params, idx, config))


@pytest.mark.parametrize("use_cache", [True, False])
def test_llama_generation_runs_through_its_inference_trunk(monkeypatch, use_cache):
    params = _random_params(LLAMA, 15)
    prompt = _idx(LLAMA, 1, 11)[0].tolist()
    expected = generate.generate(params, LLAMA, prompt, 6, stop_ids=(), use_cache=use_cache)
    ids = list(prompt)                                                # oracle: the full forward, token by token
    for _ in range(6):
        logits, _ = model.forward(params, np.array([ids]), LLAMA)
        ids.append(int(np.argmax(logits[0, -1])))
    assert expected == ids[len(prompt):]
    monkeypatch.setattr(llama, "trunk_forward", _no_caching_forward)
    assert generate.generate(params, LLAMA, prompt, 6, stop_ids=(), use_cache=use_cache) == expected


@pytest.mark.parametrize("n_kv_heads", [1, 2, 6])
@pytest.mark.parametrize("T, S, padded", [(1, 9, False), (4, 9, False), (4, 9, True)],
                         ids=["decode-step", "prefill-after-cache", "left-padding"])
def test_grouped_attention_equals_attention_over_repeated_heads(n_kv_heads, T, S, padded):
    """The KV-cache path of Llama's attention reads each kv head's keys for its G query heads by broadcasting
    (gqa_attention._grouped_attention); repeating the heads first (repeat_kv, Hugging Face's way) is the
    reference: the same products, so equal bit for bit, with and without a hide mask."""
    rng = np.random.default_rng(n_kv_heads + 10 * T)
    B, H, D = 2, 6, 5
    q = rng.standard_normal((B, H, T, D)).astype(np.float32)
    k, v = (rng.standard_normal((B, n_kv_heads, S, D)).astype(np.float32) for _ in range(2))
    hide = None
    if T > 1:
        valid = np.ones((B, S), dtype=bool)
        if padded:
            valid[0, :3] = False                                     # row 0 left-padded by 3
        hide = kvcache.attention_layout(valid, T)[1]
    group = H // n_kv_heads
    reference, _ = attention._attention_core_forward(q, gqa_attention.repeat_kv(k, group),
                                                     gqa_attention.repeat_kv(v, group), causal=False,
                                                     drop_rate=0.0, rng=None, dropout_mask=None, hide=hide)
    np.testing.assert_array_equal(gqa_attention._grouped_attention(q, k, v, group, hide), reference)
