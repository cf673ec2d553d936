"""Generation: NumPy and torch choose the same tokens, with and without the KV cache, for every strategy.

torch runs twice wherever a model decodes: with the explicit reference attention, and with
F.scaled_dot_product_attention (use_sdpa=True), the path `gpt2 generate` and the benchmarks use.

- every strategy (greedy, temperature, top-k, top-p, both, beam search), drawn models/prompts/settings/seeds,
  prompts longer than the context and sequences that outgrow it: 6 runs agree (NumPy / torch / torch SDPA x
  cache / no cache)
- the cached forward's logits equal the full forward's, prompt fed in drawn chunks, with left padding too
- one sampling step on logits with exact ties: same kept sets, probabilities and tokens
- batches with left padding: same tokens in both backends
"""
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given
from hypothesis import strategies as st

import npgpt.generate as npgen
import npgpt.kvcache
from gptcore.config import GPTConfig
import torchgpt.generate as tgen
from npgpt.kvcache import KVCache
from npgpt.model import forward, trunk_forward
from parity_tests.conftest import (Values, assert_close, budget, make_array, planted_bug, random_gpt_params,
                                   record_example, small_gpt_configs, to_torch, torch_twin, values)
from torchgpt.kvcache import KVCache as TorchKVCache
from gptcore.engine.decoding import PromptCroppedWarning, inverse_cdf, top_k_mask

STRATEGIES = {
    "greedy": st.fixed_dictionaries({}),
    "temperature": st.fixed_dictionaries({"temperature": st.sampled_from([0.3, 1.0, 1.7])}),
    "top_k": st.fixed_dictionaries({"temperature": st.sampled_from([0.7, 1.0, 2.0]), "top_k": st.integers(1, 12)}),
    "top_p": st.fixed_dictionaries({"temperature": st.sampled_from([0.7, 1.0, 2.0]),
                                    "top_p": st.sampled_from([0.05, 0.3, 0.6, 0.9, 0.99, 1.0])}),
    "top_k+top_p": st.fixed_dictionaries({"temperature": st.sampled_from([0.5, 1.0, 1.5]), "top_k": st.integers(1, 12),
                                          "top_p": st.sampled_from([0.2, 0.5, 0.8, 0.95])}),
    "beam": st.fixed_dictionaries({"num_beams": st.integers(2, 4), "length_penalty": st.sampled_from([0.0, 1.0, 2.0])}),
}


@st.composite
def generation_cases(draw, strategy):
    config = draw(small_gpt_configs())
    prompt = draw(st.lists(st.integers(0, config.vocab_size - 1), min_size=1, max_size=config.context_length + 3))
    stops = draw(st.sampled_from([(), (0,), (config.vocab_size - 1, 1)]))
    options = dict(draw(STRATEGIES[strategy]), seed=draw(st.integers(0, 2**32 - 1)), stop_ids=stops)
    return config, draw(st.integers(0, 2**32 - 1)), prompt, draw(st.integers(0, 10)), options


TORCH_ATTENTION = {"torch": False, "torch sdpa": True}     # name -> use_sdpa


def torch_twins(params, config):
    """name -> the torch model holding `params`, one per attention path (TORCH_ATTENTION)."""
    return {name: torch_twin(params, config, use_sdpa=use_sdpa) for name, use_sdpa in TORCH_ATTENTION.items()}


def backends(params, config, numpy_run, torch_run):
    """name -> run(*args, **kwargs): NumPy's `numpy_run(params, config, ...)`, torch's `torch_run(model, ...)`
    for each attention path."""
    runs = {"numpy": lambda *a, **k: numpy_run(params, config, *a, **k)}
    for name, model in torch_twins(params, config).items():
        runs[name] = lambda *a, model=model, **k: torch_run(model, *a, **k)
    return runs


def all_runs(params, config, prompt, max_new_tokens, options):
    """Tokens from NumPy and both torch attention paths, each with and without the KV cache."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PromptCroppedWarning)
        return {f"{backend} {'cache' if cache else 'no cache'}": run(prompt, max_new_tokens, use_cache=cache, **options)
                for backend, run in backends(params, config, npgen.generate, tgen.generate).items()
                for cache in (True, False)}


def assert_all_equal(outputs):
    first = next(iter(outputs.values()))
    assert all(tokens == first for tokens in outputs.values()), outputs
    return first


@pytest.mark.parametrize("strategy", list(STRATEGIES))
@budget(20, thorough=128)
@given(data=st.data())
def test_strategies_same_tokens_float64(strategy, data):
    record_example()
    config, weight_seed, prompt, max_new_tokens, options = data.draw(generation_cases(strategy))
    params = random_gpt_params(config, weight_seed, np.float64)
    tokens = assert_all_equal(all_runs(params, config, prompt, max_new_tokens, options))
    assert len(tokens) <= max_new_tokens and not set(tokens) & set(options["stop_ids"])


@pytest.mark.parametrize("strategy", ["greedy", "top_k+top_p", "beam"])
@budget(20, thorough=64)
@given(data=st.data())
def test_strategies_same_tokens_float32(strategy, data):
    """float32: the two backends' logits differ by rounding (~1e-6), which changes a token only when a
    decision sits that close to a boundary (a near-tie); none of these drawn cases does."""
    record_example()
    config, weight_seed, prompt, max_new_tokens, options = data.draw(generation_cases(strategy))
    params = random_gpt_params(config, weight_seed, np.float32)
    assert_all_equal(all_runs(params, config, prompt, max_new_tokens, options))


# --------------------------------------------------------------------------------------------------------
# Cached logits == uncached logits
# --------------------------------------------------------------------------------------------------------
def cached_logits_numpy(params, config, idx, chunks, attention_mask=None):
    """Logits (B, T, V) of idx fed through a KV cache in chunks of the given sizes."""
    cache = KVCache(config, idx.shape[0], idx.shape[1], dtype=params["tok_emb.weight"].dtype)
    parts, start = [], 0
    for size in chunks:
        mask = None if attention_mask is None else attention_mask[:, start:start + size]
        x, _ = trunk_forward(params, idx[:, start:start + size], config, kv_cache=cache, attention_mask=mask)
        parts.append(x @ params["out_head.weight"].T)
        start += size
    return np.concatenate(parts, axis=1)


@torch.no_grad()
def cached_logits_torch(model, idx, chunks, attention_mask=None):
    cache = TorchKVCache(model.config, idx.shape[0], idx.shape[1], dtype=model.tok_emb.weight.dtype)
    parts, start = [], 0
    for size in chunks:
        mask = None if attention_mask is None else to_torch(attention_mask[:, start:start + size])
        parts.append(model(to_torch(idx[:, start:start + size]), kv_cache=cache, attention_mask=mask))
        start += size
    return torch.cat(parts, dim=1)


@st.composite
def chunked_batches(draw):
    config = draw(small_gpt_configs(max_context=10))
    B, T = draw(st.integers(1, 3)), draw(st.integers(1, config.context_length))
    cuts = sorted(draw(st.sets(st.integers(1, T - 1), max_size=3))) if T > 1 else []
    chunks = np.diff([0, *cuts, T]).tolist()
    seed = draw(st.integers(0, 2**32 - 1))
    idx = np.random.default_rng(seed).integers(0, config.vocab_size, (B, T))
    return config, seed, idx, chunks, draw(st.sampled_from([np.float64, np.float32]))


def check_cached_logits(config, seed, idx, chunks, dtype):
    params = random_gpt_params(config, seed, dtype)
    expected, _ = forward(params, idx, config)
    cached = cached_logits_numpy(params, config, idx, chunks)
    assert cached.dtype == dtype
    assert_close(cached, expected, name="numpy cached logits vs full forward")
    for name, model in torch_twins(params, config).items():
        with torch.no_grad():
            expected_torch = model(to_torch(idx))
        assert_close(cached_logits_torch(model, idx, chunks), expected_torch,
                     name=f"{name} cached logits vs full forward")
        if dtype == np.float64 or config.emb_dim >= 3:
            # float32 across backends only from width 3: at C <= 2 a LayerNorm's output is +-1 switching over
            # |x0 - x1| ~ sqrt(eps), where float32 rounding moves it (test_model.py, WIDTH_AT_LEAST_3); the
            # thorough profile measured 1.2e-3 there (C = 2, two layers)
            assert_close(cached, expected_torch, rtol=1e-4 if dtype == np.float32 else None,
                         name=f"numpy cached vs {name}")


@budget(25, thorough=240)
@given(case=chunked_batches())
def test_cached_logits_equal_uncached(case):
    record_example()
    check_cached_logits(*case)


def test_cached_logits_check_bites(monkeypatch):
    """The check above fails when the cache gets a position wrong (every cached token one place late)."""
    config = GPTConfig(vocab_size=20, context_length=8, emb_dim=8, n_heads=2, n_layers=2, drop_rate=0.0)
    idx = np.random.default_rng(1).integers(0, config.vocab_size, (2, 6))
    real_layout = npgpt.kvcache.attention_layout

    def late_positions(valid, T):
        positions, hide = real_layout(valid, T)
        return np.minimum(positions + 1, config.context_length - 1), hide

    monkeypatch.setattr(npgpt.kvcache, "attention_layout", late_positions)
    with planted_bug("KV cache positions shifted by one", match="numpy cached logits"):
        check_cached_logits(config, 0, idx, [3, 1, 2], np.float64)


def test_cached_logits_check_bites_on_the_sdpa_path(monkeypatch):
    """... and when the SDPA path drops the cache's mask (a chunk of new tokens then sees its own future)."""
    config = GPTConfig(vocab_size=20, context_length=8, emb_dim=8, n_heads=2, n_layers=2, drop_rate=0.0)
    idx = np.random.default_rng(1).integers(0, config.vocab_size, (2, 6))
    real_sdpa = F.scaled_dot_product_attention

    def unmasked(q, k, v, attn_mask=None, **options):
        return real_sdpa(q, k, v, **options)

    monkeypatch.setattr(F, "scaled_dot_product_attention", unmasked)
    with planted_bug("SDPA ignores the KV cache's mask", match="torch sdpa cached logits"):
        check_cached_logits(config, 0, idx, [3, 1, 2], np.float64)


@budget(25, thorough=160)
@given(config=small_gpt_configs(max_context=10), seed=st.integers(0, 2**32 - 1), data=st.data())
def test_left_padding_gives_each_row_its_own_logits(config, seed, data):
    """A left-padded row's logits at its real positions equal those of its tokens run alone (both backends)."""
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
    params = random_gpt_params(config, seed, np.float64)
    padded = {"numpy": cached_logits_numpy(params, config, idx, chunks, attention_mask=valid)}
    for name, model in torch_twins(params, config).items():
        padded[name] = cached_logits_torch(model, idx, chunks, attention_mask=valid)
    for b, row in enumerate(rows):
        alone, _ = forward(params, row[None], config)
        for name, logits in padded.items():
            assert_close(logits[b, T - row.size:], alone[0], name=f"{name} padded row vs alone")


# --------------------------------------------------------------------------------------------------------
# One sampling step, exact ties included
# --------------------------------------------------------------------------------------------------------
def sampling_oracle(row, temperature, top_k, top_p):
    """Steps 1-4 of gptcore.engine.decoding's rule for one row of logits, written out here in float64 with
    Python sorting: (probabilities, 0 where removed; the ranked kept tokens; the cumulative masses of the
    top-p prefixes, to tell near-ties at the top_p boundary)."""
    s = np.asarray(row, np.float64) / temperature
    ranked = sorted(range(s.size), key=lambda i: (-s[i], i))          # s descending, id ascending
    kept = ranked[:top_k] if top_k is not None else ranked
    exp = np.exp(s[kept] - s[kept].max())
    before_top_p = np.zeros(s.size)
    before_top_p[kept] = exp / exp.sum()
    masses = np.cumsum(before_top_p[kept])                             # in ranked order
    probs = before_top_p.copy()
    if top_p is not None and top_p < 1.0:
        n_keep = int(np.argmax(masses >= top_p)) + 1 if masses[-1] >= top_p else len(kept)
        probs[kept[n_keep:]] = 0.0
    return probs, before_top_p, kept, masses


def first_id_above(probs, u):
    """Step 5 written out: the first id whose cumulative probability exceeds u * (kept mass)."""
    total = sum(probs)
    running = 0.0
    for token, p in enumerate(probs):
        running += p
        if p > 0 and running > u * total:
            return token
    return max(i for i, p in enumerate(probs) if p > 0)


def greedy_picks(logits):
    """The greedy choice of each backend's Decoder (NumpyDecoder.greedy, TorchDecoder.greedy): they only read
    the logits, so they are called on the classes' methods without a model."""
    return {"numpy": npgen.NumpyDecoder.greedy(None, logits),
            "torch": tgen.TorchDecoder.greedy(None, to_torch(logits))}


@budget(60)
@given(recipe=values(scales=(0.1, 1.0, 5.0)), B=st.integers(1, 3), V=st.integers(1, 40),
       temperature=st.sampled_from([0.25, 1.0, 3.0]), top_k=st.one_of(st.none(), st.integers(1, 45)),
       top_p=st.one_of(st.none(), st.sampled_from([0.1, 0.5, 0.9, 1.0])), dtype=st.sampled_from([np.float64, np.float32]))
# two tied maxima at probability 0.5 each and top_p 0.5: the boundary is within float32 rounding
@example(recipe=Values(seed=4, scale=5.0, ties=True), B=1, V=3, temperature=0.25, top_k=None, top_p=0.5,
         dtype=np.float32)
def test_sampling_step_same_in_both_backends(recipe, B, V, temperature, top_k, top_p, dtype):
    record_example()
    check_sampling_step(recipe, B, V, temperature, top_k, top_p, dtype)


def check_sampling_step(recipe, B, V, temperature, top_k, top_p, dtype):
    """Both backends' steps 1-4 agree with each other and with sampling_oracle; inverse_cdf and greedy too."""
    logits = make_array(recipe, (B, V), dtype)
    probs_np = npgen.sampling_probs(logits, temperature, top_k, top_p)
    probs_torch = tgen.sampling_probs(to_torch(logits), temperature, top_k, top_p).numpy()
    np.testing.assert_array_equal(probs_np > 0, probs_torch > 0, err_msg="kept sets differ")
    assert_close(probs_torch, probs_np, rtol=1e-6 if dtype == np.float32 else None, name="sampling probabilities")
    # float32 softmax: ~1e-7 relative; the boundary of top-p is trusted only where no prefix mass is that close
    near = 1e-5 if dtype == np.float32 else 1e-12
    uniforms = np.random.default_rng(recipe.seed).random(8)
    for b in range(B):   # the stated rule, written out above: top-k by (logit desc, id asc), softmax, top-p prefix
        expected, before_top_p, kept, masses = sampling_oracle(logits[b], temperature, top_k, top_p)
        if top_k is not None:
            assert set(np.flatnonzero(top_k_mask(logits[b:b + 1], top_k)[0])) == set(kept)
        chosen = np.flatnonzero(probs_np[b])
        assert_close(probs_np[b][chosen], before_top_p[chosen], rtol=1e-6 if dtype == np.float32 else None,
                     name="sampling probabilities vs the rule")
        # where a prefix mass sits within rounding of top_p (e.g. two tied maxima at 0.5 each, top_p 0.5)
        # either side of the boundary is right; elsewhere the kept set is the rule's
        if top_p is None or not np.any(np.abs(masses - top_p) < near):
            assert_close(probs_np[b], expected, rtol=1e-6 if dtype == np.float32 else None,
                         name="sampling probabilities vs the rule")
            assert set(chosen) <= set(np.flatnonzero(expected)), "a token the rule removes kept its probability"
            assert set(np.flatnonzero(expected > 1e-30)) <= set(chosen), "a token the rule keeps was removed"
        for u in uniforms:
            token = inverse_cdf(probs_np[b], u)
            assert token == inverse_cdf(probs_torch[b], u)
            assert token == first_id_above(probs_np[b], u), f"inverse_cdf(u={u}) chose {token}"
    picks = greedy_picks(logits)
    first_max = [min(np.flatnonzero(row == row.max())) for row in logits]     # equal maxima: the lowest id
    for name, pick in picks.items():
        np.testing.assert_array_equal(pick, first_max, err_msg=f"{name} greedy pick")


# --------------------------------------------------------------------------------------------------------
# Batches with left padding
# --------------------------------------------------------------------------------------------------------
@budget(20, thorough=128)
@given(config=small_gpt_configs(), seed=st.integers(0, 2**32 - 1), data=st.data())
def test_batch_same_tokens_in_both_backends(config, seed, data):
    record_example()
    prompts = data.draw(st.lists(st.lists(st.integers(0, config.vocab_size - 1), min_size=1,
                                          max_size=config.context_length), min_size=1, max_size=3))
    options = data.draw(st.sampled_from([{}, {"temperature": 1.0}, {"temperature": 0.8, "top_k": 5, "top_p": 0.9}]))
    max_new_tokens = data.draw(st.integers(0, 8))
    params = random_gpt_params(config, seed, np.float64)
    outputs = {f"{name} {cache}": run(prompts, max_new_tokens, seed=seed, stop_ids=(0,), use_cache=cache, **options)
               for name, run in backends(params, config, npgen.generate_batch, tgen.generate_batch).items()
               for cache in (True, False)}
    assert_all_equal(outputs)
