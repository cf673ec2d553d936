"""Float64 central finite-difference checks of every npgpt backward (relative error <= 1e-6).

Each check uses the scalar L = sum(out * R) for a fixed random R, so dL/dout = R is what the backward gets.
"""
import numpy as np
import pytest

from npgpt import attention, block, dropout, embedding, feedforward, gelu, layernorm, linear, loss, model, softmax
from gptcore.config import GPTConfig
from npgpt.gradcheck import check_gradient

TOL = 1e-6


def rand(rng, *shape, scale=1.0):
    return rng.standard_normal(shape) * scale


def projection_loss(forward_fn, R):
    """L() = sum(forward_fn() * R): a scalar whose gradient w.r.t. the output is R."""
    return lambda: float((forward_fn() * R).sum())


def check_all(loss_fn, arrays_and_grads, max_entries=60):
    for name, (array, grad) in arrays_and_grads.items():
        check_gradient(loss_fn, array, grad, tol=TOL, max_entries=max_entries, name=name)


@pytest.mark.parametrize("with_bias", [True, False])
def test_linear(with_bias):
    rng = np.random.default_rng(0)
    x, W = rand(rng, 2, 3, 5), rand(rng, 4, 5)
    b = rand(rng, 4) if with_bias else None
    out, cache = linear.linear_forward(x, W, b)
    R = rand(rng, *out.shape)
    dx, dW, db = linear.linear_backward(R, cache)
    L = projection_loss(lambda: linear.linear_forward(x, W, b)[0], R)
    checks = {"x": (x, dx), "W": (W, dW)}
    if with_bias:
        checks["b"] = (b, db)
    else:
        assert db is None
    check_all(L, checks)


def test_layernorm_with_large_offsets():
    rng = np.random.default_rng(1)
    x = rand(rng, 2, 3, 8) * 3 + 50.0     # a large mean: the centred form must stay accurate
    scale, shift = rand(rng, 8), rand(rng, 8)
    out, cache = layernorm.layernorm_forward(x, scale, shift)
    R = rand(rng, *out.shape)
    dx, dscale, dshift = layernorm.layernorm_backward(R, cache)
    L = projection_loss(lambda: layernorm.layernorm_forward(x, scale, shift)[0], R)
    check_all(L, {"x": (x, dx), "scale": (scale, dscale), "shift": (shift, dshift)})


def test_gelu():
    rng = np.random.default_rng(2)
    x = rand(rng, 3, 7, scale=3.0)
    out, cache = gelu.gelu_forward(x)
    R = rand(rng, *out.shape)
    L = projection_loss(lambda: gelu.gelu_forward(x)[0], R)
    check_all(L, {"x": (x, gelu.gelu_backward(R, cache))})


def test_softmax():
    rng = np.random.default_rng(3)
    x = rand(rng, 2, 4, 6, scale=4.0)
    for axis in (-1, 1):
        out, cache = softmax.softmax_forward(x, axis=axis)
        R = rand(rng, *out.shape)
        L = projection_loss(lambda: softmax.softmax_forward(x, axis=axis)[0], R)
        check_all(L, {f"x(axis={axis})": (x, softmax.softmax_backward(R, cache))})


def test_dropout_uses_the_forward_mask():
    rng = np.random.default_rng(4)
    x = rand(rng, 4, 5)
    mask = dropout.dropout_mask(x.shape, 0.3, np.random.default_rng(7))
    out, cache = dropout.dropout_forward(x, 0.3, mask=mask)
    R = rand(rng, *out.shape)
    L = projection_loss(lambda: dropout.dropout_forward(x, 0.3, mask=mask)[0], R)
    check_all(L, {"x": (x, dropout.dropout_backward(R, cache))})


def test_token_embedding_accumulates_repeated_ids():
    rng = np.random.default_rng(5)
    W = rand(rng, 7, 4)
    idx = np.array([[1, 3, 1], [1, 0, 6]])           # id 1 appears three times
    out, cache = embedding.embedding_forward(W, idx)
    R = rand(rng, *out.shape)
    dW = embedding.embedding_backward(R, cache)
    np.testing.assert_allclose(dW[1], R[0, 0] + R[0, 2] + R[1, 0], rtol=1e-12)
    L = projection_loss(lambda: embedding.embedding_forward(W, idx)[0], R)
    check_all(L, {"W": (W, dW)})


def test_pos_embedding():
    rng = np.random.default_rng(6)
    W = rand(rng, 9, 4)
    out, cache = embedding.pos_embedding_forward(W, 5)
    R = rand(rng, 2, 5, 4)                          # broadcast over a batch of 2
    L = projection_loss(lambda: np.broadcast_to(embedding.pos_embedding_forward(W, 5)[0], R.shape), R)
    check_all(L, {"W": (W, embedding.pos_embedding_backward(R, cache))})


def test_simple_attention():
    rng = np.random.default_rng(6)
    x = rand(rng, 6, 5, scale=0.7)                  # scores x_t . x_s of order 1: no saturated softmax rows
    out, cache = attention.simple_attention_forward(x)
    assert np.array_equal(out, attention.simple_attention(x))
    R = rand(rng, *out.shape)
    dx = attention.simple_attention_backward(R, cache)
    L = projection_loss(lambda: attention.simple_attention(x), R)
    check_all(L, {"x": (x, dx)})
    # x feeds queries, keys and values: a backward that forgets the key path (dscores^T x) is caught
    weights = cache.softmax.probs
    dscores = softmax.softmax_backward(R @ x.T, cache.softmax)
    without_keys = weights.T @ R + dscores @ x
    with pytest.raises(AssertionError, match="relative error"):
        check_gradient(L, x, without_keys, tol=TOL, name="x")
    x32 = x.astype(np.float32)
    out32, cache32 = attention.simple_attention_forward(x32)
    assert out32.dtype == attention.simple_attention_backward(R.astype(np.float32), cache32).dtype == np.float32


def attention_params(rng, C, D, qkv_bias, out_proj=True):
    p = {}
    for name in ("W_query", "W_key", "W_value"):
        p[f"{name}.weight"] = rand(rng, D, C, scale=0.5)
        if qkv_bias:
            p[f"{name}.bias"] = rand(rng, D)
    if out_proj:
        p["out_proj.weight"], p["out_proj.bias"] = rand(rng, C, C, scale=0.5), rand(rng, C)
    return p


@pytest.mark.parametrize("causal,qkv_bias,drop_rate", [(True, False, 0.0), (False, False, 0.0), (True, True, 0.0),
                                                     (True, True, 0.3)])
def test_single_head_attention(causal, qkv_bias, drop_rate):
    rng = np.random.default_rng(7)
    x = rand(rng, 2, 5, 6)
    p = attention_params(rng, 6, 4, qkv_bias=qkv_bias, out_proj=False)
    mask = dropout.dropout_mask((2, 5, 5), drop_rate, np.random.default_rng(9)) if drop_rate else None

    def run():
        return attention.single_head_attention_forward(x, p, causal=causal, drop_rate=drop_rate, dropout_mask=mask)

    out, cache = run()
    R = rand(rng, *out.shape)
    dx, grads = attention.single_head_attention_backward(R, cache)
    assert set(grads) == set(p)
    check_all(projection_loss(lambda: run()[0], R), {"x": (x, dx), **{k: (p[k], grads[k]) for k in p}})


@pytest.mark.parametrize("qkv_bias,drop_rate", [(False, 0.0), (True, 0.0), (True, 0.25)])
def test_multihead_attention(qkv_bias, drop_rate):
    rng = np.random.default_rng(8)
    B, T, C, H = 2, 5, 8, 2
    x = rand(rng, B, T, C)
    p = attention_params(rng, C, C, qkv_bias)
    mask = dropout.dropout_mask((B, H, T, T), drop_rate, np.random.default_rng(9)) if drop_rate else None

    def run():
        return attention.multihead_attention_forward(x, p, H, drop_rate=drop_rate, dropout_mask=mask)

    out, cache = run()
    R = rand(rng, *out.shape)
    dx, grads = attention.multihead_attention_backward(R, cache)
    assert set(grads) == set(p)
    check_all(projection_loss(lambda: run()[0], R), {"x": (x, dx), **{k: (p[k], grads[k]) for k in p}})


def test_causal_attention_ignores_the_future():
    rng = np.random.default_rng(10)
    x = rand(rng, 1, 6, 8)
    p = attention_params(rng, 8, 8, qkv_bias=True)
    out, _ = attention.multihead_attention_forward(x, p, 2)
    x_changed = x.copy()
    x_changed[0, 4:] += 10.0                        # change only positions 4 and 5
    out_changed, _ = attention.multihead_attention_forward(x_changed, p, 2)
    np.testing.assert_allclose(out[0, :4], out_changed[0, :4], rtol=1e-12)
    assert not np.allclose(out[0, 4:], out_changed[0, 4:])


def test_feedforward():
    rng = np.random.default_rng(11)
    x = rand(rng, 2, 3, 4)
    p = {"fc1.weight": rand(rng, 16, 4), "fc1.bias": rand(rng, 16), "fc2.weight": rand(rng, 4, 16), "fc2.bias": rand(rng, 4)}
    out, cache = feedforward.feedforward_forward(x, p)
    R = rand(rng, *out.shape)
    dx, grads = feedforward.feedforward_backward(R, cache)
    L = projection_loss(lambda: feedforward.feedforward_forward(x, p)[0], R)
    check_all(L, {"x": (x, dx), **{k: (p[k], grads[k]) for k in p}})


def small_config(**overrides):
    values = dict(vocab_size=11, context_length=8, emb_dim=8, n_heads=2, n_layers=2, drop_rate=0.0, qkv_bias=True)
    values.update(overrides)
    return GPTConfig(**values)


def perturbed_params(config, seed):
    """init_params in float64, with biases and norms moved off their 0/1 init so every term is exercised."""
    params = model.init_params(config, seed=seed, dtype=np.float64)
    rng = np.random.default_rng(seed + 100)
    for name, value in params.items():
        if value.ndim == 1:
            value += rng.standard_normal(value.shape) * 0.3
        elif name != "out_head.weight" or not config.tie_weights:
            value *= 10.0                          # 0.02-scale weights make the checks too easy
    return params


@pytest.mark.parametrize("drop_rate", [0.0, 0.2])
def test_transformer_block(drop_rate):
    config = small_config(drop_rate=drop_rate)
    params = perturbed_params(config, seed=12)
    p = {k[len("blocks.0."):]: v for k, v in params.items() if k.startswith("blocks.0.")}
    x = rand(np.random.default_rng(13), 2, 5, config.emb_dim)

    def run():  # the same rng seed every call -> the same dropout masks every call
        return block.block_forward(x, p, config, train=True, rng=np.random.default_rng(14))

    out, cache = run()
    R = rand(np.random.default_rng(15), *out.shape)
    dx, grads = block.block_backward(R, cache)
    assert set(grads) == set(p)
    check_all(projection_loss(lambda: run()[0], R), {"x": (x, dx), **{k: (p[k], grads[k]) for k in p}})


def test_cross_entropy_with_ignore_index():
    rng = np.random.default_rng(16)
    logits = rand(rng, 2, 4, 6, scale=3.0)
    targets = np.array([[1, -100, 5, 0], [-100, 2, 2, -100]])
    value, cache = loss.cross_entropy_forward(logits, targets)
    # Reference: mean over the 5 kept positions of -log softmax.
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    kept = targets != -100
    expected = -np.mean(logp[kept, targets[kept]])
    assert abs(value - expected) < 1e-12
    dlogits = loss.cross_entropy_backward(cache)
    assert np.all(dlogits[~kept] == 0)
    L = lambda: loss.cross_entropy_forward(logits, targets)[0]  # noqa: E731
    check_all(L, {"logits": (logits, dlogits)})


def test_cross_entropy_all_ignored_is_nan_with_zero_gradient():
    value, cache = loss.cross_entropy_forward(np.ones((1, 2, 3)), np.full((1, 2), -100))
    assert np.isnan(value)
    assert not loss.cross_entropy_backward(cache).any()     # nothing to learn from: zero, not nan (as torch)


def test_cross_entropy_upstream_gradient_scales():
    """dloss != 1 (a loss that is itself scaled or summed later): dlogits = dloss * dL/dlogits."""
    rng = np.random.default_rng(23)
    logits, targets = rand(rng, 3, 5, scale=2.0), np.array([4, -100, 0])
    value, cache = loss.cross_entropy_forward(logits, targets)
    dlogits = loss.cross_entropy_backward(cache, dloss=-0.7)
    L = lambda: -0.7 * loss.cross_entropy_forward(logits, targets)[0]  # noqa: E731
    check_all(L, {"logits": (logits, dlogits)})


@pytest.mark.parametrize("tie_weights,qkv_bias,drop_rate", [(True, True, 0.0), (False, False, 0.0), (True, False, 0.1)])
def test_whole_model_every_parameter(tie_weights, qkv_bias, drop_rate):
    config = small_config(tie_weights=tie_weights, qkv_bias=qkv_bias, drop_rate=drop_rate)
    params = perturbed_params(config, seed=17)
    data_rng = np.random.default_rng(18)
    idx = data_rng.integers(0, config.vocab_size, (2, 6))
    idx[0, :3] = 4                                # repeated ids
    targets = data_rng.integers(0, config.vocab_size, (2, 6))
    targets[1, 2] = -100

    def L():
        logits, _ = model.forward(params, idx, config, train=True, rng=np.random.default_rng(19))
        return loss.cross_entropy_forward(logits, targets)[0]

    _, grads = model.loss_and_grads(params, idx, targets, config, train=True, rng=np.random.default_rng(19))
    assert list(grads) == list(params)
    if tie_weights:
        assert grads["out_head.weight"] is grads["tok_emb.weight"]
    seen = set()
    for name, value in params.items():
        if id(value) in seen:
            continue
        seen.add(id(value))
        check_gradient(L, value, grads[name], tol=TOL, max_entries=25, name=name)


def test_the_check_catches_a_layernorm_backward_without_its_variance_term(monkeypatch):
    """Proof the checks can fail: drop the `xhat * mean(dxhat * xhat)` term and the x-gradient must be rejected."""
    def broken_backward(dout, cache):
        dxhat = dout * cache.scale
        dx = cache.rstd * (dxhat - dxhat.mean(-1, keepdims=True))     # variance term missing
        return dx, (dout * cache.xhat).sum(axis=(0, 1)), dout.sum(axis=(0, 1))

    rng = np.random.default_rng(20)
    x, scale, shift = rand(rng, 2, 3, 8), rand(rng, 8), rand(rng, 8)
    out, cache = layernorm.layernorm_forward(x, scale, shift)
    R = rand(rng, *out.shape)
    dx, _, _ = broken_backward(R, cache)
    L = projection_loss(lambda: layernorm.layernorm_forward(x, scale, shift)[0], R)
    with pytest.raises(AssertionError, match="relative error"):
        check_gradient(L, x, dx, tol=TOL, name="x")
    # ... and the same corruption inside the whole model is caught too.
    monkeypatch.setattr(block, "layernorm_backward", broken_backward)
    config = small_config()
    params = perturbed_params(config, seed=21)
    idx = np.random.default_rng(22).integers(0, config.vocab_size, (2, 5))
    _, grads = model.loss_and_grads(params, idx, idx, config)
    L = lambda: loss.cross_entropy_forward(model.forward(params, idx, config)[0], idx)[0]  # noqa: E731
    with pytest.raises(AssertionError, match="relative error"):
        check_gradient(L, params["blocks.0.att.W_query.weight"], grads["blocks.0.att.W_query.weight"], tol=TOL)


def test_float32_stays_float32():
    config = small_config()
    params = model.init_params(config, seed=0, dtype=np.float32)
    idx = np.zeros((1, 4), dtype=np.int64)
    logits, _ = model.forward(params, idx, config)
    assert logits.dtype == np.float32
    _, grads = model.loss_and_grads(params, idx, idx, config)
    assert all(g.dtype == np.float32 for g in grads.values())
