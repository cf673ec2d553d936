"""The speed tricks of npgpt change nothing but speed: threaded blocks, fused loss, in-place buffers, dtypes.

Each fast path is compared with the plain formula it replaces; the threaded ones also with a run on one
thread (the results must be bitwise equal, as each element or row is computed by the same ufunc calls).
"""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from npgpt import attention, gelu, loss, model, optim, softmax
from npgpt.speed import memory, parallel
from gptcore.config import GPTConfig


@pytest.fixture
def two_threads():
    previous = parallel.set_num_threads(2)
    yield
    parallel.set_num_threads(previous)


def on_one_thread(fn):
    previous = parallel.set_num_threads(1)
    try:
        return fn()
    finally:
        parallel.set_num_threads(previous)


def test_parallel_for_covers_every_index_once(two_threads):
    hits = np.zeros(1003, dtype=np.int64)
    blocks = []

    def mark(start, stop):
        blocks.append((start, stop))
        hits[start:stop] += 1

    parallel.parallel_for(mark, 1003, 100)
    assert (hits == 1).all()
    assert sorted(blocks)[-1] == (1000, 1003) and len(blocks) == 11


def test_parallel_for_nested_calls_run_and_errors_propagate(two_threads):
    total = np.zeros(8, dtype=np.int64)

    def outer(start, stop):
        parallel.parallel_for(lambda a, b: np.add.at(total, np.arange(a, b), 1), 8, 2)  # nested: serial

    parallel.parallel_for(outer, 4, 1)
    assert (total == 4).all()

    def broken(start, stop):
        if start == 3:
            raise RuntimeError("block 3 failed")

    with pytest.raises(RuntimeError, match="block 3 failed"):
        parallel.parallel_for(broken, 6, 1)


def test_set_num_threads_rejects_nonsense():
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="positive integer"):
            parallel.set_num_threads(bad)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gelu_and_softmax_keep_dtype_and_do_not_depend_on_threads(two_threads, dtype):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((5, 3, 70_001 // 15)) * 3).astype(dtype)   # several GELU blocks
    dout = rng.standard_normal(x.shape).astype(dtype)
    out, cache = gelu.gelu_forward(x)
    dx = gelu.gelu_backward(dout, cache)
    assert out.dtype == dx.dtype == dtype
    out1, cache1 = on_one_thread(lambda: gelu.gelu_forward(x))
    np.testing.assert_array_equal(out, out1)
    np.testing.assert_array_equal(dx, on_one_thread(lambda: gelu.gelu_backward(dout, cache1)))

    y, scache = softmax.softmax_forward(x, axis=-1)
    dy = softmax.softmax_backward(dout, scache)
    assert y.dtype == dy.dtype == dtype
    y1, scache1 = on_one_thread(lambda: softmax.softmax_forward(x, axis=-1))
    np.testing.assert_array_equal(y, y1)
    np.testing.assert_array_equal(dy, on_one_thread(lambda: softmax.softmax_backward(dout, scache1)))


def test_gelu_accepts_a_non_contiguous_input():
    x = np.random.default_rng(1).standard_normal((6, 4)).astype(np.float32).T      # (4, 6) view
    out, cache = gelu.gelu_forward(x)
    expected = 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-7)
    dx = gelu.gelu_backward(np.ones_like(x), cache)
    assert dx.shape == x.shape and out.flags.c_contiguous


def test_softmax_out_and_other_axes():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 4, 5))
    for axis in (0, 1, -1):
        y, cache = softmax.softmax_forward(x, axis=axis)
        expected = np.exp(x) / np.exp(x).sum(axis=axis, keepdims=True)
        np.testing.assert_allclose(y, expected, rtol=1e-12)
        dout = rng.standard_normal(x.shape)
        dx = softmax.softmax_backward(dout, cache)
        np.testing.assert_allclose(dx, y * (dout - (dout * y).sum(axis=axis, keepdims=True)), rtol=1e-12, atol=1e-15)
    buffer = x.copy()
    y, _ = softmax.softmax_forward(buffer, out=buffer)       # in place
    assert y is buffer
    np.testing.assert_allclose(buffer, np.exp(x) / np.exp(x).sum(-1, keepdims=True), rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_cross_entropy_equals_forward_then_backward(two_threads, dtype):
    rng = np.random.default_rng(3)
    logits = (rng.standard_normal((2, 9, 37)) * 4).astype(dtype)
    targets = rng.integers(0, 37, (2, 9))
    targets[0, 2] = targets[1, 5] = loss.IGNORE_INDEX
    expected_loss, cache = loss.cross_entropy_forward(logits, targets)
    expected_dlogits = loss.cross_entropy_backward(cache, dloss=0.5)
    buffer = logits.copy()
    fused_loss, dlogits = loss.cross_entropy_loss_and_grad(buffer, targets, dloss=0.5, overwrite_logits=True)
    assert dlogits.dtype == dtype and dlogits.shape == logits.shape
    assert np.shares_memory(dlogits, buffer)                 # the logits buffer became dlogits
    tol = 1e-6 if dtype == np.float32 else 1e-14
    assert fused_loss == pytest.approx(expected_loss, rel=tol)
    np.testing.assert_allclose(dlogits, expected_dlogits, rtol=tol, atol=tol * 1e-2)
    assert (dlogits[0, 2] == 0).all() and (dlogits[1, 5] == 0).all()
    # Without overwrite_logits the caller's logits are untouched.
    kept = logits.copy()
    loss.cross_entropy_loss_and_grad(logits, targets)
    loss.cross_entropy_forward(logits, targets)
    np.testing.assert_array_equal(logits, kept)


def test_cross_entropy_matches_the_plain_formula_in_float64():
    rng = np.random.default_rng(4)
    logits = rng.standard_normal((6, 11)) * 5
    targets = rng.integers(0, 11, 6)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    expected = -log_probs[np.arange(6), targets].mean()
    value, dlogits = loss.cross_entropy_loss_and_grad(logits, targets)
    assert value == pytest.approx(expected, rel=1e-13)
    onehot = np.eye(11)[targets]
    np.testing.assert_allclose(dlogits, (np.exp(log_probs) - onehot) / 6, rtol=1e-12, atol=1e-16)


def plain_adamw_step(p, g, m, v, t, lr, betas, eps, wd):
    """torch.optim.AdamW's formulas written out on whole arrays, in float64."""
    p = p * (1 - lr * wd)
    m = betas[0] * m + (1 - betas[0]) * g
    v = betas[1] * v + (1 - betas[1]) * g * g
    denom = np.sqrt(v) / np.sqrt(1 - betas[1] ** t) + eps
    return p - lr / (1 - betas[0] ** t) * m / denom, m, v


def test_blocked_adamw_equals_the_plain_formulas(two_threads, monkeypatch):
    monkeypatch.setattr(optim, "ADAMW_BLOCK", 64)            # many blocks even for small arrays
    rng = np.random.default_rng(5)
    weight = rng.standard_normal((30, 50))
    params = {"w": weight.copy(), "wt": weight.T.copy().T, "b": rng.standard_normal(50)}   # "wt": not C-contiguous
    assert not params["wt"].flags.c_contiguous
    opt = optim.AdamW(lr=1e-2, weight_decay=0.1)
    expected = {k: (v.copy(), np.zeros_like(v), np.zeros_like(v)) for k, v in params.items()}
    for t in (1, 2, 3):
        grads = {k: rng.standard_normal(v.shape) for k, v in params.items()}
        opt.step(params, grads)
        for name, (p, m, v) in expected.items():
            wd = 0.1 if p.ndim >= 2 else 0.0
            expected[name] = plain_adamw_step(p, grads[name], m, v, t, 1e-2, (0.9, 0.999), 1e-8, wd)
    for name, (p, _, _) in expected.items():
        np.testing.assert_allclose(params[name], p, rtol=1e-13, atol=1e-15, err_msg=name)
    assert params["w"].dtype == np.float64


def test_adamw_keeps_float32_and_is_thread_count_independent(monkeypatch):
    monkeypatch.setattr(optim, "ADAMW_BLOCK", 100)
    rng = np.random.default_rng(6)
    start = {"w": rng.standard_normal((40, 30)).astype(np.float32), "b": np.zeros(30, np.float32)}
    grads = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in start.items()}
    results = []
    for threads in (1, 2):
        previous = parallel.set_num_threads(threads)
        try:
            params = {k: v.copy() for k, v in start.items()}
            opt = optim.AdamW(lr=1e-3)
            opt.step(params, grads)
            opt.step(params, grads)
        finally:
            parallel.set_num_threads(previous)
        assert all(v.dtype == np.float32 for v in list(params.values()) + list(opt.m.values()) + list(opt.v.values()))
        results.append(params)
    for name in start:
        np.testing.assert_array_equal(results[0][name], results[1][name])


def test_adamw_at_its_real_block_size_races_nothing_and_misses_no_block():
    """At the real ADAMW_BLOCK (not patched), an array of 3 blocks and a partial one: two threads give the
    bits one thread gives, and both equal the plain formulas. Catches a scratch buffer shared between blocks
    (a race only enough work per thread shows) and a last partial block left out."""
    rng = np.random.default_rng(9)
    n = 3 * optim.ADAMW_BLOCK + 17
    start = rng.standard_normal(n)
    grads = [rng.standard_normal(n) for _ in range(2)]
    results = []
    for threads in (1, 2):
        previous = parallel.set_num_threads(threads)
        try:
            params, opt = {"w": start.copy()[None]}, optim.AdamW(lr=1e-2, weight_decay=0.1)
            for g in grads:
                opt.step(params, {"w": g[None]})
        finally:
            parallel.set_num_threads(previous)
        results.append(params["w"][0])
    np.testing.assert_array_equal(results[0], results[1])
    p, m, v = start, np.zeros(n), np.zeros(n)
    for t, g in enumerate(grads, start=1):
        p, m, v = plain_adamw_step(p, g, m, v, t, 1e-2, (0.9, 0.999), 1e-8, 0.1)
    np.testing.assert_allclose(results[1], p, rtol=1e-13, atol=1e-15)


def test_attention_and_model_stay_float32_and_thread_independent(two_threads):
    config = GPTConfig(vocab_size=97, context_length=16, emb_dim=32, n_heads=4, n_layers=2, drop_rate=0.0)
    params = model.init_params(config, seed=0)
    rng = np.random.default_rng(7)
    idx = rng.integers(0, 97, (3, 16))
    targets = rng.integers(0, 97, (3, 16))
    logits, _ = model.forward(params, idx, config)
    assert logits.dtype == np.float32
    loss_value, grads = model.loss_and_grads(params, idx, targets, config)
    assert all(g.dtype == np.float32 for g in grads.values())
    loss1, grads1 = on_one_thread(lambda: model.loss_and_grads(params, idx, targets, config))
    assert loss_value == loss1
    for name in grads:
        np.testing.assert_array_equal(grads[name], grads1[name], err_msg=name)
    x = rng.standard_normal((2, 16, 32)).astype(np.float32)
    out, cache = attention.multihead_attention_forward(x, {k[len("blocks.0.att."):]: v for k, v in params.items()
                                                          if k.startswith("blocks.0.att.")}, 4)
    dx, _ = attention.multihead_attention_backward(np.ones_like(out), cache)
    assert out.dtype == dx.dtype == np.float32


def test_keep_freed_memory_is_idempotent():
    first = memory.keep_freed_memory()
    assert isinstance(first, bool)
    assert memory.keep_freed_memory() == first


# A fresh process imports npgpt (nothing else set up), then allocates, touches and frees a 64 MiB array
# five times and counts its minor page faults: with freed memory kept, the later arrays reuse the first
# one's pages (about 0 faults); with glibc's defaults each one is mapped and faulted in again.
_ALLOCATOR_PROBE = textwrap.dedent("""
    import resource
    import npgpt
    import numpy as np
    from npgpt.speed import memory
    def faults():
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    a = np.ones(16 << 20, dtype=np.float32); del a
    before = faults()
    for _ in range(5):
        a = np.ones(16 << 20, dtype=np.float32); del a
    print(memory.is_applied(), faults() - before)
""")


def _probe_allocator(switch):
    env = {k: v for k, v in os.environ.items() if k != memory.ENV_SWITCH}
    if switch is not None:
        env[memory.ENV_SWITCH] = switch
    done = subprocess.run([sys.executable, "-c", _ALLOCATOR_PROBE], env=env, capture_output=True, text=True,
                          timeout=120)
    return done


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings exist on Linux only")
def test_importing_npgpt_keeps_freed_memory_and_the_switch_turns_it_off():
    by_default, switched_off = _probe_allocator(None), _probe_allocator("0")
    assert by_default.returncode == 0 and switched_off.returncode == 0, by_default.stderr + switched_off.stderr
    applied, faults_kept = by_default.stdout.split()
    not_applied, faults_off = switched_off.stdout.split()
    assert (applied, not_applied) == ("True", "False")
    # 5 x 64 MiB: thousands of faults when every array is mapped anew (2,720 here), ~0 when reused
    assert int(faults_off) > 500 and int(faults_kept) * 10 < int(faults_off), (faults_kept, faults_off)


def test_a_bad_switch_value_names_the_variable():
    done = _probe_allocator("yes")
    assert done.returncode != 0
    assert "NPGPT_KEEP_FREED_MEMORY must be 0" in done.stderr


@pytest.mark.parametrize("threshold", [0, parallel.SMALL_STACK_MULTIPLY_ADDS],
                         ids=["shared-among-threads", "small-stack-plain-matmul"])
def test_matmul_stack_equals_matmul_and_restores_the_blas_threads(two_threads, monkeypatch, threshold):
    from threadpoolctl import threadpool_info

    monkeypatch.setattr(parallel, "SMALL_STACK_MULTIPLY_ADDS", threshold)   # 0: even these tiny stacks are shared

    def blas_threads():
        return [info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"]

    before = blas_threads()
    rng = np.random.default_rng(8)
    q = rng.standard_normal((2, 3, 5, 4)).astype(np.float32)
    k = rng.standard_normal((2, 5, 3, 4)).astype(np.float32).transpose(0, 2, 1, 3)     # split-heads view
    for a, b in [(q, np.swapaxes(k, -1, -2)),                      # (2, 3, 5, 4) @ (2, 3, 4, 5)
                 (q[0], np.swapaxes(k[0], -1, -2)),                # 3-D stack
                 (q, rng.standard_normal((4, 6)).astype(np.float32)),        # broadcast 2-D right operand
                 (q[:1, :1], np.swapaxes(k[:1, :1], -1, -2))]:     # a single matrix: plain np.matmul
        out = parallel.matmul_stack(a, b)
        np.testing.assert_allclose(out, np.matmul(a, b), rtol=1e-5, atol=1e-6)
        assert out.dtype == np.float32 and out.shape == np.matmul(a, b).shape
    assert blas_threads() == before
