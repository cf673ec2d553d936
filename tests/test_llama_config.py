"""The Llama fields of GPTConfig (ff_dim, n_kv_heads, rope_theta, norm_eps), the Llama presets and the
Llama spec in gptcore.arch: every refusal names the field and the fix, old config.json files still load."""
import math

import pytest

from gptcore.arch import SPECS, count_params_for, flops_per_token, lora_target_groups, param_shapes, spec_for
from gptcore.config import ConfigError, GPTConfig, get_config


def llama(**fields):
    base = dict(arch="llama", vocab_size=50, context_length=16, emb_dim=24, n_heads=6, n_kv_heads=2, n_layers=2,
                ff_dim=40, drop_rate=0.0)
    base.update(fields)
    return GPTConfig(**base)


@pytest.mark.parametrize("fields, message", [
    ({"n_kv_heads": 4}, r"n_heads \(6\) must be a multiple of n_kv_heads \(4\).*divisors of 6"),
    ({"n_heads": 5, "n_kv_heads": 1}, r"emb_dim \(24\) must be divisible by n_heads \(5\)"),
    ({"n_heads": 8, "emb_dim": 24 + 16, "n_kv_heads": 4}, r"even head width, got emb_dim / n_heads = 40 / 8 = 5"),
    ({"qkv_bias": True}, r"Llama architecture has no biases: set qkv_bias=False"),
    ({"drop_rate": 0.1}, r"Llama architecture has no dropout: set drop_rate=0"),
    ({"ff_dim": 0}, r"GPTConfig.ff_dim must be a positive integer, got 0"),
    ({"n_kv_heads": 0}, r"GPTConfig.n_kv_heads must be a positive integer, got 0"),
    ({"rope_theta": 0.0}, r"GPTConfig.rope_theta must be a positive number, got 0.0"),
    ({"rope_theta": math.inf}, r"GPTConfig.rope_theta must be a positive number, got inf"),
    ({"norm_eps": -1e-6}, r"GPTConfig.norm_eps must be a positive number, got -1e-06"),
    ({"norm_eps": math.nan}, r"GPTConfig.norm_eps must be a positive number, got nan"),
])
def test_llama_config_refuses_with_a_clear_message(fields, message):
    with pytest.raises(ConfigError, match=message):
        llama(**fields)


def test_gpt2_has_no_grouped_query_attention():
    with pytest.raises(ConfigError, match=r"GPT-2 has no grouped-query attention: n_kv_heads \(2\) must equal "
                                          r"n_heads \(4\)"):
        GPTConfig(emb_dim=16, n_heads=4, n_kv_heads=2)


def test_derived_fields_default_and_follow():
    """ff_dim defaults to 4C and n_kv_heads to H; replace() keeps a default following its field, an explicit
    value stays."""
    gpt2 = GPTConfig(emb_dim=32, n_heads=4)
    assert (gpt2.ff_dim, gpt2.n_kv_heads, gpt2.kv_dim) == (128, 4, 32)
    resized = gpt2.replace(emb_dim=48, n_heads=6)
    assert (resized.ff_dim, resized.n_kv_heads) == (192, 6)
    assert GPTConfig(emb_dim=32, n_heads=4, ff_dim=100).replace(emb_dim=48).ff_dim == 100
    smol = get_config("smollm2-135m")
    assert smol.replace(n_layers=2).n_kv_heads == 3 and smol.replace(n_layers=2).ff_dim == 1536
    assert GPTConfig(emb_dim=32, n_heads=4) == GPTConfig(emb_dim=32, n_heads=4, ff_dim=128, n_kv_heads=4)


def test_old_config_json_without_the_new_keys_loads_and_round_trips():
    old = {"vocab_size": 50257, "context_length": 64, "emb_dim": 64, "n_heads": 4, "n_layers": 2,
           "drop_rate": 0.0, "qkv_bias": False, "tie_weights": True, "arch": "gpt2"}
    config = GPTConfig.from_dict(old)
    assert config == get_config("tiny") and config.ff_dim == 256 and config.n_kv_heads == 4
    assert GPTConfig.from_dict(config.to_dict()) == config
    smol = get_config("smollm2-135m")
    assert GPTConfig.from_dict(smol.to_dict()) == smol


def test_smollm2_preset_matches_the_published_model():
    """SmolLM2-135M: Hugging Face's config.json values, and its 134,515,008 parameters (tied head)."""
    c = get_config("smollm2-135m")
    assert (c.arch, c.n_layers, c.emb_dim, c.n_heads, c.n_kv_heads, c.head_dim, c.ff_dim) == \
        ("llama", 30, 576, 9, 3, 64, 1536)
    assert (c.rope_theta, c.norm_eps, c.vocab_size, c.tie_weights, c.context_length) == \
        (100000.0, 1e-5, 49152, True, 8192)
    # By hand: embedding 49152*576; per layer q, o 576^2 each, k, v 192*576 each, gate/up/down 3*1536*576,
    # two norms 2*576; final norm 576.
    per_layer = 2 * 576 * 576 + 2 * 192 * 576 + 3 * 1536 * 576 + 2 * 576
    assert count_params_for(c) == 49152 * 576 + 30 * per_layer + 576 == 134_515_008


def test_llama_spec_names_and_shapes():
    c = llama()
    shapes = param_shapes(c)
    assert spec_for(c) is SPECS["llama"]
    assert shapes["tok_emb.weight"] == (50, 24) and "pos_emb.weight" not in shapes
    assert shapes["blocks.1.att.W_query.weight"] == (24, 24)
    assert shapes["blocks.1.att.W_key.weight"] == shapes["blocks.1.att.W_value.weight"] == (8, 24)   # 2 heads of 4
    assert shapes["blocks.0.ff.gate.weight"] == shapes["blocks.0.ff.up.weight"] == (40, 24)
    assert shapes["blocks.0.ff.down.weight"] == (24, 40)
    assert shapes["final_norm.scale"] == (24,) and shapes["out_head.weight"] == (50, 24)
    assert not any(name.endswith((".bias", ".shift")) for name in shapes)
    assert len(shapes) == 1 + 2 * 9 + 2
    spec = spec_for(c)
    assert spec.init_rule("blocks.0.norm1.scale", c) == ("ones", 1.0)
    assert spec.init_rule("blocks.0.ff.down.weight", c) == ("normal", 0.02)
    assert lora_target_groups(c)["feedforward"] == ("ff.gate", "ff.up", "ff.down")
    assert not spec.HAS_POSITION_TABLE and spec.EMBEDDINGS == ("tok_emb.weight",)


def test_llama_flops_per_token_by_hand():
    c = llama()
    n_matmul = 2 * (24 * 24 * 2 + 8 * 24 * 2 + 3 * 40 * 24 + 2 * 24) + 24 + 50 * 24   # the head once
    assert flops_per_token(c, 16) == 6 * n_matmul + 12 * 2 * 24 * 16
    assert flops_per_token(c.replace(tie_weights=False), 16) == flops_per_token(c, 16)   # lookup left out
