"""GPTConfig validation and presets, parameter counts, GPT-2 initialization and the learning-rate schedules."""
import math

import numpy as np
import pytest

from npgpt import GPTConfig, get_config, model
from gptcore.config import ConfigError
from gptcore.engine.schedule import constant_lr, warmup_cosine_lr
from gptcore.engine.training import TrainSettings
from gptcore.arch import count_params_for


# ---------------------------------------------------------------------------------------------
# GPTConfig: every refusal names the field, the value and (where there is a choice) the fix
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fields, message", [
    ({"emb_dim": 10, "n_heads": 3}, r"emb_dim \(10\) must be divisible by n_heads \(3\); pick n_heads among "
                                    r"the divisors of 10"),
    ({"vocab_size": 0}, r"GPTConfig.vocab_size must be a positive integer, got 0"),
    ({"context_length": -4}, r"GPTConfig.context_length must be a positive integer, got -4"),
    ({"emb_dim": 0}, r"GPTConfig.emb_dim must be a positive integer, got 0"),
    ({"n_heads": 0}, r"GPTConfig.n_heads must be a positive integer, got 0"),       # not a ZeroDivisionError
    ({"n_layers": -1}, r"GPTConfig.n_layers must be a positive integer, got -1"),
    ({"n_layers": 2.5}, r"GPTConfig.n_layers must be a positive integer, got 2.5"),
    ({"n_layers": True}, r"GPTConfig.n_layers must be a positive integer, got True"),  # bool is not a size
    ({"drop_rate": 1.0}, r"GPTConfig.drop_rate must be in \[0, 1\), got 1.0"),
    ({"drop_rate": -0.1}, r"GPTConfig.drop_rate must be in \[0, 1\), got -0.1"),
    ({"drop_rate": math.nan}, r"GPTConfig.drop_rate must be in \[0, 1\), got nan"),
])
def test_config_refuses_with_a_clear_message(fields, message):
    with pytest.raises(ConfigError, match=message):
        GPTConfig(**fields)


def test_config_edges_that_are_fine():
    config = GPTConfig(emb_dim=12, n_heads=12, n_layers=1, drop_rate=0.0, vocab_size=1, context_length=1)
    assert config.head_dim == 1 and config.ff_dim == 48
    assert GPTConfig(drop_rate=0.999).drop_rate == 0.999


def test_unknown_preset_lists_the_choices():
    with pytest.raises(ConfigError, match=r"unknown model preset 'gpt2-tiny'; choose one of: gpt2-small, "
                                          r"gpt2-medium, gpt2-large, gpt2-xl, tiny, smollm2-135m, tiny-llama, 124M, 355M, 774M, "
                                          r"1558M"):
        get_config("gpt2-tiny")


def test_unknown_config_fields_are_named():
    with pytest.raises(ConfigError, match=r"unknown GPTConfig fields \['n_embd'\]"):
        GPTConfig.from_dict({"n_embd": 768})


def test_presets_and_aliases():
    assert get_config("124M") is get_config("gpt2-small")
    assert get_config("tiny", context_length=32).context_length == 32
    small = get_config("gpt2-small")
    assert (small.vocab_size, small.context_length, small.emb_dim, small.n_heads, small.n_layers) == \
        (50257, 1024, 768, 12, 12)
    assert small.qkv_bias and small.tie_weights


# ---------------------------------------------------------------------------------------------
# Parameter counts, from the shapes (the large presets are never allocated)
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, expected", [
    ("gpt2-small", 124_439_808),
    ("gpt2-medium", 354_823_168),
    ("gpt2-large", 774_030_080),
    ("gpt2-xl", 1_557_611_200),
])
def test_param_counts_of_the_gpt2_sizes(name, expected):
    assert count_params_for(get_config(name)) == expected


def test_untied_head_adds_its_own_matrix():
    config = get_config("gpt2-small", tie_weights=False)
    assert count_params_for(config) == 163_037_184 == 124_439_808 + 50257 * 768


@pytest.mark.parametrize("overrides", [{}, {"tie_weights": False}, {"qkv_bias": True}])
def test_count_from_shapes_equals_count_of_allocated_params(overrides):
    config = get_config("tiny", **overrides)
    assert count_params_for(config) == model.count_params(model.init_params(config))


def test_tiny_is_small_besides_the_vocabulary():
    # gptcore.config: ~100k in the two blocks; the (tied) GPT-2 token embedding adds 50257 x 64 = 3.2M
    config = get_config("tiny")
    embeddings = config.vocab_size * config.emb_dim + config.context_length * config.emb_dim
    assert count_params_for(config) - embeddings == 99_712


# ---------------------------------------------------------------------------------------------
# Initialization like GPT-2
# ---------------------------------------------------------------------------------------------

# Eight layers tell 1/sqrt(2 L) = 1/4 apart from other plausible scalings (1/L = 1/8, 1/sqrt(L) = 0.35);
# a small vocabulary keeps it quick.
INIT_CONFIG = get_config("tiny", n_layers=8, vocab_size=2000, qkv_bias=True)


def test_init_statistics():
    params = model.init_params(INIT_CONFIG, seed=0)
    residual_std = 0.02 / math.sqrt(2 * INIT_CONFIG.n_layers)
    for name, value in params.items():
        assert value.dtype == np.float32, name
        if name.endswith(".scale"):
            assert np.all(value == 1.0), name
        elif name.endswith((".shift", ".bias")):
            assert np.all(value == 0.0), name
        else:
            expected = residual_std if name.endswith(("att.out_proj.weight", "ff.fc2.weight")) else 0.02
            # 4096+ draws: the sample std is within ~1.1% (one standard error) of the true one
            assert value.std() == pytest.approx(expected, rel=0.05), name
            assert abs(value.mean()) < 4 * expected / math.sqrt(value.size), name
    assert params["out_head.weight"] is params["tok_emb.weight"]


def test_init_is_reproducible_from_the_seed():
    first, again, other = (model.init_params(INIT_CONFIG, seed=s) for s in (7, 7, 8))
    assert all(np.array_equal(first[name], again[name]) for name in first)
    assert not np.array_equal(first["tok_emb.weight"], other["tok_emb.weight"])


def test_float64_init_starts_from_the_float32_numbers():
    config = get_config("tiny", vocab_size=100)
    p32, p64 = model.init_params(config, seed=3), model.init_params(config, seed=3, dtype=np.float64)
    assert all(p64[name].dtype == np.float64 and np.array_equal(p64[name], p32[name]) for name in p32)


# ---------------------------------------------------------------------------------------------
# The architecture seam: npgpt.model dispatches on config.arch, the caches are named
# ---------------------------------------------------------------------------------------------

def test_model_runs_the_trunk_registered_for_config_arch(monkeypatch):
    """forward, backward, block_params and the classifier's trunk go through model.ARCHITECTURES: a
    trunk registered under "gpt2" that records its calls and delegates to npgpt.gpt2 gives the same
    logits and gradients, with every call routed through it."""
    from types import SimpleNamespace

    from npgpt import classifier, gpt2

    assert model.ARCHITECTURES["gpt2"] is gpt2
    config = get_config("tiny", vocab_size=50, context_length=8, n_layers=2)
    params = model.init_params(config, seed=0)
    idx = np.random.default_rng(0).integers(0, 50, (2, 5))
    logits, cache = model.forward(params, idx, config)
    grads = model.backward(np.ones_like(logits), cache)

    calls = []

    def recorded(name):
        def call(*args, **kwargs):
            calls.append(name)
            return getattr(gpt2, name)(*args, **kwargs)
        return call

    spy = SimpleNamespace(**{name: recorded(name) for name in ("trunk_forward", "trunk_backward", "block_params")})
    monkeypatch.setitem(model.ARCHITECTURES, "gpt2", spy)
    logits2, cache2 = model.forward(params, idx, config)
    grads2 = model.backward(np.ones_like(logits2), cache2)
    assert len(model.block_params(params, config)) == 2
    classifier.forward({**params, **classifier.init_head(config, 2)}, idx, np.array([5, 3]), config)
    assert calls == ["trunk_forward", "trunk_backward", "block_params", "trunk_forward"]
    np.testing.assert_array_equal(logits2, logits)
    assert grads2.keys() == grads.keys() == params.keys()
    for name in grads:
        np.testing.assert_array_equal(grads2[name], grads[name], err_msg=name)


def test_an_architecture_without_a_numpy_model_is_named(monkeypatch):
    config = get_config("tiny", vocab_size=50)
    params = model.init_params(config)
    monkeypatch.delitem(model.ARCHITECTURES, "gpt2")
    with pytest.raises(ValueError, match=r"npgpt has no model for architecture 'gpt2'"):
        model.forward(params, np.zeros((1, 2), np.int64), config)


def test_model_caches_are_named_and_hold_the_forward_arrays():
    """The caches are NamedTuples read by field; they keep the forward's own arrays (no copies)."""
    config = get_config("tiny", vocab_size=50, context_length=8, n_layers=1)
    params = model.init_params(config, seed=0)
    logits, cache = model.forward(params, np.zeros((1, 4), np.int64), config)
    assert cache.trunk.config is config and cache.trunk.params is params
    block = cache.trunk.blocks[0]
    assert block._fields == ("norm1", "att", "drop1", "norm2", "ff", "drop2")
    assert block.att.core.att is block.att.core.att_dropped           # no dropout: one array, not a copy
    assert block.norm1.scale is params["blocks.0.norm1.scale"]
    assert cache.out_head.base.weight is params["out_head.weight"]
    assert cache.trunk.final_norm.xhat.shape == (1, 4, config.emb_dim) and cache.trunk.final_norm.rstd.shape == (1, 4, 1)


# ---------------------------------------------------------------------------------------------
# Learning-rate schedules: known values
# ---------------------------------------------------------------------------------------------

def test_constant_schedule():
    assert [constant_lr(step, 3e-4) for step in (0, 1, 999)] == [3e-4] * 3


def test_warmup_cosine_known_values():
    kwargs = dict(max_lr=1.0, warmup_steps=4, max_steps=12, min_lr=0.1)
    lrs = [warmup_cosine_lr(step, **kwargs) for step in range(14)]
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0]                                  # linear warmup to max_lr
    assert lrs[4] == 1.0                                                      # cosine starts at its top
    assert lrs[6] == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi / 4)))  # a quarter of the way: 0.868
    assert lrs[8] == pytest.approx(0.55)                                      # half way: the midpoint
    assert lrs[12] == lrs[13] == 0.1                                          # min_lr from max_steps on
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:]))                      # never rises after warmup


def test_warmup_cosine_without_warmup_or_floor():
    assert warmup_cosine_lr(0, max_lr=2.0, warmup_steps=0, max_steps=10) == 2.0
    assert warmup_cosine_lr(5, max_lr=2.0, warmup_steps=0, max_steps=10) == pytest.approx(1.0)
    assert warmup_cosine_lr(10, max_lr=2.0, warmup_steps=0, max_steps=10) == 0.0


def test_train_settings_pick_the_schedule():
    cosine = TrainSettings(lr=1.0, min_lr=0.1, warmup_steps=4, cosine=True, max_steps=12)
    assert [cosine.lr_at(step) for step in (0, 8, 12)] == [0.25, pytest.approx(0.55), 0.1]
    constant = TrainSettings(lr=1.0, warmup_steps=2, max_steps=12)
    assert [constant.lr_at(step) for step in (0, 1, 2, 11)] == [0.5, 1.0, 1.0, 1.0]
