"""The head-by-head causal attention core (npgpt.attention._causal_heads_forward / _heads_backward): what the
model's forward and backward run for causal attention without dropout, each head's steps in one worker.

Oracles independent of that code: the attention written out per head with a full (T, T) mask (NumPy, float64)
for the forward, torch autograd of the same formula for the backward; and the general path (the same core
with an explicit mask, which takes the other branch) for the dispatch.
"""
import math

import numpy as np
import pytest
import torch

from npgpt import attention


def brute_force_attention(q, k, v):
    """softmax(q k^T / sqrt(D), future masked) v, one head at a time, full matrices: (context, weights)."""
    lead, (T, D) = q.shape[:-2], q.shape[-2:]
    context = np.empty(q.shape)
    weights = np.empty(lead + (T, T))
    for i in np.ndindex(*lead):
        scores = q[i] @ k[i].T / math.sqrt(D)
        scores[np.triu(np.ones((T, T), dtype=bool), k=1)] = -np.inf
        e = np.exp(scores - scores.max(axis=-1, keepdims=True))
        weights[i] = e / e.sum(axis=-1, keepdims=True)
        context[i] = weights[i] @ v[i]
    return context, weights


def random_qkv(B, H, T, D, seed):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((B, H, T, D)) for _ in range(3)]


def causal_core(q, k, v):
    return attention._attention_core_forward(q, k, v, causal=True, drop_rate=0.0, rng=None, dropout_mask=None)


@pytest.fixture(autouse=True)
def unset_memory_is_nan(monkeypatch):
    """np.empty's float arrays come filled with NaN here, so a kernel that reads memory it never wrote (the
    skipped block of the scores, an output written into a copy) fails every time, not when the garbage happens
    to be nonzero."""
    real_empty = np.empty

    def nan_empty(*args, **kwargs):
        array = real_empty(*args, **kwargs)
        if array.dtype.kind == "f":
            array.fill(np.nan)
        return array

    monkeypatch.setattr(attention.np, "empty", nan_empty)


@pytest.fixture(params=["rows split", "rows whole"])
def split(request, monkeypatch):
    """Both paths of the causal kernel: rows split in two (attention._row_blocks) or whole. Shapes this small
    never reach CAUSAL_SPLIT_MIN_SKIPPED, so the threshold is set for each."""
    monkeypatch.setattr(attention, "CAUSAL_SPLIT_MIN_SKIPPED", 1 if request.param == "rows split" else 2**62)
    return request.param == "rows split"


@pytest.mark.parametrize("T", [1, 7, 40])
def test_forward_equals_the_full_masked_attention(T, split):
    q, k, v = random_qkv(2, 3, T, 5, seed=T)
    context, cache = causal_core(q, k, v)
    assert cache.causal                      # the backward may skip the future block
    expected_context, expected_weights = brute_force_attention(q, k, v)
    np.testing.assert_allclose(context, expected_context, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(cache.att, expected_weights, rtol=1e-12, atol=1e-14)
    assert np.all(cache.att[..., np.triu(np.ones((T, T), dtype=bool), k=1)] == 0.0)    # exactly 0, not tiny


def test_head_kernel_gives_the_general_paths_values(split):
    """The same operations as the general path (an explicit mask sends the core there) except the skipped block
    of future keys (_row_blocks), whose weights are exactly 0 there: equal up to the order BLAS and the softmax's
    sum add the remaining terms in (float64, ~1e-16)."""
    q, k, v = random_qkv(2, 3, 9, 4, seed=1)
    context, cache = causal_core(q, k, v)
    hide = np.triu(np.ones((9, 9), dtype=bool), k=1)
    general, general_cache = attention._attention_core_forward(q, k, v, causal=False, drop_rate=0.0, rng=None,
                                                               dropout_mask=None, hide=hide)
    np.testing.assert_allclose(context, general, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(cache.att, general_cache.att, rtol=1e-13, atol=1e-16)
    assert np.all(cache.att[..., hide] == 0.0)


def test_backward_equals_torch_autograd(split):
    T, D = 11, 4
    q, k, v = random_qkv(2, 3, T, D, seed=5)
    dcontext = np.random.default_rng(6).standard_normal(q.shape)
    _, cache = causal_core(q, k, v)
    dq, dk, dv = attention._attention_core_backward(dcontext, cache)
    qt, kt, vt = (torch.tensor(a, requires_grad=True) for a in (q, k, v))
    scores = qt @ kt.transpose(-1, -2) / math.sqrt(D)
    scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    (torch.softmax(scores, dim=-1) @ vt).backward(torch.tensor(dcontext))
    for name, ours, reference in (("dq", dq, qt.grad), ("dk", dk, kt.grad), ("dv", dv, vt.grad)):
        np.testing.assert_allclose(ours, reference.numpy(), rtol=1e-10, atol=1e-12, err_msg=name)


def test_backward_of_unmasked_weights_reads_every_key(split):
    """Weights of attention without a causal mask (single_head_attention(causal=False)) go through the same head
    kernel backward; it must not skip the block the causal forward leaves out (cache.causal is False)."""
    T, D = 6, 4
    q, k, v = random_qkv(2, 3, T, D, seed=8)
    dcontext = np.random.default_rng(9).standard_normal(q.shape)
    _, cache = attention._attention_core_forward(q, k, v, causal=False, drop_rate=0.0, rng=None, dropout_mask=None)
    assert not cache.causal and cache.dropout is None
    dq, dk, dv = attention._attention_core_backward(dcontext, cache)
    qt, kt, vt = (torch.tensor(a, requires_grad=True) for a in (q, k, v))
    (torch.softmax(qt @ kt.transpose(-1, -2) / math.sqrt(D), dim=-1) @ vt).backward(torch.tensor(dcontext))
    for name, ours, reference in (("dq", dq, qt.grad), ("dk", dk, kt.grad), ("dv", dv, vt.grad)):
        np.testing.assert_allclose(ours, reference.numpy(), rtol=1e-10, atol=1e-12, err_msg=name)


def test_float32_stays_float32_and_matches(split):
    q, k, v = (a.astype(np.float32) for a in random_qkv(1, 2, 9, 8, seed=2))
    context, cache = causal_core(q, k, v)
    assert context.dtype == cache.att.dtype == np.float32
    expected, _ = brute_force_attention(*(a.astype(np.float64) for a in (q, k, v)))
    np.testing.assert_allclose(context, expected, rtol=0, atol=1e-5)


# --- grouped-query heads: G query heads over one key/value head, k and v with a size-1 axis (B, KV, 1, T, D) ---

def random_grouped_qkv(B, KV, G, T, D, seed):
    """q (B, KV, G, T, D) and the shared k, v (B, KV, 1, T, D), float64."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((B, KV, G, T, D)), rng.standard_normal((B, KV, 1, T, D)), \
        rng.standard_normal((B, KV, 1, T, D))


def torch_grouped_grads(q, k, v, dcontext, dropout_keep=None, drop_rate=0.0):
    """Autograd of the formula with k and v broadcast over the group by torch's matmul (its backward sums them)."""
    T, D = q.shape[-2:]
    qt, kt, vt = (torch.tensor(a, requires_grad=True) for a in (q, k, v))
    scores = (qt @ kt.transpose(-1, -2) / math.sqrt(D)).masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1),
                                                                     float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    if dropout_keep is not None:
        weights = weights * torch.tensor(dropout_keep) / (1.0 - drop_rate)
    (weights @ vt).backward(torch.tensor(dcontext))
    return qt.grad.numpy(), kt.grad.numpy(), vt.grad.numpy()


@pytest.mark.parametrize("G", [1, 3])
def test_grouped_forward_equals_attention_over_repeated_heads(G, split):
    """Each of the G stacked query heads reads its key/value head: the per-head brute force over copies of k, v."""
    q, k, v = random_grouped_qkv(2, 2, G, 7, 4, seed=G)
    context, cache = causal_core(q, k, v)
    repeated = [np.broadcast_to(t, q.shape) for t in (k, v)]
    expected_context, expected_weights = brute_force_attention(q, *repeated)
    assert context.shape == q.shape and cache.att.shape == q.shape[:-1] + (7,)
    np.testing.assert_allclose(context, expected_context, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(cache.att, expected_weights, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("B, KV, G", [(2, 2, 3), (1, 1, 4), (3, 1, 2)])
def test_grouped_backward_sums_each_kv_heads_gradient(B, KV, G, split):
    """dk and dv come back in k's (B, KV, 1, T, D) shape, the sum over the group's query heads (torch autograd)."""
    q, k, v = random_grouped_qkv(B, KV, G, 6, 4, seed=B * 10 + G)
    dcontext = np.random.default_rng(7).standard_normal(q.shape)
    _, cache = causal_core(q, k, v)
    grads = attention._attention_core_backward(dcontext, cache)
    for name, ours, reference in zip(("dq", "dk", "dv"), grads, torch_grouped_grads(q, k, v, dcontext)):
        assert ours.shape == reference.shape, name
        np.testing.assert_allclose(ours, reference, rtol=1e-10, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("B, KV, G, T", [(2, 2, 3, 5), (1, 1, 4, 7)])
def test_general_path_sums_grouped_gradients_too(B, KV, G, T):
    """With dropout the core takes the general path (matmul_stack over every query head); its key/value gradients
    are summed over the group as well (attention._summed_to)."""
    q, k, v = random_grouped_qkv(B, KV, G, T, 4, seed=3)
    keep = np.random.default_rng(4).random(q.shape[:-1] + (T,)) < 0.7
    dcontext = np.random.default_rng(5).standard_normal(q.shape)
    _, cache = attention._attention_core_forward(q, k, v, causal=True, drop_rate=0.3, rng=None, dropout_mask=keep)
    assert cache.dropout is not None
    grads = attention._attention_core_backward(dcontext, cache)
    expected = torch_grouped_grads(q, k, v, dcontext, dropout_keep=keep, drop_rate=0.3)
    for name, ours, reference in zip(("dq", "dk", "dv"), grads, expected):
        assert ours.shape == reference.shape, name
        np.testing.assert_allclose(ours, reference, rtol=1e-10, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("T", [1, 2, 3, 7, 256])
@pytest.mark.parametrize("group", [1, 3])
def test_row_blocks_cover_every_visible_key_once(T, group):
    """Brute force over (row, key) pairs: every key a causal row sees (s <= t) lies in exactly one block's range,
    read by that row's block; no block reads past the keys; and the rows are covered in order."""
    for causal in (True, False):
        blocks = attention._row_blocks(T, T, causal, group)
        assert [b[0] for b in blocks] == [0] + [b[1] for b in blocks[:-1]] and blocks[-1][1] == T
        for first, last, seen in blocks:
            assert seen <= T and all(t < seen or not causal for t in range(first, last))
            assert causal or seen == T
    split_size = attention.CAUSAL_SPLIT_MIN_SKIPPED
    expected_split = group * (T // 2) ** 2 >= split_size
    assert (len(attention._row_blocks(T, T, True, group)) == 2) == expected_split


@pytest.mark.parametrize("grouped", [False, True])
def test_float32_backward_stays_float32(grouped, split):
    """dq, dk, dv in float32 for float32 inputs, and close to the float64 gradients."""
    if grouped:
        q, k, v = random_grouped_qkv(2, 2, 3, 9, 8, seed=4)
    else:
        q, k, v = random_qkv(2, 3, 9, 8, seed=4)
    dcontext = np.random.default_rng(5).standard_normal(q.shape)
    expected = attention._attention_core_backward(dcontext, causal_core(q, k, v)[1])
    as32 = [a.astype(np.float32) for a in (q, k, v, dcontext)]
    grads = attention._attention_core_backward(as32[3], causal_core(*as32[:3])[1])
    for name, ours, reference in zip(("dq", "dk", "dv"), grads, expected):
        assert ours.dtype == np.float32, name
        np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-5 * np.abs(reference).max(), err_msg=name)


def test_keys_broadcast_over_the_batch_go_the_general_path():
    """k, v with a batch axis of 1 against q's B: neither one kv head per query head nor grouped, so the head
    kernels do not apply (they would loop over k's axes only); the general path broadcasts them correctly."""
    rng = np.random.default_rng(6)
    q = rng.standard_normal((2, 3, 5, 4))
    k, v = rng.standard_normal((1, 3, 5, 4)), rng.standard_normal((1, 3, 5, 4))
    dcontext = rng.standard_normal(q.shape)
    context, cache = causal_core(q, k, v)
    expected, _ = brute_force_attention(q, *(np.broadcast_to(t, q.shape) for t in (k, v)))
    np.testing.assert_allclose(context, expected, rtol=1e-12, atol=1e-12)
    dq, dk, dv = attention._attention_core_backward(dcontext, cache)
    qt, kt, vt = (torch.tensor(a, requires_grad=True) for a in (q, k, v))
    scores = (qt @ kt.transpose(-1, -2) / 2.0).masked_fill(torch.ones(5, 5, dtype=torch.bool).triu(1), float("-inf"))
    (torch.softmax(scores, dim=-1) @ vt).backward(torch.tensor(dcontext))
    for name, ours, reference in (("dq", dq, qt.grad), ("dk", dk, kt.grad), ("dv", dv, vt.grad)):
        np.testing.assert_allclose(ours, reference.numpy(), rtol=1e-10, atol=1e-12, err_msg=name)


def test_values_wider_than_keys():
    """The value width may differ from the key width: context (..., T, Dv)."""
    rng = np.random.default_rng(7)
    q, k, v = rng.standard_normal((2, 3, 6, 4)), rng.standard_normal((2, 3, 6, 4)), rng.standard_normal((2, 3, 6, 5))
    context, _ = causal_core(q, k, v)
    _, weights = brute_force_attention(q, k, k)                        # the weights do not depend on v
    np.testing.assert_allclose(context, weights @ v, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("threshold", [0, 1, 2**15])
def test_one_position_never_splits(threshold, monkeypatch):
    """T = 1 has no half to skip, whatever the threshold."""
    monkeypatch.setattr(attention, "CAUSAL_SPLIT_MIN_SKIPPED", threshold)
    assert attention._row_blocks(1, 1, True, 3) == [(0, 1, 1)]
