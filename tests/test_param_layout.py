"""npgpt's parameter layouts: init_params and npgpt.load_weights give the "fast" one by default (the matrices a
batch-1 product reads faster transposed stored so, shared-input groups side by side), "torch" on request.

Only the memory order differs, so everything must give what the row-by-row layout gives: the forward, the
gradients (which come out in each weight's own layout, so that AdamW steps them block by block), AdamW's
update bit for bit, the gradient norm, finite differences, training, a resumed run, saving.
"""
import numpy as np
import pytest

import npgpt
import npgpt.optim as np_optim
from gptcore.config import get_config
from gptcore.engine.decoding import reads_faster_transposed
from gptcore.params import unique_arrays
from npgpt.gradcheck import check_gradient, numerical_grad
from npgpt.linear import linear_backward, linear_forward, side_by_side, stored_transposed
from npgpt.classifier import classifier_from_lm_params
from npgpt.model import fast_layout, init_params, loss_and_grads, relay_in_place, torch_layout
from npgpt.optim import AdamW, blockable_views, clip_grad_norm, global_grad_norm

QKV = ("W_query", "W_key", "W_value")


def configs():
    return {"gpt2": get_config("tiny", vocab_size=97, context_length=24, drop_rate=0.0),
            "gpt2-untied": get_config("tiny", vocab_size=97, context_length=24, drop_rate=0.0, tie_weights=False),
            "llama": get_config("tiny-llama", vocab_size=101, context_length=32, n_kv_heads=2)}


def batch(config, seed=0, shape=(2, 9)):
    rng = np.random.default_rng(seed)
    return rng.integers(0, config.vocab_size, shape), rng.integers(0, config.vocab_size, shape)


@pytest.mark.parametrize("which", list(configs()))
def test_init_params_is_fast_by_default_with_the_values_of_the_torch_layout(which):
    config = configs()[which]
    fast, rows = init_params(config, seed=3), init_params(config, seed=3, layout="torch")
    assert list(fast) == list(rows)
    for name in rows:
        assert rows[name].flags.c_contiguous, name
        assert fast[name].shape == rows[name].shape and fast[name].dtype == rows[name].dtype
        np.testing.assert_array_equal(fast[name], rows[name], err_msg=name)
    groups = [("att.W_query", "att.W_key", "att.W_value")] + ([("ff.gate", "ff.up")] if which == "llama" else [])
    grouped = {f"blocks.{i}.{layer}.weight" for i in range(config.n_layers) for group in groups for layer in group}
    for i in range(config.n_layers):
        for group in groups:                         # side by side, in order: one product reads them
            together = side_by_side([fast[f"blocks.{i}.{layer}.weight"] for layer in group])
            assert together is not None and together.flags.c_contiguous, (i, group)
    transposed = {name for name in fast if stored_transposed(fast[name])}
    assert transposed == grouped | {name for name in fast if reads_faster_transposed(name, fast[name].shape, config)}
    assert all(fast[name].T.flags.c_contiguous for name in transposed - grouped)   # whole matrices
    expected = {"out_head.weight", "blocks.1.att.out_proj.weight"} | ({"blocks.0.ff.fc1.weight"} if which != "llama"
                                                                        else set())
    assert expected <= transposed                    # by hand: out >= in, the (V, C) head
    kept = {"blocks.0.ff.down.weight"} if which == "llama" else {"blocks.0.ff.fc2.weight"}
    assert not kept & transposed                     # in > out: faster as it is
    assert (fast["out_head.weight"] is fast["tok_emb.weight"]) == config.tie_weights
    if not config.tie_weights:                       # an untied embedding is read by rows: it stays so
        assert fast["tok_emb.weight"].flags.c_contiguous
    # fast_layout of the rows gives the same layout; of the fast one, the same objects
    again = fast_layout(rows, config)
    assert all(stored_transposed(again[name]) == stored_transposed(fast[name]) for name in fast)
    assert all(fast_layout(fast, config)[name] is fast[name] for name in fast)
    assert all(torch_layout(fast)[name].flags.c_contiguous for name in fast)


def test_an_unknown_layout_is_refused_by_name():
    with pytest.raises(ValueError, match="unknown parameter layout 'rows'"):
        init_params(configs()["gpt2"], layout="rows")
    with pytest.raises(ValueError, match="unknown parameter layout"):
        npgpt.load_weights("no-such-file", layout="columns")


def test_load_weights_gives_the_fast_layout_unless_asked(tmp_path):
    from gptcore.formats.checkpoint import save_checkpoint
    config = configs()["llama"]
    params = init_params(config, seed=1, layout="torch")
    path = save_checkpoint(tmp_path / "model.npz", params, config)
    config_read, fast = npgpt.load_weights(path)
    _, rows = npgpt.load_weights(path, layout="torch")
    assert config_read == config
    assert stored_transposed(fast["blocks.0.ff.up.weight"]) and rows["blocks.0.ff.up.weight"].flags.c_contiguous
    for name in params:
        np.testing.assert_array_equal(fast[name], params[name], err_msg=name)
        np.testing.assert_array_equal(rows[name], params[name], err_msg=name)


@pytest.mark.parametrize("how", ["transposed", "column block"])
def test_linear_gradient_comes_in_the_weights_layout_with_the_same_values(how):
    rng = np.random.default_rng(0)
    x, dout = rng.standard_normal((2, 5, 6)), rng.standard_normal((2, 5, 4))
    rows = rng.standard_normal((4, 6))
    if how == "transposed":
        weight = np.ascontiguousarray(rows.T).T
    else:                                            # the middle block of three, as a side-by-side group stores it
        together = rng.standard_normal((6, 12))
        together[:, 4:8] = rows.T
        weight = together[:, 4:8].T
    assert stored_transposed(weight) and not stored_transposed(rows)
    _, cache = linear_forward(x, weight)
    dx, dweight, _ = linear_backward(dout, cache)
    _, cache_rows = linear_forward(x, rows)
    dx_rows, dweight_rows, _ = linear_backward(dout, cache_rows)
    assert dweight.T.flags.c_contiguous and dweight_rows.flags.c_contiguous
    np.testing.assert_allclose(dweight, dweight_rows, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(dx, dx_rows, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(dweight, np.einsum("bto,bti->oi", dout, x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("which", list(configs()))
def test_gradients_match_the_torch_layout_and_every_one_is_blockable_with_its_parameter(which):
    config = configs()[which]
    fast = init_params(config, seed=2, dtype=np.float64)
    rows = torch_layout(fast)
    idx, targets = batch(config)
    loss_fast, grads_fast = loss_and_grads(fast, idx, targets, config)
    loss_rows, grads_rows = loss_and_grads(rows, idx, targets, config)
    assert loss_fast == pytest.approx(loss_rows, rel=1e-13)
    for name, p in unique_arrays(fast):
        np.testing.assert_allclose(grads_fast[name], grads_rows[name], rtol=1e-10, atol=1e-13, err_msg=name)
        m = np.zeros_like(p)
        assert blockable_views((p, grads_fast[name], m, m)) is not None, name     # AdamW's fast path, not one block
    assert global_grad_norm(grads_fast) == pytest.approx(global_grad_norm(grads_rows), rel=1e-13)


def test_adamw_steps_every_layout_bit_for_bit_alike_and_in_blocks(monkeypatch):
    monkeypatch.setattr(np_optim, "ADAMW_BLOCK", 16)              # several blocks of rows per matrix
    rng = np.random.default_rng(1)
    together = rng.standard_normal((6, 15)).astype(np.float32)
    layouts = {"rows": {"a": np.ascontiguousarray(together[:, 5:10].T), "b": rng.standard_normal(7).astype(np.float32)},
               "fast": {"a": together[:, 5:10].T, "b": None}}
    layouts["fast"]["b"] = layouts["rows"]["b"].copy()
    layouts["rows"]["a"] = layouts["rows"]["a"].copy()
    grads = [{"a": rng.standard_normal((5, 6)).astype(np.float32), "b": rng.standard_normal(7).astype(np.float32)}
             for _ in range(3)]
    optimizers = {k: AdamW(lr=0.1, weight_decay=0.1) for k in layouts}
    calls = []
    real = np_optim.parallel_for
    monkeypatch.setattr(np_optim, "parallel_for", lambda fn, n, block: calls.append((n, block)) or real(fn, n, block))
    for g in grads:
        for k, params in layouts.items():
            step_grads = dict(g)
            if k == "fast":                                          # in the weight's layout, as backward gives it
                step_grads["a"] = np.ascontiguousarray(g["a"].T).T
            optimizers[k].step(params, step_grads)
    np.testing.assert_array_equal(layouts["fast"]["a"], layouts["rows"]["a"])
    np.testing.assert_array_equal(layouts["fast"]["b"], layouts["rows"]["b"])
    assert np.shares_memory(layouts["fast"]["a"], together)          # updated in place, in the joint matrix
    np.testing.assert_array_equal(together[:, 5:10].T, layouts["rows"]["a"])
    assert (6, 3) in calls and (7, 16) in calls                     # (in, out) rows in blocks, not one block


def test_adamw_state_restored_row_by_row_is_relaid_for_a_transposed_parameter():
    rng = np.random.default_rng(2)
    p_rows = rng.standard_normal((5, 4)).astype(np.float32)
    p_fast = np.ascontiguousarray(p_rows.T).T
    g = rng.standard_normal((5, 4)).astype(np.float32)
    first, second = AdamW(lr=0.1), AdamW(lr=0.1)
    first.step({"w": p_rows}, {"w": g})
    second.load_state_dict({"t": first.t, "m": {"w": first.m["w"].copy()}, "v": {"w": first.v["w"].copy()}})
    p_fast[...] = p_rows
    first.step({"w": p_rows}, {"w": g})
    second.step({"w": p_fast}, {"w": np.ascontiguousarray(g.T).T})
    np.testing.assert_array_equal(p_fast, p_rows)
    assert stored_transposed(second.m["w"]) and stored_transposed(second.v["w"])


def test_clipping_scales_transposed_gradients_in_place():
    g = np.ascontiguousarray(np.arange(12.0).reshape(3, 4).T).T          # (3, 4) stored transposed
    norm = clip_grad_norm({"w": g}, 1.0)
    assert norm == pytest.approx(np.sqrt((np.arange(12.0) ** 2).sum()))
    assert np.linalg.norm(g) == pytest.approx(1.0, rel=1e-6)


def test_finite_differences_perturb_a_transposed_parameter_in_place():
    weight = np.ascontiguousarray(np.arange(1.0, 7.0).reshape(2, 3).T).T    # no flat view exists
    coefficients = np.array([[1.0, -2.0, 3.0], [0.5, 4.0, -1.0]])
    indices, numeric = numerical_grad(lambda: float((coefficients * weight ** 2).sum()), weight)
    np.testing.assert_allclose(numeric, (2 * coefficients * weight).reshape(-1)[indices], rtol=1e-8)
    column_block = np.random.default_rng(0).standard_normal((3, 6))[:, 2:4].T
    check_gradient(lambda: float(np.sin(column_block).sum()), column_block, np.cos(column_block), name="block")


def test_relay_puts_every_array_where_the_layout_wants_it_whatever_it_was():
    config = configs()["gpt2"]
    rows = init_params(config, seed=5, layout="torch")
    odd = dict(rows)
    for layer in QKV:                                # each transposed on its own: still to be grouped
        name = f"blocks.0.att.{layer}.weight"
        odd[name] = np.ascontiguousarray(rows[name].T).T
    odd["blocks.0.ff.fc2.weight"] = np.asfortranarray(rows["blocks.0.ff.fc2.weight"])   # read by rows: back
    relaid = relay_in_place(dict(odd), config)
    assert side_by_side([relaid[f"blocks.0.att.{layer}.weight"] for layer in QKV]) is not None
    assert relaid["blocks.0.ff.fc2.weight"].flags.c_contiguous
    for name in rows:
        np.testing.assert_array_equal(relaid[name], rows[name], err_msg=name)
    # torch_layout leaves arrays already row by row as they are (no second copy of the model)
    assert all(torch_layout(rows)[name] is rows[name] for name in rows)


def test_an_embedding_untied_from_its_transposed_head_goes_back_to_rows_and_adamw_keeps_its_blocks():
    config = configs()["gpt2"]
    params = init_params(config, seed=6)
    assert stored_transposed(params["tok_emb.weight"])         # tied: stored with the head
    params["out_head.weight"] = params["tok_emb.weight"].copy()      # the untie recipe of npgpt.lora's error
    untied = config.replace(tie_weights=False)
    relay_in_place(params, untied)
    assert params["tok_emb.weight"].flags.c_contiguous and stored_transposed(params["out_head.weight"])
    idx, targets = batch(untied)
    _, grads = loss_and_grads(params, idx, targets, untied)
    m = np.zeros_like(params["tok_emb.weight"])
    assert blockable_views((params["tok_emb.weight"], grads["tok_emb.weight"], m, m)) is not None
    _, classifier = classifier_from_lm_params(init_params(config, seed=6), config, 2)
    assert classifier["tok_emb.weight"].flags.c_contiguous


def test_adamw_copies_a_gradient_laid_out_unlike_its_parameter_and_still_steps_in_blocks(monkeypatch):
    rng = np.random.default_rng(3)
    p_rows = rng.standard_normal((40, 30)).astype(np.float32)
    p_fast = np.ascontiguousarray(p_rows.T).T
    g = rng.standard_normal((40, 30)).astype(np.float32)          # row by row, unlike p_fast
    calls = []
    real = np_optim.parallel_for
    monkeypatch.setattr(np_optim, "parallel_for", lambda fn, n, block: calls.append((n, block)) or real(fn, n, block))
    for params in ({"w": p_rows}, {"w": p_fast}):
        AdamW(lr=0.1).step(params, {"w": g})
    np.testing.assert_array_equal(p_fast, p_rows)
    assert calls == [(1200, np_optim.ADAMW_BLOCK)] * 2                  # never the one-block fallback


@pytest.mark.parametrize("which", list(configs()))
def test_training_from_either_layout_gives_the_same_weights(which):
    from npgpt.train import train
    from gptcore.data import SlidingWindowDataset
    from gptcore.engine.training import TrainSettings
    config = configs()[which]
    ids = np.random.default_rng(3).integers(0, config.vocab_size, 400)
    dataset = SlidingWindowDataset(ids, 8, 8)
    settings = TrainSettings(max_steps=3, batch_size=2, lr=1e-2, seed=0)
    fast, rows = init_params(config, seed=4, dtype=np.float64), init_params(config, seed=4, dtype=np.float64,
                                                                          layout="torch")
    train(fast, config, dataset, None, settings, progress=False)
    train(rows, config, dataset, None, settings, progress=False)
    assert stored_transposed(rows["out_head.weight"])               # the dict itself was relaid
    assert (rows["out_head.weight"] is rows["tok_emb.weight"]) == config.tie_weights
    for name in fast:
        np.testing.assert_array_equal(fast[name], rows[name], err_msg=name)
