"""Generation from a Llama: NumPy and torch (explicit attention and SDPA) choose the same tokens, with and
without the KV cache, for every strategy; the cached forward's logits (RoPE at the cache's absolute positions,
keys and values cached per key/value head) equal the full forward's, chunked and with left padding.
The strategies and comparisons are test_generate.py's, run on Llama models."""
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import npgpt.generate as npgen
import npgpt.kvcache
import torchgpt.generate as tgen
from gptcore.config import GPTConfig
from gptcore.engine.decoding import PromptCroppedWarning
from npgpt.model import forward
from parity_tests.conftest import assert_close, budget, planted_bug, record_example, to_torch
from parity_tests.test_generate import STRATEGIES, assert_all_equal, cached_logits_numpy, cached_logits_torch
from parity_tests.test_llama_model import random_llama_params, small_llama_configs
from torchgpt.model import build_model, load_numpy_params


def llama_twins(params, config):
    """name -> an eval-mode torch Llama holding `params` in their dtype, one per attention path."""
    dtype = {np.float64: torch.float64, np.float32: torch.float32}[params["tok_emb.weight"].dtype.type]
    return {name: load_numpy_params(build_model(config, use_sdpa=sdpa).to(dtype), params).eval()
            for name, sdpa in (("torch", False), ("torch sdpa", True))}


def all_runs(params, config, prompt, max_new_tokens, options, numpy_run=npgen.generate, torch_run=tgen.generate):
    """Tokens from NumPy and both torch attention paths, each with and without the KV cache."""
    runs = {"numpy": lambda *a, **k: numpy_run(params, config, *a, **k)}
    for name, model in llama_twins(params, config).items():
        runs[name] = lambda *a, model=model, **k: torch_run(model, *a, **k)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PromptCroppedWarning)
        return {f"{backend} {'cache' if cache else 'no cache'}": run(prompt, max_new_tokens, use_cache=cache, **options)
                for backend, run in runs.items() for cache in (True, False)}


@st.composite
def generation_cases(draw, strategy):
    config = draw(small_llama_configs())
    prompt = draw(st.lists(st.integers(0, config.vocab_size - 1), min_size=1, max_size=config.context_length + 3))
    stops = draw(st.sampled_from([(), (0,), (config.vocab_size - 1, 1)]))
    options = dict(draw(STRATEGIES[strategy]), seed=draw(st.integers(0, 2**32 - 1)), stop_ids=stops)
    return config, draw(st.integers(0, 2**32 - 1)), prompt, draw(st.integers(0, 10)), options


@pytest.mark.parametrize("strategy", list(STRATEGIES))
@budget(6)
@given(data=st.data())
def test_llama_strategies_same_tokens_float64(strategy, data):
    record_example()
    config, weight_seed, prompt, max_new_tokens, options = data.draw(generation_cases(strategy))
    params = random_llama_params(config, weight_seed, np.float64)
    tokens = assert_all_equal(all_runs(params, config, prompt, max_new_tokens, options))
    assert len(tokens) <= max_new_tokens and not set(tokens) & set(options["stop_ids"])


@pytest.mark.parametrize("strategy", ["greedy", "beam"])
@budget(3)
@given(data=st.data())
def test_llama_strategies_same_tokens_float32(strategy, data):
    """float32: the backends' logits differ by rounding (~1e-6); none of these drawn cases sits on a near-tie."""
    record_example()
    config, weight_seed, prompt, max_new_tokens, options = data.draw(generation_cases(strategy))
    params = random_llama_params(config, weight_seed, np.float32)
    assert_all_equal(all_runs(params, config, prompt, max_new_tokens, options))


@st.composite
def chunked_batches(draw):
    config = draw(small_llama_configs(max_context=10))
    B, T = draw(st.integers(1, 3)), draw(st.integers(1, config.context_length))
    cuts = sorted(draw(st.sets(st.integers(1, T - 1), max_size=3))) if T > 1 else []
    seed = draw(st.integers(0, 2**32 - 1))
    idx = np.random.default_rng(seed).integers(0, config.vocab_size, (B, T))
    return config, seed, idx, np.diff([0, *cuts, T]).tolist(), draw(st.sampled_from([np.float64, np.float32]))


def check_cached_logits(config, seed, idx, chunks, dtype):
    params = random_llama_params(config, seed, dtype)
    expected, _ = forward(params, idx, config)
    cached = cached_logits_numpy(params, config, idx, chunks)
    assert cached.dtype == dtype
    assert_close(cached, expected, name="numpy cached logits vs full forward")
    for name, model in llama_twins(params, config).items():
        with torch.no_grad():
            expected_torch = model(to_torch(idx))
        assert_close(cached_logits_torch(model, idx, chunks), expected_torch, name=f"{name} cached logits vs full")
        assert_close(cached, expected_torch, rtol=1e-4 if dtype == np.float32 else None, name=f"numpy cached vs {name}")


@budget(15)
@given(case=chunked_batches())
def test_llama_cached_logits_equal_uncached(case):
    record_example()
    check_cached_logits(*case)


def test_llama_cached_logits_check_bites(monkeypatch):
    """The check fails when the cache forgets its offset: each chunk's tokens rotated from position 0 again.
    (Shifting EVERY position by one would not be a bug for RoPE: scores depend on differences only.)"""
    record_example()
    config = GPTConfig(arch="llama", vocab_size=20, context_length=8, emb_dim=8, n_heads=2, n_kv_heads=1,
                       n_layers=2, ff_dim=12, drop_rate=0.0)
    idx = np.random.default_rng(1).integers(0, config.vocab_size, (2, 6))
    check_cached_logits(config, 0, idx, [3, 1, 2], np.float64)
    real_layout = npgpt.kvcache.attention_layout
    monkeypatch.setattr(npgpt.kvcache, "attention_layout",
                        lambda valid, T: (lambda pos, hide: (np.maximum(pos - (valid.shape[1] - T), 0), hide))(
                            *real_layout(valid, T)))
    with planted_bug("Llama KV cache positions without the cache's offset", match="numpy cached logits"):
        check_cached_logits(config, 0, idx, [3, 1, 2], np.float64)


@budget(10)
@given(config=small_llama_configs(max_context=10), seed=st.integers(0, 2**32 - 1), data=st.data())
def test_llama_left_padding_gives_each_row_its_own_logits(config, seed, data):
    """A left-padded row's logits at its real positions equal those of its tokens run alone (both backends):
    RoPE counts the real tokens only."""
    record_example()
    T = config.context_length
    lengths = data.draw(st.lists(st.integers(1, T), min_size=1, max_size=3))
    rng = np.random.default_rng(seed)
    rows = [rng.integers(0, config.vocab_size, n) for n in lengths]
    idx = np.zeros((len(rows), T), dtype=np.int64)
    valid = np.zeros((len(rows), T), dtype=bool)
    for b, row in enumerate(rows):
        idx[b, T - row.size:], valid[b, T - row.size:] = row, True
    split = data.draw(st.integers(1, T))
    chunks = [split, T - split] if split < T else [T]
    params = random_llama_params(config, seed, np.float64)
    padded = {"numpy": cached_logits_numpy(params, config, idx, chunks, attention_mask=valid)}
    for name, model in llama_twins(params, config).items():
        padded[name] = cached_logits_torch(model, idx, chunks, attention_mask=valid)
    for b, row in enumerate(rows):
        alone, _ = forward(params, row[None], config)
        for name, logits in padded.items():
            assert_close(logits[b, T - row.size:], alone[0], name=f"{name} padded row vs alone")


@budget(6)
@given(config=small_llama_configs(), seed=st.integers(0, 2**32 - 1), data=st.data())
def test_llama_batch_same_tokens_in_both_backends(config, seed, data):
    record_example()
    prompts = data.draw(st.lists(st.lists(st.integers(0, config.vocab_size - 1), min_size=1,
                                          max_size=config.context_length), min_size=1, max_size=3))
    options = data.draw(st.sampled_from([{}, {"temperature": 1.0}, {"temperature": 0.8, "top_k": 5, "top_p": 0.9}]))
    params = random_llama_params(config, seed, np.float64)
    assert_all_equal(all_runs(params, config, prompts, data.draw(st.integers(0, 8)), dict(options, seed=seed,
                                                                                          stop_ids=(0,)),
                              numpy_run=npgen.generate_batch, torch_run=tgen.generate_batch))
