"""Classification head: the last-real-token gather, the head (gather + linear), the class-weighted
cross-entropy, and the whole classifier (trunk + head, all or only the last blocks trainable) in npgpt
against torchgpt.classifier, with finite differences and planted bugs the checks must catch."""
import numpy as np
import torch
import torch.nn.functional as F
from hypothesis import assume, given
from hypothesis import strategies as st

import npgpt.classifier as npcls
import npgpt.model as npmodel
import torchgpt.classifier as tcls
from gptcore.config import GPTConfig
from parity_tests.conftest import (Values, assert_close, assert_grads_close,
                                   assert_matches_finite_differences, budget, dtypes, make_array, model_dims,
                                   nudged_params, planted_bug, record_example, to_torch, torch_with_reference, values,
                                   weights)
from gptcore.tasks.classification import trainable_param_names


def draw_lengths(rng, B, T):
    """Real tokens per row, 1..T, with at least one full row (as in a padded batch)."""
    lengths = rng.integers(1, T + 1, size=B)
    lengths[rng.integers(B)] = T
    return lengths


def check_head(B, T, C, K, weighted, recipe, dtype):
    """Gather + linear + (weighted) cross-entropy, forward and every gradient, npgpt vs torch."""
    rng = recipe.rng(1)
    x = make_array(recipe, (B, T, C), dtype)
    lengths = draw_lengths(rng, B, T)
    head = {"cls_head.weight": weights(rng, (K, C), dtype), "cls_head.bias": weights(rng, (K,), dtype)}
    labels = rng.integers(0, K, size=B)
    class_weights = rng.uniform(0.2, 3.0, size=K) if weighted else None

    logits, head_cache = npcls.classifier_head_forward(x, lengths, head)
    loss, loss_cache = npcls.class_weighted_cross_entropy_forward(logits, labels, class_weights)
    dlogits = npcls.class_weighted_cross_entropy_backward(loss_cache)
    dx, grads = npcls.classifier_head_backward(dlogits, head_cache)
    assert logits.dtype == dlogits.dtype == dx.dtype == grads["cls_head.weight"].dtype == dtype
    assert sorted(grads) == ["cls_head.bias", "cls_head.weight"]

    x_t = to_torch(x, requires_grad=True)
    weight_t = to_torch(head["cls_head.weight"], requires_grad=True)
    bias_t = to_torch(head["cls_head.bias"], requires_grad=True)
    logits_t = F.linear(tcls.last_token(x_t, torch.from_numpy(lengths)), weight_t, bias_t)
    logits_t.retain_grad()
    weights_t = None if class_weights is None else torch.from_numpy(class_weights)
    loss_t = tcls.class_weighted_cross_entropy(logits_t, torch.from_numpy(labels), weights_t)
    loss_t.backward()
    assert_close(logits, logits_t, name="head logits")
    assert_close(np.array(loss, dtype=dtype), loss_t, name="class-weighted loss")
    # dlogits = w_y / sum(w) * (softmax - onehot) cancels to ~0 for a saturated row, and so do dx, dweight and
    # dbias, the sums built from it: measure each against its terms, built from |w_y / sum(w) (softmax + onehot)|
    row_share = (np.ones(K) if class_weights is None else class_weights)[labels]
    row_share = row_share / row_share.sum()
    probs = torch.softmax(torch.from_numpy(logits.astype(np.float64)), dim=-1).numpy()
    dlogits_terms = row_share[:, None] * (probs + np.eye(K)[labels])                      # (B, K)
    x_last = np.abs(tcls.last_token(x_t, torch.from_numpy(lengths)).detach().numpy())     # (B, C)
    floors = {"dlogits": dlogits_terms.max(initial=0.0),
              "dx": (dlogits_terms @ np.abs(head["cls_head.weight"])).max(initial=0.0),
              "dweight": (dlogits_terms.T @ x_last).max(initial=0.0), "dbias": dlogits_terms.sum(0).max(initial=0.0)}
    assert_close(dlogits, logits_t.grad, floor=float(floors["dlogits"]), name="class-weighted dlogits")
    assert_close(dx, x_t.grad, floor=float(floors["dx"]), name="head dx")
    assert_close(grads["cls_head.weight"], weight_t.grad, floor=float(floors["dweight"]), name="head dweight")
    assert_close(grads["cls_head.bias"], bias_t.grad, floor=float(floors["dbias"]), name="head dbias")
    return x, lengths, head, labels, class_weights, dx, grads


@budget(30)
@given(B=st.integers(1, 3), T=st.integers(1, 16), C=st.integers(1, 48), K=st.integers(2, 5),
       weighted=st.booleans(), recipe=values(), dtype=dtypes)
def test_classifier_head(B, T, C, K, weighted, recipe, dtype):
    record_example()
    check_head(B, T, C, K, weighted, recipe, dtype)


@budget(25, thorough=80)
@given(weighted=st.booleans(), recipe=values(scales=(1.0,)))
def test_classifier_head_finite_differences(weighted, recipe):
    record_example()
    x, lengths, head, labels, class_weights, dx, grads = check_head(3, 5, 6, 3, weighted, recipe, np.float64)

    def loss():
        logits, _ = npcls.classifier_head_forward(x, lengths, head)
        return npcls.class_weighted_cross_entropy_forward(logits, labels, class_weights)[0]

    assert_matches_finite_differences(loss, head["cls_head.weight"], grads["cls_head.weight"], name="head dweight")
    assert_matches_finite_differences(loss, head["cls_head.bias"], grads["cls_head.bias"], name="head dbias")
    assert_matches_finite_differences(loss, x, dx, name="head dx", max_entries=40)


def test_class_weights_one_is_the_plain_mean():
    """w = 1 for every class gives exactly torch's unweighted cross-entropy (the --no-balance switch only
    changes the weights, not the code path)."""
    record_example()
    rng = np.random.default_rng(0)
    logits, labels = rng.standard_normal((7, 2)), rng.integers(0, 2, size=7)
    plain, _ = npcls.class_weighted_cross_entropy_forward(logits, labels)
    ones, _ = npcls.class_weighted_cross_entropy_forward(logits, labels, np.ones(2))
    assert plain == ones
    assert_close(np.array(plain), F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels)), name="plain loss")


# ---------------------------------------------------------------------------------------------------------
# the whole classifier
# ---------------------------------------------------------------------------------------------------------

def random_classifier(config, K, seed, dtype):
    """Classifier params with biases and norms moved away from their 0/1 init (so their gradients are tested)."""
    _, params = npcls.classifier_from_lm_params(npmodel.init_params(config, seed=seed, dtype=dtype), config, K, seed)
    rng = np.random.default_rng(seed)
    for value in params.values():
        if value.ndim == 1:
            value += weights(rng, value.shape, dtype, std=0.1)
    params["cls_head.weight"] += weights(rng, params["cls_head.weight"].shape, dtype, std=0.3)
    return params


@budget(25, thorough=160)
@given(dims=model_dims(max_c=24), L=st.integers(1, 3), K=st.integers(2, 4), tie=st.booleans(),
       qkv_bias=st.booleans(), trainable=st.sampled_from(["head", "last-k", "all"]), weighted=st.booleans(),
       seed=st.integers(0, 2**16), dtype=dtypes)
def test_classifier_model(dims, L, K, tie, qkv_bias, trainable, weighted, seed, dtype):
    """npgpt.classifier forward/backward = torchgpt GPTClassifier + autograd: same logits, same loss, and
    gradients for exactly the trainable parameters (the NumPy backward stops at the lowest trained block)."""
    record_example()
    B, T, C, H = dims
    # C <= 2: a LayerNorm's output is its shift (C = 1) or +-scale + shift up to eps (C = 2), so the logits
    # hardly depend on the trunk: its gradients are ~1e-5 of the terms they cancel (exactly 0 for C = 1) and
    # both sides return rounding noise (see test_model.WIDTH_AT_LEAST_3).
    assume(C > 2)
    V = 50
    config = GPTConfig(vocab_size=V, context_length=16, emb_dim=C, n_heads=H, n_layers=L, drop_rate=0.0,
                       qkv_bias=qkv_bias, tie_weights=tie)
    params = random_classifier(config, K, seed, dtype)
    classifier_config = config.replace(tie_weights=False)
    rng = np.random.default_rng(seed + 1)
    idx = rng.integers(0, V, size=(B, T))
    lengths = draw_lengths(rng, B, T)
    labels = rng.integers(0, K, size=B)
    class_weights = rng.uniform(0.2, 3.0, size=K) if weighted else None
    last_k = int(rng.integers(1, L + 1))
    names = trainable_param_names(classifier_config, trainable, last_k)

    loss, grads = npcls.loss_and_grads(params, idx, lengths, labels, classifier_config,
                                       class_weights=class_weights, trainable_names=names)
    logits, _ = npcls.forward(params, idx, lengths, classifier_config)
    assert list(grads) == names

    from torchgpt.model import load_numpy_params

    def run(tdtype):
        model = tcls.GPTClassifier(config, K).to(tdtype)
        load_numpy_params(model, nudged_params(params))
        assert tcls.set_trainable(model, names) == sum(params[name].size for name in names)
        logits_t = model(torch.from_numpy(idx), torch.from_numpy(lengths))
        weights_t = None if class_weights is None else torch.from_numpy(class_weights).to(tdtype)
        loss_t = tcls.class_weighted_cross_entropy(logits_t, torch.from_numpy(labels), weights_t)
        loss_t.backward()
        assert [name for name, p in model.named_parameters() if not p.requires_grad and p.grad is not None] == []
        return {"logits": logits_t, "loss": loss_t}, {name: p.grad for name, p in model.named_parameters()
                                                       if p.requires_grad}

    # float32: the float64 run is the reference that measures torch's own rounding (see conftest.assert_close)
    (expected, grads_t), reference = torch_with_reference(run, dtype)
    reference_values, reference_grads = reference or ({"logits": None, "loss": None}, None)
    assert_close(logits, expected["logits"], name="classifier logits", reference=reference_values["logits"])
    assert_close(np.array(loss, dtype=dtype), expected["loss"], name="classifier loss",
                 reference=reference_values["loss"])
    assert_grads_close(grads, grads_t, references=reference_grads, prefix="classifier ")


def test_classifier_model_finite_differences():
    """float64 central differences through the whole classifier: a trunk weight, the embedding and the head."""
    record_example()
    config = GPTConfig(vocab_size=30, context_length=8, emb_dim=12, n_heads=3, n_layers=2, drop_rate=0.0,
                       qkv_bias=True, tie_weights=False)
    params = random_classifier(config, 3, seed=5, dtype=np.float64)
    for value in params.values():
        if value.ndim == 2:
            value *= 10.0     # std 0.2 instead of GPT-2's 0.02: attention gradients well above the FD roundoff
    rng = np.random.default_rng(6)
    idx, lengths, labels = rng.integers(0, 30, size=(3, 6)), np.array([6, 2, 4]), np.array([0, 2, 1])
    class_weights = np.array([0.5, 2.0, 1.25])
    _, grads = npcls.loss_and_grads(params, idx, lengths, labels, config, class_weights=class_weights)

    def loss():
        logits, _ = npcls.forward(params, idx, lengths, config)
        return npcls.class_weighted_cross_entropy_forward(logits, labels, class_weights)[0]

    for name in ("blocks.0.att.W_query.weight", "blocks.1.ff.fc1.bias", "tok_emb.weight", "final_norm.scale",
                 "cls_head.weight"):
        assert_matches_finite_differences(loss, params[name], grads[name], name=f"classifier {name}")


def test_planted_bug_reading_position_minus_one_is_caught(monkeypatch):
    """A head that reads the last position (-1) instead of the last real token must fail the parity check."""
    record_example()

    def read_last_position(x, lengths):
        return x[:, -1], npcls.LastTokenCache(x.shape, x.dtype, np.full(x.shape[0], x.shape[1] - 1))

    monkeypatch.setattr(npcls, "last_token_forward", read_last_position)
    with planted_bug("classifier head reads position -1, padding included", match="head logits"):
        # seed 1 draws lengths shorter than T for some row, so position -1 is padding there
        check_head(3, 6, 5, 2, False, Values(seed=1, scale=1.0, ties=False), np.float64)


def test_planted_bug_in_class_weighted_backward_is_caught(monkeypatch):
    """dlogits off by 1e-4 relative (the smallest bug the tolerances are built to see) must fail the check."""
    record_example()
    honest = npcls.class_weighted_cross_entropy_backward
    monkeypatch.setattr(npcls, "class_weighted_cross_entropy_backward", lambda cache: honest(cache) * (1 + 1e-4))
    with planted_bug("class-weighted cross-entropy backward off by 1e-4", match="class-weighted dlogits"):
        check_head(3, 4, 5, 2, True, Values(seed=2, scale=1.0, ties=False), np.float64)
