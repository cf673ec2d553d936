"""Llama 3's "llama3" rope scaling (Llama 3.1 / 3.2): the inverse frequencies against a value worked out by
hand and against transformers' own implementation, the same tables in both twins, and the scaling reaching
the model: npgpt, torchgpt and Hugging Face's LlamaForCausalLM (loading the folder save_weights writes) give
the same logits for a scaled config, and different ones without the scaling.
"""
import math

import numpy as np
import pytest
import torch

import npgpt.model as npmodel
import npgpt.rope as nprope
import torchgpt.rope as trope
from gptcore.arch.llama import inverse_frequencies, rope_inverse_frequencies
from gptcore.config import GPTConfig
from gptcore.formats.weights import save_weights
from torchgpt.model import build_model, load_numpy_params

LLAMA_3_1 = dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                 original_max_position_embeddings=8192)
LLAMA_3_2 = dict(LLAMA_3_1, factor=32.0)
# A short "pretraining context" of 64 so that a head width of 8 has a frequency in each of the three regimes.
SHORT = dict(LLAMA_3_1, original_max_position_embeddings=64)


def test_llama3_scaling_matches_a_value_worked_out_by_hand():
    # D = 8, theta = 10000: inv_freq = 1, 0.1, 0.01, 0.001; wavelengths 2 pi / inv_freq = 6.3, 62.8, 628, 6283.
    # L = 64, l = 1, h = 4: wavelengths under L / h = 16 stay, over L / l = 64 are divided by factor 8, and
    # 62.8 lies between: smooth = (64 / 62.83 - 1) / (4 - 1) = 0.0061973,
    #                    (1 - smooth) * 0.1 / 8 + smooth * 0.1 = 0.0125 + 0.0875 * smooth = 0.0130422560...
    smooth = (64 * 0.1 / (2 * math.pi) - 1) / 3
    expected = [1.0, 0.0125 + 0.0875 * smooth, 0.01 / 8, 0.001 / 8]
    assert expected[1] == pytest.approx(0.013042256043820465, rel=1e-15)
    np.testing.assert_allclose(inverse_frequencies(8, 10000.0, SHORT), expected, rtol=1e-14)
    np.testing.assert_allclose(inverse_frequencies(8, 10000.0), [1.0, 0.1, 0.01, 0.001], rtol=1e-14)


@pytest.mark.parametrize("scaling", [LLAMA_3_1, LLAMA_3_2, SHORT], ids=["llama-3.1", "llama-3.2", "short"])
def test_llama3_scaling_equals_transformers(scaling):
    """transformers.modeling_rope_utils' llama3 rule, an implementation independent of ours. Tolerance 1e-6
    relative: transformers computes theta^(-2j/D) and the scaling in float32 (measured ~1e-7 apart)."""
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    D, theta = 64, 500000.0
    hf_config = LlamaConfig(hidden_size=2 * D, num_attention_heads=2, head_dim=D, rope_theta=theta,
                            max_position_embeddings=131072, rope_scaling=dict(scaling))
    hf_inv_freq, attention_factor = ROPE_INIT_FUNCTIONS["llama3"](hf_config, None)
    assert attention_factor == 1.0            # llama3 leaves cos/sin unscaled, as our tables do
    ours = inverse_frequencies(D, theta, scaling)
    np.testing.assert_allclose(ours, hf_inv_freq.double().numpy(), rtol=1e-6)
    assert not np.allclose(ours, inverse_frequencies(D, theta), rtol=1e-3)      # the scaling did something


def test_both_twins_build_the_same_scaled_tables():
    positions = np.arange(50)
    cos, sin = nprope.rope_tables(positions, 8, 10000.0, np.float64, scaling=SHORT)
    cos_t, sin_t = trope.rope_tables(torch.as_tensor(positions), 8, 10000.0, torch.float64, scaling=SHORT)
    # the same float64 angles; NumPy's and torch's sin/cos may round the last bit differently
    np.testing.assert_allclose(cos_t.numpy(), cos, rtol=0, atol=1e-15)
    np.testing.assert_allclose(sin_t.numpy(), sin, rtol=0, atol=1e-15)
    angles = positions[:, None] * inverse_frequencies(8, 10000.0, SHORT)
    np.testing.assert_allclose(cos[:, :4], np.cos(angles), rtol=0, atol=1e-15)


def test_config_reaches_the_frequencies():
    config = GPTConfig(arch="llama", vocab_size=32, context_length=64, emb_dim=16, n_heads=2, n_kv_heads=1,
                       n_layers=1, ff_dim=24, drop_rate=0.0, rope_scaling=SHORT)
    np.testing.assert_array_equal(rope_inverse_frequencies(config), inverse_frequencies(8, 10000.0, SHORT))
    with pytest.raises(ValueError, match="'yarn' is not implemented"):
        inverse_frequencies(8, 10000.0, dict(SHORT, rope_type="yarn"))


def scaled_tiny_llama(scaling):
    return GPTConfig(arch="llama", vocab_size=48, context_length=64, emb_dim=32, n_heads=4, n_kv_heads=2,
                     n_layers=2, ff_dim=40, rope_theta=10000.0, tie_weights=False, drop_rate=0.0,
                     rope_scaling=scaling)


def test_scaled_model_gives_the_logits_of_hugging_face_in_both_twins(tmp_path):
    """Positions up to 40 with L = 64 and D = 8: the slow frequencies are divided by 8, which moves the logits
    (checked: the unscaled model differs). npgpt and torchgpt agree in float64 (1e-10 relative); Hugging
    Face's LlamaForCausalLM, loading the folder our writer makes (config.json with rope_scaling), agrees to
    the float32 budget (it computes the frequencies and RMSNorm in float32, ~1e-6 of the magnitude)."""
    from transformers import LlamaForCausalLM

    config = scaled_tiny_llama(SHORT)
    params = npmodel.init_params(config, seed=3)
    params = {name: value * 4 if name.endswith("W_query.weight") else value for name, value in params.items()}
    idx = np.random.default_rng(0).integers(0, config.vocab_size, size=(2, 40))

    params64 = {name: value.astype(np.float64) for name, value in params.items()}
    logits, _ = npmodel.forward(params64, idx, config)
    unscaled, _ = npmodel.forward(params64, idx, config.replace(rope_scaling=None))
    scale = np.abs(logits).max()
    assert np.abs(logits - unscaled).max() > 1e-3 * scale

    torch_model = load_numpy_params(build_model(config).double(), params64).eval()
    with torch.no_grad():
        torch_logits = torch_model(torch.as_tensor(idx)).numpy()
    np.testing.assert_allclose(torch_logits, logits, rtol=0, atol=1e-10 * scale)

    folder = save_weights(tmp_path / "hf", config, params, format="huggingface")
    hf_model = LlamaForCausalLM.from_pretrained(folder, torch_dtype=torch.float32).eval()
    with torch.no_grad():
        hf_logits = hf_model(torch.as_tensor(idx)).logits.double().numpy()
    np.testing.assert_allclose(hf_logits, logits, rtol=0, atol=1e-5 * scale)
