"""Cross-entropy with ignore_index=-100 (mean over the kept targets) and perplexity: npgpt vs torch; the
fused loss-and-gradient (the training path) against F.cross_entropy, with overwrite_logits both ways.

Targets: none, some or all ignored (all ignored: loss nan and zero gradient in both); logits up to 1e3
in magnitude and with exact ties; an upstream gradient other than 1.
"""
import math

import numpy as np
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import npgpt.loss as nploss
import torchgpt.loss as tloss
from parity_tests.conftest import (assert_close, budget, dtypes, make_array, record_example, to_torch,
                                   torch_with_reference, values)


def check_cross_entropy(B, T, V, ignored, dloss, recipe, dtype):
    logits = make_array(recipe, (B, T, V), dtype)
    rng = recipe.rng(1)
    targets = rng.integers(0, V, (B, T))
    targets[rng.random((B, T)) < ignored] = nploss.IGNORE_INDEX
    loss, cache = nploss.cross_entropy_forward(logits, targets)
    dlogits = nploss.cross_entropy_backward(cache, dloss)
    assert dlogits.dtype == dtype and dlogits.shape == logits.shape
    assert np.all(dlogits[targets == nploss.IGNORE_INDEX] == 0)

    def run(tdtype):
        logits_t = to_torch(logits).to(tdtype).requires_grad_()
        loss_t = tloss.cross_entropy(logits_t, torch.from_numpy(targets))
        loss_t.backward(torch.tensor(dloss, dtype=tdtype))
        return {"loss": loss_t, "dlogits": logits_t.grad}

    expected, reference = torch_with_reference(run, dtype)
    ref = reference or {"loss": None, "dlogits": None}
    assert_close(np.asarray(loss, dtype), expected["loss"], name="loss", reference=ref["loss"])
    # dlogits = dloss / n_kept * (softmax - onehot) cancels to ~0 for a saturated row: measure it against its terms
    kept = targets != nploss.IGNORE_INDEX
    probs = torch.softmax(torch.from_numpy(logits.astype(np.float64)), dim=-1).numpy()
    terms = abs(dloss) / max(kept.sum(), 1) * (probs[kept] + np.eye(V)[targets[kept]])
    assert_close(dlogits, expected["dlogits"], floor=float(terms.max(initial=0.0)), name="dlogits",
                 reference=ref["dlogits"])
    if (targets == nploss.IGNORE_INDEX).all():
        assert math.isnan(loss) and not dlogits.any()
    else:
        assert nploss.perplexity(loss) == tloss.perplexity(torch.tensor(loss, dtype=torch.float64))
    return loss, dlogits


@budget(40)
@given(B=st.integers(1, 3), T=st.integers(1, 16), V=st.integers(1, 60), ignored=st.sampled_from([0.0, 0.3, 0.7, 1.0]),
       dloss=st.sampled_from([1.0, 0.37, -2.0]), recipe=values(), dtype=dtypes)
def test_cross_entropy(B, T, V, ignored, dloss, recipe, dtype):
    record_example()
    check_cross_entropy(B, T, V, ignored, dloss, recipe, dtype)


def check_fused_cross_entropy(B, T, V, ignored, dloss, recipe, dtype, overwrite_logits):
    """npgpt.loss.cross_entropy_loss_and_grad (the training path: npgpt.model.loss_and_grads) against
    torch.nn.functional.cross_entropy(ignore_index=-100) and autograd, called here directly."""
    logits = make_array(recipe, (B, T, V), dtype)
    original = logits.copy()
    rng = recipe.rng(1)
    targets = rng.integers(0, V, (B, T))
    targets[rng.random((B, T)) < ignored] = nploss.IGNORE_INDEX
    loss, dlogits = nploss.cross_entropy_loss_and_grad(logits, targets, dloss=dloss,
                                                        overwrite_logits=overwrite_logits)
    assert dlogits.dtype == dtype and dlogits.shape == logits.shape
    if overwrite_logits:
        assert np.shares_memory(dlogits, logits), "overwrite_logits=True must reuse the logits buffer"
    else:
        assert np.array_equal(logits, original), "overwrite_logits=False must leave the logits as they were"

    def run(tdtype):
        logits_t = to_torch(original).to(tdtype).requires_grad_()
        loss_t = F.cross_entropy(logits_t.reshape(-1, V), torch.from_numpy(targets).reshape(-1),
                                 ignore_index=nploss.IGNORE_INDEX)
        loss_t.backward(torch.tensor(dloss, dtype=tdtype))
        return {"loss": loss_t, "dlogits": logits_t.grad}

    expected, reference = torch_with_reference(run, dtype)
    ref = reference or {"loss": None, "dlogits": None}
    kept = targets != nploss.IGNORE_INDEX
    if not kept.any():        # every target ignored: nan loss and a zero gradient, as in torch
        assert math.isnan(loss) and math.isnan(expected["loss"].item()) and not dlogits.any()
        return
    assert_close(np.asarray(loss, dtype), expected["loss"], name="fused loss", reference=ref["loss"])
    probs = torch.softmax(torch.from_numpy(original.astype(np.float64)), dim=-1).numpy()
    terms = abs(dloss) / kept.sum() * (probs[kept] + np.eye(V)[targets[kept]])
    assert_close(dlogits, expected["dlogits"], floor=float(terms.max()), name="fused dlogits",
                 reference=ref["dlogits"])


@budget(40)
@given(B=st.integers(1, 3), T=st.integers(1, 16), V=st.integers(1, 60), ignored=st.sampled_from([0.0, 0.3, 0.7, 1.0]),
       dloss=st.sampled_from([1.0, 0.37, -2.0]), recipe=values(), dtype=dtypes, overwrite_logits=st.booleans())
def test_fused_cross_entropy(B, T, V, ignored, dloss, recipe, dtype, overwrite_logits):
    record_example()
    check_fused_cross_entropy(B, T, V, ignored, dloss, recipe, dtype, overwrite_logits)
