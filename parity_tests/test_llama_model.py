"""The whole Llama: npgpt.model forward/backward vs torchgpt's LlamaModel (build_model) on the same parameter
dict: logits, the loss and the gradient of EVERY parameter, for n_kv_heads in {1, a proper divisor, n_heads},
tied and untied heads, T from 1; the SDPA fast path; finite differences of the whole model; an AdamW
trajectory; planted bugs in each new backward caught through the whole model; and, with transformers
installed, Hugging Face's LlamaForCausalLM giving the same logits for the same weights.
"""
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import npgpt.attention
import npgpt.gqa_attention
import npgpt.llama
import npgpt.model as npmodel
import npgpt.rope
import npgpt.swiglu
import torchgpt.loss as tloss
from gptcore.config import GPTConfig
from gptcore.params import unique_arrays
from npgpt.loss import cross_entropy_backward, cross_entropy_forward
from npgpt.optim import AdamW
from parity_tests.conftest import (assert_close, assert_grads_close, assert_matches_finite_differences, budget,
                                   dtypes, nudged_params, planted_bug, record_example, torch_with_reference, weights)
from torchgpt.llama import LlamaModel
from torchgpt.model import build_model, load_numpy_params, to_numpy_params
from torchgpt.optim import make_adamw


@st.composite
def small_llama_configs(draw, max_vocab: int = 40, max_context: int = 12):
    """A Llama config: KV in 1..3 key/value heads, each shared by G in 1..3 query heads (H = KV * G: MQA,
    GQA and MHA), even head width D <= 6, 1-2 layers, its own SwiGLU width, tied or untied head."""
    KV, G, D = draw(st.integers(1, 3)), draw(st.integers(1, 3)), 2 * draw(st.integers(1, 3))
    return GPTConfig(arch="llama", vocab_size=draw(st.integers(4, max_vocab)),
                     context_length=draw(st.integers(3, max_context)), emb_dim=KV * G * D, n_heads=KV * G,
                     n_kv_heads=KV, n_layers=draw(st.integers(1, 2)), ff_dim=draw(st.integers(1, 24)),
                     rope_theta=draw(st.sampled_from([10000.0, 100000.0, 50.0])),
                     norm_eps=draw(st.sampled_from([1e-5, 1e-6])), drop_rate=0.0,
                     tie_weights=draw(st.booleans()))


def random_llama_params(config, seed, dtype, std=0.3):
    """The spec's init (npgpt.model.init_params) with the matrices scaled from std 0.02 to `std` and the RMSNorm
    scales jittered by N(0, 0.1): a tiny model with clear preferences and every scale doing work."""
    params = npmodel.init_params(config, seed=seed, dtype=dtype)
    rng = np.random.default_rng(seed)
    for name, value in unique_arrays(params):
        if name.endswith(".scale"):
            value += weights(rng, value.shape, dtype, std=0.1)
        else:
            value *= std / 0.02
    return params


def token_data(config, B, T, seed):
    data = np.random.default_rng([seed, 2])
    return data.integers(0, config.vocab_size, (B, T)), data.integers(0, config.vocab_size, (B, T))


def numpy_loss_and_grads(params, idx, targets, config):
    logits, cache = npmodel.forward(params, idx, config)
    loss, loss_cache = cross_entropy_forward(logits, targets)
    logits = logits.copy()                                            # the loss backward reuses buffers
    return logits, loss, npmodel.backward(cross_entropy_backward(loss_cache), cache)


def check_llama_model(config, B, T, dtype, *, seed=0, use_sdpa=False):
    """npgpt vs torch: logits, loss and every parameter's gradient. Returns (params, idx, targets, grads)."""
    params = random_llama_params(config, seed, dtype)
    idx, targets = token_data(config, B, T, seed)
    logits, loss, grads = numpy_loss_and_grads(params, idx, targets, config)
    assert logits.dtype == dtype and all(g.dtype == dtype for g in grads.values()) and list(grads) == list(params)
    if config.tie_weights:
        assert grads["out_head.weight"] is grads["tok_emb.weight"]

    def run(tdtype):
        model = load_numpy_params(build_model(config, use_sdpa=use_sdpa, seed=0).to(tdtype), nudged_params(params))
        logits_t = model(torch.from_numpy(idx))
        loss_t = tloss.cross_entropy(logits_t, torch.from_numpy(targets))
        loss_t.backward()
        return {"logits": logits_t, "loss": loss_t, **{name: model.get_parameter(name).grad for name in params}}

    expected, reference = torch_with_reference(run, dtype)
    reference = reference or {}
    assert_close(logits, expected.pop("logits"), name="llama logits", reference=reference.pop("logits", None))
    assert_close(np.asarray(loss, dtype=dtype), expected.pop("loss"), name="llama loss",
                 reference=reference.pop("loss", None))
    assert_grads_close(grads, expected, references=reference or None, prefix="llama d ")
    return params, idx, targets, grads


@budget(25)
@given(config=small_llama_configs(), B=st.integers(1, 3), T_short=st.integers(0, 11), seed=st.integers(0, 2**16),
       dtype=dtypes)
def test_llama_model(config, B, T_short, seed, dtype):
    record_example()
    T = max(1, config.context_length - T_short)                        # 1 <= T <= context_length
    check_llama_model(config, B, T, dtype, seed=seed)


@budget(10)
@given(config=small_llama_configs(), B=st.integers(1, 3), seed=st.integers(0, 2**16), dtype=dtypes)
def test_llama_model_sdpa_fast_path(config, B, seed, dtype):
    record_example()
    check_llama_model(config, B, config.context_length, dtype, seed=seed, use_sdpa=True)


TINY = GPTConfig(arch="llama", vocab_size=11, context_length=6, emb_dim=12, n_heads=3, n_kv_heads=1, n_layers=2,
                 ff_dim=10, rope_theta=100.0, drop_rate=0.0, tie_weights=True)
GROUPED = TINY.replace(emb_dim=16, n_heads=4, n_kv_heads=2, tie_weights=False)


@pytest.mark.parametrize("config", [TINY, GROUPED], ids=["mqa-tied", "gqa-untied"])
def test_llama_model_finite_differences(config):
    """Every parameter of the whole model (a few entries each) against central differences of the loss."""
    record_example()
    params, idx, targets, grads = check_llama_model(config, 2, 5, np.float64, seed=4)
    loss = lambda: float(cross_entropy_forward(npmodel.forward(params, idx, config)[0], targets)[0])
    for name, value in unique_arrays(params):
        assert_matches_finite_differences(loss, value, grads[name], name=f"llama {name}", rtol=1e-5, max_entries=4)


def test_build_model_returns_the_llama_and_names_match_the_spec():
    record_example()
    model = build_model(GROUPED, seed=0)
    assert type(model) is LlamaModel
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == npmodel.param_shapes(GROUPED)
    with pytest.raises(ValueError, match="arch='llama'"):
        LlamaModel(GPTConfig(emb_dim=8, n_heads=2))


def test_init_is_the_same_rule_in_both_twins():
    """Norm scales 1, every matrix N(0, 0.02) (Hugging Face's Llama init), the tie kept in both."""
    record_example()
    config = TINY.replace(vocab_size=500, emb_dim=48, n_heads=6, n_kv_heads=2, ff_dim=128)
    for params in (npmodel.init_params(config, seed=1), to_numpy_params(build_model(config, seed=1))):
        assert params["out_head.weight"] is params["tok_emb.weight"]
        for name, value in unique_arrays(params):
            if name.endswith(".scale"):
                assert np.all(value == 1.0)
            else:
                assert abs(float(value.std()) - 0.02) < 0.002, name


def test_adamw_trajectory_on_a_tiny_llama():
    """8 AdamW steps (weight decay on matrices, float64) from the same weights on the same batches: the loss and
    every parameter stay equal in npgpt and torch (rounding grows through Adam's normalized steps: 1e-9)."""
    record_example()
    config = GROUPED.replace(tie_weights=True)
    params = random_llama_params(config, 5, np.float64, std=0.1)
    model = load_numpy_params(build_model(config, seed=0).double(), params)
    optimizer_np = AdamW(lr=1e-2, weight_decay=0.1)
    optimizer_t = make_adamw(model, lr=1e-2, weight_decay=0.1)
    for step in range(8):
        idx, targets = token_data(config, 2, 6, seed=step)
        _, loss, grads = numpy_loss_and_grads(params, idx, targets, config)
        optimizer_np.step(params, grads)
        optimizer_t.zero_grad()
        loss_t = tloss.cross_entropy(model(torch.from_numpy(idx)), torch.from_numpy(targets))
        loss_t.backward()
        optimizer_t.step()
        assert_close(loss, loss_t, rtol=1e-9, name=f"trajectory loss at step {step}")
    assert_grads_close(params, to_numpy_params(model), rtol=1e-9, prefix="trajectory ")


# ---- planted bugs, caught through the whole model --------------------------------------------------------
def rmsnorm_backward_without_mean_term(real):
    def broken(dout, cache):
        dx, dscale = real(dout, cache)
        return dx + cache.rstd * cache.xhat * (dout * cache.scale * cache.xhat).mean(-1, keepdims=True), dscale
    return broken


def rope_backward_by_plus_angle(real):
    return lambda dout, cache: npgpt.rope._rotate(dout, cache.cos, cache.sin)


def group_gradient_not_summed(real):
    """The first query head's share of each kv head's gradient only."""
    return lambda a, b, out: np.matmul(a[0].T, b[0], out=out)


def silu_backward_without_derivative(real):
    """The block helper of silu_backward and of swiglu_backward's fused gate: out = dout * sig only."""
    return lambda dout, g, sig, out: np.multiply(dout, sig, out=out)


PLANTED = {
    "RMSNorm backward without its mean term": (npgpt.llama, "rmsnorm_backward", rmsnorm_backward_without_mean_term),
    "RoPE backward rotating by +angle": (npgpt.gqa_attention, "rope_backward", rope_backward_by_plus_angle),
    "GQA backward not summing over the group": (npgpt.attention, "summed_over_group", group_gradient_not_summed),
    "SwiGLU backward without the silu' term": (npgpt.swiglu, "_silu_backward_into", silu_backward_without_derivative),
}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", list(PLANTED))
def test_planted_bug_is_caught_by_the_model_check(case, dtype, monkeypatch):
    record_example()
    module, attribute, make_broken = PLANTED[case]
    check_llama_model(GROUPED, 2, 5, dtype, seed=1)
    monkeypatch.setattr(module, attribute, make_broken(getattr(module, attribute)))
    with planted_bug(case):
        check_llama_model(GROUPED, 2, 5, dtype, seed=1)


# ---- Hugging Face's LlamaForCausalLM: a third implementation ---------------------------------------------
HF_NAMES = {"tok_emb.weight": "model.embed_tokens.weight", "final_norm.scale": "model.norm.weight",
            "out_head.weight": "lm_head.weight"}
HF_BLOCK_NAMES = {"norm1.scale": "input_layernorm.weight", "att.W_query.weight": "self_attn.q_proj.weight",
                  "att.W_key.weight": "self_attn.k_proj.weight", "att.W_value.weight": "self_attn.v_proj.weight",
                  "att.out_proj.weight": "self_attn.o_proj.weight", "norm2.scale": "post_attention_layernorm.weight",
                  "ff.gate.weight": "mlp.gate_proj.weight", "ff.up.weight": "mlp.up_proj.weight",
                  "ff.down.weight": "mlp.down_proj.weight"}


def hf_name(name):
    if name in HF_NAMES:
        return HF_NAMES[name]
    _, i, rest = name.split(".", 2)
    return f"model.layers.{i}.{HF_BLOCK_NAMES[rest]}"


@pytest.mark.parametrize("tie", [True, False])
def test_logits_equal_hugging_face_llama(tie):
    """transformers' LlamaForCausalLM, built from a tiny random config and given our weights, computes the
    logits of npgpt and torchgpt: the conventions (rotate-half RoPE, GQA head order, RMSNorm, SwiGLU, the tie)
    agree; any of them wrong moves the logits by O(1). Tolerance: the float32 budget (1e-5 of the magnitude),
    not float64's, because Hugging Face computes the RMSNorm and the rotary angles in float32 whatever the
    model's dtype (measured: ~4e-7 relative from those alone, with the model in float64)."""
    transformers = pytest.importorskip("transformers")
    record_example()
    config = GPTConfig(arch="llama", vocab_size=37, context_length=16, emb_dim=24, n_heads=6, n_kv_heads=2,
                       n_layers=2, ff_dim=40, rope_theta=5000.0, norm_eps=1e-6, drop_rate=0.0, tie_weights=tie)
    hf_config = transformers.LlamaConfig(
        vocab_size=config.vocab_size, hidden_size=config.emb_dim, intermediate_size=config.ff_dim,
        num_hidden_layers=config.n_layers, num_attention_heads=config.n_heads,
        num_key_value_heads=config.n_kv_heads, max_position_embeddings=config.context_length,
        rope_theta=config.rope_theta, rms_norm_eps=config.norm_eps, tie_word_embeddings=tie,
        attention_bias=False, mlp_bias=False)
    hf = transformers.LlamaForCausalLM(hf_config).double().eval()
    params = random_llama_params(config, 7, np.float64)
    state = {hf_name(name): torch.from_numpy(value.copy()) for name, value in params.items()}
    missing, unexpected = hf.load_state_dict(state, strict=False)
    assert not unexpected and all("rotary" in name for name in missing), (missing, unexpected)
    idx = np.random.default_rng(0).integers(0, config.vocab_size, (2, 16))
    ours, _ = npmodel.forward(params, idx, config)
    with torch.no_grad():
        expected = hf(torch.from_numpy(idx)).logits
        ours_t = load_numpy_params(build_model(config).double(), params)(torch.from_numpy(idx))
    assert_close(ours, expected, rtol=1e-5, name="npgpt logits vs Hugging Face")
    assert_close(ours_t, expected, rtol=1e-5, name="torchgpt logits vs Hugging Face")
