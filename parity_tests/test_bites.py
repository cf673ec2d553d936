"""The suite bites: plant a small bug and the SAME check function the parity test uses must report it, with
a failure message that names the tensor the bug corrupts (not just any AssertionError). Each case draws its
examples (hypothesis, within the domain where its bug is in effect: repeated ids for the embedding's
assignment bug, clipping that acts for the clipping bug, ...), runs the check untouched (it passes), then
with the bug in place.

The bugs are small on purpose: a backward off by 1e-4 (1e-3 in float32, see scaled_for_float32), one missing term, a forgotten factor 3, a tied
gradient overwritten instead of summed, clipping without its 1e-6, a missing bias correction. They sit in
npgpt's backwards and optimizer, in torchgpt's forward (the twin can be wrong too), in the fused loss the
training path uses, in decoding (both twins at once, so only an oracle of the rule itself can see it) and
in the NumPy training loop (schedule, clipping).
"""
import dataclasses
import math
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import npgpt.attention
import npgpt.block
import npgpt.embedding
import npgpt.feedforward
import npgpt.generate
import npgpt.gelu
import npgpt.gpt2
import npgpt.layernorm
import npgpt.loss
import npgpt.optim
import npgpt.train
import parity_tests.test_clipping
import parity_tests.test_generate
import torchgpt.attention
import torchgpt.generate
import torchgpt.gelu
from gptcore.config import GPTConfig
from gptcore.engine.training import TrainSettings
from npgpt.gelu import GELU_CUBIC, SQRT_2_OVER_PI
from npgpt.optim import global_grad_norm
from gptcore.params import unique_arrays
from parity_tests.conftest import Values, budget, planted_bug, record_example
from parity_tests.test_adamw import check_adamw_all_decayed
from parity_tests.test_attention import check_simple_attention, check_single_head
from parity_tests.test_block import check_block
from parity_tests.test_clipping import check_clipping
from parity_tests.test_cross_entropy import check_cross_entropy, check_fused_cross_entropy
from parity_tests.test_embedding import check_embedding
from parity_tests.test_feedforward import check_feedforward
from parity_tests.test_gelu import check_gelu
from parity_tests.test_generate import check_sampling_step
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


def scaled_for_float32(real):
    """scaled() by 1 + 1e-3 for the float32 cases: where a gradient cancels, float32's budget adds 5x torch's
    own float32 error, which reaches ~1e-4 of the magnitude at some drawn examples (the thorough profile found
    multi-head attention at B=2, T=4, C=15, H=3), so a 1e-4 bug hides there; 1e-3 does not."""
    return scaled(real, 1.0 + 1e-3)


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


def scaled_dlogits(real, factor=1.0 + 1e-4):
    """The fused loss's (loss, dlogits) with dlogits times `factor`."""
    def broken(*args, **kwargs):
        loss, dlogits = real(*args, **kwargs)
        dlogits *= factor
        return loss, dlogits
    return broken


def scaled_forward(real, factor=1.0 + 1e-4):
    """A torch function or forward method whose output is off by `factor` (torch tensors are not scaled in
    place: autograd would refuse)."""
    def broken(*args, **kwargs):
        return real(*args, **kwargs) * factor
    return broken


def top_p_without_the_crossing_token(real):
    """Keeps a token when the mass ranked before it PLUS its own stays below top_p (the real rule: the mass
    before it): the token that crosses top_p is dropped. Written for NumPy and torch arrays alike."""
    def broken(scores, probs, top_p):
        is_torch = not isinstance(scores, np.ndarray)
        s = scores.detach().cpu().numpy() if is_torch else scores
        p = probs.detach().cpu().numpy() if is_torch else probs
        order = np.argsort(-s, axis=-1, kind="stable")
        ranked = np.take_along_axis(p, order, axis=-1).astype(np.float64)
        keep = np.zeros(p.shape, dtype=bool)
        np.put_along_axis(keep, order, np.cumsum(ranked, axis=-1) < top_p, axis=-1)
        return torch.from_numpy(keep) if is_torch else keep
    return broken


def inverse_cdf_unscaled(real):
    """u compared with the raw cumulative mass, not u * (kept mass): wrong once top-k/top-p removed tokens."""
    def broken(probs, u):
        cdf = np.cumsum(probs)
        token = int(np.searchsorted(cdf, u, side="right"))
        return min(token, len(probs) - 1)
    return broken


def lr_one_step_late(real):
    return lambda self, step: real(self, step + 1)


def clip_at_twice_the_norm(real):
    return lambda self, max_norm: real(self, 2 * max_norm)


ADAMW = {"lrs": [1e-3, 1e-2, 1e-2], "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.1}

# ---- the examples each bug is planted at -----------------------------------------------------------------
# Well-conditioned values (scale 0.3..3, no ties): a 1e-4 bug is then 10x float32's budget and 1e6x float64's,
# so a miss means the check is blind, not that the example was ill-conditioned.
recipes = st.builds(Values, seed=st.integers(0, 2**32 - 1), scale=st.sampled_from([0.3, 1.0, 3.0]), ties=st.just(False))
f64, f32 = st.just(np.float64), st.just(np.float32)
small = st.integers


def thunk(check, *strategies, **keywords):
    """A strategy of zero-argument calls check(*drawn, **drawn_keywords)."""
    return st.tuples(st.tuples(*strategies), st.fixed_dictionaries(keywords)).map(
        lambda drawn: lambda: check(*drawn[0], **drawn[1]))


def heads_and_width(min_head_dim=1):
    return st.tuples(small(1, 3), small(min_head_dim, 6)).map(lambda hd: (hd[0] * hd[1], hd[0]))


def multihead(dtype):
    """Attention over >= 4 positions with heads of >= 2 dimensions: at T = 2, D = 1 (drawn once) the softmax
    backward's share of the float32 gradients is below 1e-5 of their magnitude, and a 1e-4 bug in it below
    float32's budget."""
    return st.tuples(small(1, 3), small(4, 8), heads_and_width(2), st.booleans(), recipes).map(
        lambda a: lambda: check_multihead(a[0], a[1], a[2][0], a[2][1], a[3], 0.0, a[4], dtype, 1.0))


def model_configs():
    return st.builds(lambda V, H, D, L, bias, tie: GPTConfig(vocab_size=V, context_length=8, emb_dim=H * D, n_heads=H,
                                                             n_layers=L, drop_rate=0.0, qkv_bias=bias, tie_weights=tie),
                     # emb_dim >= 3: at width 2 a LayerNorm's output is +-1 whatever its input (test_model.py)
                     small(5, 30), small(1, 3), small(3, 6), small(1, 2), st.booleans(), st.booleans())


def model(dtype, tied=None):
    configs = model_configs() if tied is None else model_configs().map(lambda c: dataclasses.replace(c, tie_weights=tied))
    return st.tuples(configs, small(1, 3), small(3, 8), small(0, 2**16)).map(
        lambda a: lambda: check_model(a[0], a[1], a[2], dtype, seed=a[3]))


def embedding_with_repeats():
    """B * T > V ids drawn from V: some id repeats (pigeonhole), which the assignment bug loses."""
    return st.tuples(small(1, 3), small(4, 8), small(1, 8), small(1, 3), recipes).map(
        lambda a: lambda: check_embedding(a[0], a[1], a[2], min(a[3], a[0] * a[1] - 1), a[4], np.float64))


def sampling_with_top_p():
    """Top-p at 0.3..0.9 over >= 3 tokens with a temperature: a prefix of the ranked tokens is cut."""
    return thunk(check_sampling_step, recipes, small(1, 3), small(3, 30), st.sampled_from([1.0, 3.0]), st.none(),
                 st.sampled_from([0.3, 0.5, 0.9]), st.sampled_from([np.float64, np.float32]))


def sampling_with_a_low_top_p():
    """top_p 0.3 over >= 10 nearly uniform tokens (logits at scale 0.1) keeps a mass of ~0.3..0.45
    (probabilities are not renormalized after top-p), which inverse_cdf must scale u by: of 8 uniforms, some
    fall beyond it (all 8 below 0.45: 0.2%; at scale 3 a dominant token kept 0.95 and hid the bug)."""
    flat = st.builds(Values, seed=st.integers(0, 2**32 - 1), scale=st.just(0.1), ties=st.just(False))
    return thunk(check_sampling_step, flat, small(2, 3), small(10, 30), st.just(1.0), st.none(), st.just(0.3), f64)


@dataclass
class Case:
    patches: list            # (module or class, attribute, make_broken(real) -> broken)
    match: str               # regex the failure message must match: the tensor the bug corrupts
    examples: object         # strategy of zero-argument check calls


CASES = {
    "layernorm: no variance term (float64)": Case(
        [(npgpt.layernorm, "layernorm_backward", layernorm_backward_without_variance_term)], "layernorm dx",
        thunk(check_layernorm, small(1, 3), small(1, 8), small(2, 32), recipes, f64)),
    "layernorm: no variance term (float32)": Case(
        [(npgpt.layernorm, "layernorm_backward", layernorm_backward_without_variance_term)], "layernorm dx",
        thunk(check_layernorm, small(1, 3), small(1, 8), small(4, 32), recipes, f32)),
    "block: LayerNorm without variance term, inside the whole model": Case(
        [(npgpt.block, "layernorm_backward", layernorm_backward_without_variance_term)], r"^d ", model(np.float64)),
    "multi-head attention: softmax backward x (1 + 1e-4) (float64)": Case(
        [(npgpt.attention, "softmax_backward", scaled)], "multi-head (x|W_query|W_key)", multihead(np.float64)),
    "multi-head attention: softmax backward x (1 + 1e-3) (float32)": Case(
        [(npgpt.attention, "softmax_backward", scaled_for_float32)], "multi-head (x|W_query|W_key)", multihead(np.float32)),
    "simple attention: softmax backward x (1 + 1e-4) (float64)": Case(
        [(npgpt.attention, "softmax_backward", scaled)], "simple_attention dx",
        thunk(check_simple_attention, small(2, 8), small(1, 8), recipes, f64, st.just(1.0))),
    "simple attention: softmax backward x (1 + 1e-3) (float32)": Case(
        [(npgpt.attention, "softmax_backward", scaled_for_float32)], "simple_attention dx",
        thunk(check_simple_attention, small(2, 8), small(1, 8), recipes, f32, st.just(1.0))),
    "single-head attention: softmax backward x (1 + 1e-4)": Case(
        [(npgpt.attention, "softmax_backward", scaled)], "single-head",
        thunk(check_single_head, small(1, 3), small(2, 8), small(1, 8), small(1, 6), st.just(True), st.booleans(),
              st.just(0.0), recipes, f64, st.just(1.0))),
    "model: attention softmax backward x (1 + 1e-3) (float32)": Case(
        [(npgpt.attention, "softmax_backward", scaled_for_float32)], r"^d ", model(np.float32)),
    "gelu: factor 3 of the cubic term forgotten": Case(
        [(npgpt.gelu, "gelu_backward", gelu_backward_without_power_rule)], "gelu dx",
        thunk(check_gelu, st.tuples(small(1, 3), small(1, 8), small(4, 16)), recipes, f64)),
    "feed-forward: GELU derivative off by 1e-3 (float32)": Case(
        [(npgpt.feedforward, "gelu_backward", scaled_for_float32)], "feedforward ",
        thunk(check_feedforward, small(1, 3), small(2, 6), small(4, 16), recipes, f32)),
    "embedding: dW[idx] += dout loses repeated ids": Case(
        [(npgpt.embedding, "embedding_backward", embedding_backward_with_assignment)], "embedding dweight",
        embedding_with_repeats()),
    "model: tied head gradient overwritten, not summed": Case(
        [(npgpt.gpt2, "embedding_backward", tied_gradient_overwritten)], r"d (tok_emb|out_head)\.weight",
        model(np.float64, tied=True)),
    "block: residual dropout backward without 1/(1-p)": Case(
        [(npgpt.block, "dropout_backward", dropout_backward_without_rescale)], "block ",
        st.tuples(small(1, 3), small(2, 6), heads_and_width(), st.booleans(), st.sampled_from([0.1, 0.5]), recipes,
                  small(0, 100)).map(lambda a: lambda: check_block(a[0], a[1], a[2][0], a[2][1], a[3], a[4], a[5],
                                                                   np.float64, mask_seed=a[6]))),
    "cross-entropy: mean over all rows, ignored ones included": Case(
        [(npgpt.loss, "cross_entropy_backward", cross_entropy_backward_mean_over_all_rows)], "dlogits",
        # 16 or more positions, 30% ignored: some ignored and some kept (the bug needs both)
        thunk(check_cross_entropy, small(2, 3), small(8, 16), small(2, 40), st.just(0.3), st.just(1.0), recipes, f64)),
    "fused cross-entropy: dlogits x (1 + 1e-4)": Case(
        [(npgpt.loss, "cross_entropy_loss_and_grad", scaled_dlogits)], "fused dlogits",
        thunk(check_fused_cross_entropy, small(1, 3), small(1, 8), small(2, 40), st.just(0.0),
              st.sampled_from([1.0, -2.0]), recipes, f64, st.booleans())),
    # float32 measures dlogits against its terms (softmax + one-hot): at a saturated row (V = 2, logits 3
    # apart, drawn by the thorough profile) dlogits is 1e-5 of them, and even 1e-3 of it is below the budget:
    # logits at scale <= 1 keep rows unsaturated
    "fused cross-entropy: dlogits x (1 + 1e-3) (float32)": Case(
        [(npgpt.loss, "cross_entropy_loss_and_grad", lambda real: scaled_dlogits(real, 1.0 + 1e-3))], "fused dlogits",
        thunk(check_fused_cross_entropy, small(1, 3), small(1, 8), small(2, 40), st.just(0.0),
              st.sampled_from([1.0, -2.0]),
              st.builds(Values, seed=st.integers(0, 2**32 - 1), scale=st.sampled_from([0.3, 1.0]), ties=st.just(False)),
              f32, st.booleans())),
    "clipping: max_norm / norm without the + 1e-6": Case(
        [(parity_tests.test_clipping, "clip_grad_norm", clip_without_epsilon)], "clipped",
        # norms ~1 and below: the 1e-6 is then >= 1e-6 relative, far above float64's 1e-10
        thunk(check_clipping, st.just([(3, 4), (5,)]), st.sampled_from([0.1, 0.5, 0.9]), st.booleans(),
              st.builds(Values, seed=st.integers(0, 2**32 - 1), scale=st.sampled_from([0.01, 0.1]),
                        ties=st.just(False)), f64)),
    "AdamW: no bias correction of the second moment": Case(
        [(npgpt.optim, "math", adamw_without_second_moment_bias_correction)], r"step \d (p|w|b)",
        thunk(check_adamw_all_decayed, st.just([("w", (3, 4)), ("b", (4,))]), st.just(ADAMW), recipes, f64)),
    "torchgpt: attention context x (1 + 1e-4)": Case(
        [(torchgpt.attention, "attention_core", scaled_forward)], "multi-head ", multihead(np.float64)),
    "torchgpt: GELU module x (1 + 1e-4)": Case(
        [(torchgpt.gelu.GELU, "forward", scaled_forward)], "feedforward out",
        thunk(check_feedforward, small(1, 3), small(2, 6), small(4, 16), recipes, f64)),
    "decoding: top-p drops the token that crosses top_p (both twins)": Case(
        [(npgpt.generate, "top_p_mask", top_p_without_the_crossing_token),
         (torchgpt.generate, "top_p_mask", top_p_without_the_crossing_token)], "the rule",
        sampling_with_top_p()),
    "decoding: inverse CDF not scaled by the kept mass": Case(
        [(parity_tests.test_generate, "inverse_cdf", inverse_cdf_unscaled)], r"inverse_cdf\(u=",
        sampling_with_a_low_top_p()),
}


@pytest.mark.parametrize("case", list(CASES))
@budget(10, thorough=40)
@given(data=st.data())
def test_planted_bug_is_caught(case, monkeypatch, data):
    record_example()
    planted = CASES[case]
    check = data.draw(planted.examples, label="example")
    check()                                                     # untouched: the check passes
    with monkeypatch.context() as patch:
        for target, attribute, make_broken in planted.patches:
            patch.setattr(target, attribute, make_broken(getattr(target, attribute)))
        with planted_bug(case, match=planted.match):
            check()


TRAINING_LOOP_CASES = {   # name: ((target, attribute, make_broken), match, settings changes)
    # not a backward scaled by 1 + 1e-4: Adam's update m / sqrt(v) is blind to a gradient's scale
    "trajectory: LayerNorm backward without its variance term": (
        (npgpt.block, "layernorm_backward", layernorm_backward_without_variance_term), "loss at step", {}),
    "NumPy loop: the lr of the next step": ((TrainSettings, "lr_at", lr_one_step_late), "learning rates", {}),
    # a clip far below the gradient norms (~1 here): at grad_clip 1 some seeds never clip, and twice the clip
    # is then no clip either (the thorough profile drew one)
    "NumPy loop: clipping at twice grad_clip": ((npgpt.train.NumpyBackend, "clip_gradients", clip_at_twice_the_norm),
                                                "loss at step", {"grad_clip": 0.05}),
}


@pytest.mark.parametrize("case", list(TRAINING_LOOP_CASES))
@budget(3, thorough=6)
@given(seed=st.integers(0, 2**16))
def test_planted_bug_is_caught_by_the_training_trajectory(verdict_ids, monkeypatch, case, seed):  # noqa: F811
    """3 steps in float64 from a drawn seed (batch order and dropout masks); the bug changes the loss (or the
    logged lr) from the step it acts on."""
    record_example()
    (target, attribute, make_broken), match, changes = TRAINING_LOOP_CASES[case]
    short = dataclasses.replace(SETTINGS, max_steps=3, eval_interval=3, warmup_steps=1, seed=seed, **changes)
    check_trajectory(verdict_ids, np.float64, short)
    with monkeypatch.context() as patch:
        patch.setattr(target, attribute, make_broken(getattr(target, attribute)))
        with planted_bug(case, match=match):
            check_trajectory(verdict_ids, np.float64, short)


def test_planted_bug_that_is_not_caught_fails_the_test():
    """planted_bug itself: a check that passes with the 'bug' in place is reported, naming the bug."""
    with pytest.raises(AssertionError, match="planted bug NOT caught: harmless"):
        with planted_bug("harmless"):
            check_layernorm(2, 3, 8, PLAIN, np.float64)


def test_planted_bug_with_the_wrong_message_fails_the_test():
    """... and so does a failure of another check than the one the bug should trip (the match)."""
    with pytest.raises(AssertionError):
        with planted_bug("wrong message", match="a message no check writes"):
            raise AssertionError("layernorm dx: max abs error")
