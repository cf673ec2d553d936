"""The whole GPT: npgpt.model forward/backward vs torchgpt.GPTModel on the same parameter dict.

Logits, the cross-entropy loss (ignore_index=-100 on some targets) and the gradient of EVERY parameter,
tied and untied head, qkv bias on and off, dropout off and on with the same masks (npgpt draws them from a
RecordingGenerator, torch gets them through fed_dropout_masks), explicit attention and
the SDPA fast path.
"""
import numpy as np
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

import npgpt.model as npmodel
import torchgpt.loss as tloss
from npgpt.loss import cross_entropy_backward, cross_entropy_forward
from torchgpt.model import GPTModel, load_numpy_params
from parity_tests.conftest import (KeyBiasFloors, RecordingGenerator, assert_close, assert_grads_close, budget, dtypes,
                                   fed_dropout_masks, nudged_params, random_gpt_params, record_example,
                                   small_gpt_configs, torch_with_reference)


# WIDTH_AT_LEAST_3: with C <= 2 a LayerNorm's output is +-scale + shift up to eps (exactly shift for C = 1),
# so the final norm passes the trunk a gradient ~1e-5 of the terms it cancels (0 for C = 1): every trunk
# gradient is then rounding noise of those terms (measured: 1e-3 relative in float32, 1e-11 in float64).
# test_layernorm covers C = 2 with the terms as magnitude; the models here use C >= 3.


def model_params(config, seed, dtype, emb_scale=1.0):
    """random_gpt_params (std-0.3 weights, LayerNorm and biases off their 1/0 init, so every term matters),
    with the embeddings scaled by emb_scale (large: the first LayerNorm's stability); a tie stays a tie."""
    params = random_gpt_params(config, seed, dtype)
    params["tok_emb.weight"] *= dtype(emb_scale)
    params["pos_emb.weight"] *= dtype(emb_scale)
    return params


def check_model(config, B, T, dtype, *, seed=0, emb_scale=1.0, ignored=0.0, use_sdpa=False):
    """npgpt vs torch: logits, loss and every parameter's gradient. Returns npgpt's (loss, grads)."""
    params = model_params(config, seed, dtype, emb_scale)
    data = np.random.default_rng([seed, 2])
    idx = data.integers(0, config.vocab_size, (B, T))
    targets = data.integers(0, config.vocab_size, (B, T))
    targets[data.random((B, T)) < ignored] = -100
    targets.reshape(-1)[0] = data.integers(0, config.vocab_size)      # at least one target counts
    train = config.drop_rate > 0
    rng = RecordingGenerator(seed)
    logits, cache = npmodel.forward(params, idx, config, train=train, rng=rng)
    masks = rng.keep_masks(config.drop_rate)
    assert len(masks) == (1 + 3 * config.n_layers if train else 0)
    loss, loss_cache = cross_entropy_forward(logits, targets)
    logits = logits.copy()                                            # the loss backward reuses buffers
    grads = npmodel.backward(cross_entropy_backward(loss_cache), cache)
    assert logits.dtype == dtype and all(g.dtype == dtype for g in grads.values()) and list(grads) == list(params)
    if config.tie_weights:
        assert grads["out_head.weight"] is grads["tok_emb.weight"]
    floors = {}

    def run(tdtype, sdpa=use_sdpa):
        model = GPTModel(config, use_sdpa=sdpa, seed=0).to(tdtype)
        model = load_numpy_params(model, nudged_params(params)).train(train)
        keys = KeyBiasFloors(model)
        remaining = iter(masks)
        with fed_dropout_masks(model, remaining if train else []):
            logits_t = model(torch.from_numpy(idx))
        assert next(remaining, None) is None, "torch used fewer dropout masks than npgpt drew"
        loss_t = tloss.cross_entropy(logits_t, torch.from_numpy(targets))
        loss_t.backward()
        floors.update(keys.floors())
        return {"logits": logits_t, "loss": loss_t, **{name: model.get_parameter(name).grad for name in params}}

    expected, reference = torch_with_reference(run, dtype)
    ours = {"logits": logits, "loss": np.asarray(loss, dtype=dtype), **grads}
    assert_close(ours.pop("logits"), expected.pop("logits"), name="logits",
                 reference=None if reference is None else reference.pop("logits"))
    # the loss, log-sum-exp minus the target's logit, cancels to ~1e-8 for a saturated model (embeddings at 30x,
    # the thorough profile): measured against the logits it subtracts, it is then one ulp of them
    assert_close(ours.pop("loss"), expected.pop("loss"), name="loss", floor=float(np.abs(logits).max(initial=0.0)),
                 reference=None if reference is None else reference.pop("loss"))
    assert_grads_close(grads, expected, references=reference, floors=floors, prefix="d ")
    return loss, grads


@budget(25)
@given(config=small_gpt_configs(max_vocab=40), drop_rate=st.sampled_from([0.0, 0.0, 0.1, 0.5]), B=st.integers(1, 3),
       T_short=st.integers(0, 11), seed=st.integers(0, 2**16), emb_scale=st.sampled_from([0.1, 1.0, 1.0, 30.0]),
       ignored=st.sampled_from([0.0, 0.3]), dtype=dtypes)
def test_model(config, drop_rate, B, T_short, seed, emb_scale, ignored, dtype):
    record_example()
    assume(config.emb_dim >= 3)                                          # see WIDTH_AT_LEAST_3
    T = max(1, config.context_length - T_short)                        # 1 <= T <= context_length
    check_model(config.replace(drop_rate=drop_rate), B, T, dtype, seed=seed, emb_scale=emb_scale, ignored=ignored)


@budget(25, thorough=160)
@given(config=small_gpt_configs(max_vocab=40), B=st.integers(1, 3), seed=st.integers(0, 2**16), dtype=dtypes)
def test_model_sdpa_fast_path(config, B, seed, dtype):
    """GPTModel(use_sdpa=True), dropout off, against npgpt (and so against the explicit attention)."""
    record_example()
    assume(config.emb_dim >= 3)                                          # see WIDTH_AT_LEAST_3
    check_model(config, B, config.context_length, dtype, seed=seed, use_sdpa=True)      # drop_rate is 0
