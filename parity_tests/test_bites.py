"""The suite bites: plant a small bug in a NumPy backward (or the optimizer) and the SAME check function the
parity test uses must report it. Each case first runs the check untouched (it passes), then with the bug.

The bugs are small on purpose: a softmax backward off by 1e-4, one missing term, a forgotten factor 3,
a tied gradient overwritten instead of summed, clipping without its 1e-6, a missing bias correction.
"""
import dataclasses
import math
from types import SimpleNamespace

import numpy as np
import pytest

import npgpt.attention
import npgpt.block
import npgpt.embedding
import npgpt.feedforward
import npgpt.gelu
import npgpt.gpt2
import npgpt.layernorm
import npgpt.loss
import npgpt.optim
import parity_tests.test_clipping
from gptcore.config import GPTConfig
from npgpt.gelu import GELU_CUBIC, SQRT_2_OVER_PI
from npgpt.optim import global_grad_norm
from gptcore.params import unique_arrays
from parity_tests.conftest import Values, planted_bug, record_example
from parity_tests.test_adamw import check_adamw_all_decayed
from parity_tests.test_attention import check_simple_attention, check_single_head
from parity_tests.test_block import check_block
from parity_tests.test_clipping import check_clipping
from parity_tests.test_cross_entropy import check_cross_entropy
from parity_tests.test_embedding import check_embedding
from parity_tests.test_feedforward import check_feedforward
from parity_tests.test_gelu import check_gelu
from parity_tests.test_layernorm import check_layernorm
from parity_tests.test_model import check_model
from parity_tests.test_multihead_attention import check_multihead
from parity_tests.test_trajectory import SETTINGS, check_trajectory, verdict_ids  # noqa: F401 (fixture)

PLAIN = Values(seed=1, scale=1.0, ties=False)          # a well-conditioned example
CONFIG = GPTConfig(vocab_size=13, context_length=6, emb_dim=8, n_heads=2, n_layers=2, drop_rate=0.0, qkv_bias=True)


# ---- the planted bugs (each built from the real function, so it differs only by the bug) ----------------
def layernorm_backward_without_variance_term(real):
    def broken(dout, cache):
        dx, dscale, dshift = real(dout, cache)
        return dx + cache.rstd * cache.xhat * (dout * cache.scale * cache.xhat).mean(-1, keepdims=True), dscale, dshift
    return broken


def scaled(real, factor=1.0 + 1e-4):
    """The real backward's result times `factor`, in place: also right when the caller passes out= and
    ignores the return value (npgpt.attention's blocked softmax backward)."""
    def broken(*args, **kwargs):
        result = real(*args, **kwargs)
        result *= factor
        return result
    return broken


def gelu_backward_without_power_rule(real):
    """d/dx of 0.044715 x^3 written as 0.044715 x^2 (the factor 3 forgotten)."""
    def broken(dout, cache):
        x, tanh_u = cache.x, cache.tanh_u
        du_dx = SQRT_2_OVER_PI * (1.0 + GELU_CUBIC * x * x)
        return dout * (0.5 * (1.0 + tanh_u) + 0.5 * x * (1.0 - tanh_u * tanh_u) * du_dx)
    return broken


def embedding_backward_with_assignment(real):
    """dW[idx] += dout: with repeated ids only one of the gradients lands."""
    def broken(dout, cache, dweight=None):
        idx, shape = cache.idx, cache.weight_shape
        dweight = np.zeros(shape, dout.dtype) if dweight is None else dweight
        dweight[idx.reshape(-1)] += dout.reshape(-1, shape[1])
        return dweight
    return broken


def tied_gradient_overwritten(real):
    """The embedding's gradient replaces the tied head's instead of adding to it."""
    def broken(dout, cache, dweight=None):
        fresh = real(dout, cache)
        if dweight is None:
            return fresh
        dweight[...] = fresh
        return dweight
    return broken


def dropout_backward_without_rescale(real):
    return lambda dout, cache: dout if cache is None else dout * cache.mask


def cross_entropy_backward_mean_over_all_rows(real):
    """Divides by every position instead of the kept (non-ignored) ones."""
    def broken(cache, dloss=1.0):
        kept, n_kept = cache.kept, cache.n_kept
        return real(cache, dloss) * (max(n_kept, 1) / kept.size)
    return broken


def clip_without_epsilon(real):
    def broken(grads, max_norm):
        norm = global_grad_norm(grads)
        if max_norm / norm < 1.0:
            for _, g in unique_arrays(grads):
                g *= max_norm / norm
        return norm
    return broken


def adamw_without_second_moment_bias_correction(real):
    """AdamW.step's `1 / sqrt(1 - beta2^t)` becomes 1 (the module's math.sqrt answers 1)."""
    return SimpleNamespace(sqrt=lambda value: 1.0, cos=math.cos, pi=math.pi)


ADAMW = {"lrs": [1e-3, 1e-2, 1e-2], "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.1}

CASES = {
    "layernorm: no variance term (float64)": (
        npgpt.layernorm, "layernorm_backward", layernorm_backward_without_variance_term,
        lambda: check_layernorm(2, 3, 8, PLAIN, np.float64)),
    "layernorm: no variance term (float32)": (
        npgpt.layernorm, "layernorm_backward", layernorm_backward_without_variance_term,
        lambda: check_layernorm(2, 3, 8, PLAIN, np.float32)),
    "block: LayerNorm without variance term, inside the whole model": (
        npgpt.block, "layernorm_backward", layernorm_backward_without_variance_term,
        lambda: check_model(CONFIG, 2, 5, np.float64)),
    "multi-head attention: softmax backward x (1 + 1e-4) (float64)": (
        npgpt.attention, "softmax_backward", scaled,
        lambda: check_multihead(2, 5, 8, 2, True, 0.0, PLAIN, np.float64, 1.0)),
    "multi-head attention: softmax backward x (1 + 1e-4) (float32)": (
        npgpt.attention, "softmax_backward", scaled,
        lambda: check_multihead(2, 5, 8, 2, True, 0.0, PLAIN, np.float32, 1.0)),
    "simple attention: softmax backward x (1 + 1e-4) (float64)": (
        npgpt.attention, "softmax_backward", scaled,
        lambda: check_simple_attention(5, 6, PLAIN, np.float64, 1.0)),
    "simple attention: softmax backward x (1 + 1e-4) (float32)": (
        npgpt.attention, "softmax_backward", scaled,
        lambda: check_simple_attention(5, 6, PLAIN, np.float32, 1.0)),
    "single-head attention: softmax backward x (1 + 1e-4)": (
        npgpt.attention, "softmax_backward", scaled,
        lambda: check_single_head(2, 5, 6, 4, True, False, 0.0, PLAIN, np.float64, 1.0)),
    "model: attention softmax backward x (1 + 1e-4) (float32)": (
        npgpt.attention, "softmax_backward", scaled,
        lambda: check_model(CONFIG, 2, 5, np.float32)),
    "gelu: factor 3 of the cubic term forgotten": (
        npgpt.gelu, "gelu_backward", gelu_backward_without_power_rule,
        lambda: check_gelu((2, 3, 8), PLAIN, np.float64)),
    "feed-forward: GELU derivative off by 1e-4 (float32)": (
        npgpt.feedforward, "gelu_backward", scaled,
        lambda: check_feedforward(2, 3, 8, PLAIN, np.float32)),
    "embedding: dW[idx] += dout loses repeated ids": (
        npgpt.embedding, "embedding_backward", embedding_backward_with_assignment,
        lambda: check_embedding(2, 8, 4, 3, PLAIN, np.float64)),
    "model: tied head gradient overwritten, not summed": (
        npgpt.gpt2, "embedding_backward", tied_gradient_overwritten,
        lambda: check_model(CONFIG, 2, 5, np.float64)),
    "block: residual dropout backward without 1/(1-p)": (
        npgpt.block, "dropout_backward", dropout_backward_without_rescale,
        lambda: check_block(2, 5, 8, 2, True, 0.5, PLAIN, np.float64)),
    "cross-entropy: mean over all rows, ignored ones included": (
        npgpt.loss, "cross_entropy_backward", cross_entropy_backward_mean_over_all_rows,
        lambda: check_cross_entropy(2, 8, 7, 0.3, 1.0, PLAIN, np.float64)),
    "clipping: max_norm / norm without the + 1e-6": (
        parity_tests.test_clipping, "clip_grad_norm", clip_without_epsilon,
        lambda: check_clipping([(3, 4), (5,)], 0.5, True, PLAIN, np.float64)),
    "AdamW: no bias correction of the second moment": (
        npgpt.optim, "math", adamw_without_second_moment_bias_correction,
        lambda: check_adamw_all_decayed([("w", (3, 4)), ("b", (4,))], ADAMW, PLAIN, np.float64)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_planted_bug_is_caught(case, monkeypatch):
    record_example()
    module, attribute, make_broken, check = CASES[case]
    check()                                                     # untouched: the check passes
    monkeypatch.setattr(module, attribute, make_broken(getattr(module, attribute)))
    with planted_bug(case):
        check()


def test_planted_bug_is_caught_by_the_training_trajectory(verdict_ids, monkeypatch):  # noqa: F811
    """3 steps in float64: a softmax backward off by 1e-4 changes the loss from step 2 on."""
    record_example()
    short = dataclasses.replace(SETTINGS, max_steps=3, eval_interval=3)
    check_trajectory(verdict_ids, np.float64, short)
    monkeypatch.setattr(npgpt.attention, "softmax_backward", scaled(npgpt.attention.softmax_backward))
    with planted_bug("trajectory: softmax backward x (1 + 1e-4)"):
        check_trajectory(verdict_ids, np.float64, short)


def test_planted_bug_that_is_not_caught_fails_the_test():
    """planted_bug itself: a check that passes with the 'bug' in place is reported, naming the bug."""
    with pytest.raises(AssertionError, match="planted bug NOT caught: harmless"):
        with planted_bug("harmless"):
            check_layernorm(2, 3, 8, PLAIN, np.float64)
