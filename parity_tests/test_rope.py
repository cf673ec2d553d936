"""Rotary position embedding (Llama's rotate-half convention): npgpt's tables, rotation and backward against
torchgpt (autograd), against angles worked out by hand and against RoPE's defining property (scores depend
only on the positions' difference); positions with an offset (a KV cache's) and per batch row (left padding);
finite differences; a planted bug (the backward rotating by +angle) must be caught."""
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import npgpt.rope as nprope
import torchgpt.rope as trope
from parity_tests.conftest import (Values, assert_close, assert_matches_finite_differences, budget, dtypes,
                                   make_array, planted_bug, record_example, to_torch, torch_dtype,
                                   torch_with_reference, values)

THETAS = st.sampled_from([10000.0, 100000.0, 500000.0, 7.0])


@st.composite
def rope_positions(draw, B, T):
    """(T,) positions from an offset (a KV cache's prefix), or (B, T): one offset per batch row."""
    if draw(st.booleans()):
        return draw(st.integers(0, 8192)) + np.arange(T)
    return np.array([draw(st.integers(0, 8192)) for _ in range(B)])[:, None] + np.arange(T)


def check_rope(B, H, T, D, positions, theta, recipe, dtype):
    """npgpt vs torchgpt: the tables, the rotated x and dx = the backward of a random upstream gradient."""
    x = make_array(recipe, (B, H, T, D), dtype)
    dout = (make_array(recipe, (B, H, T, D), np.float64, salt=2) / recipe.scale).astype(dtype)
    cos, sin = nprope.rope_tables(positions, D, theta, dtype)
    out, cache = nprope.rope_forward(x, cos, sin)
    dx = nprope.rope_backward(dout, cache)
    assert out.dtype == dx.dtype == cos.dtype == dtype

    def run(tdtype):
        cos_t, sin_t = trope.rope_tables(torch.as_tensor(positions), D, theta, tdtype)
        x_t = to_torch(x).to(tdtype).requires_grad_()
        out_t = trope.rope(x_t, cos_t, sin_t)
        out_t.backward(to_torch(dout).to(tdtype))
        return {"cos": cos_t, "sin": sin_t, "out": out_t, "dx": x_t.grad}

    expected, reference = torch_with_reference(run, dtype)
    reference = reference or {key: None for key in expected}
    assert_close(cos, expected["cos"], floor=1.0, name="rope cos table", reference=reference["cos"])
    assert_close(sin, expected["sin"], floor=1.0, name="rope sin table", reference=reference["sin"])
    # Each output sums two products of |x| with |cos|, |sin| <= 1: that is the magnitude of its roundoff.
    assert_close(out, expected["out"], floor=float(np.abs(x).max()), name="rope out", reference=reference["out"])
    assert_close(dx, expected["dx"], floor=float(np.abs(dout).max()), name="rope dx", reference=reference["dx"])
    return x, cos, sin, dout, dx


@budget(40)
@given(data=st.data(), B=st.integers(1, 3), H=st.integers(1, 4), T=st.integers(1, 16), half=st.integers(1, 8),
       theta=THETAS, recipe=values(), dtype=dtypes)
def test_rope(data, B, H, T, half, theta, recipe, dtype):
    record_example()
    check_rope(B, H, T, 2 * half, data.draw(rope_positions(B, T)), theta, recipe, dtype)


def test_rope_known_angles():
    """By hand: D = 4, theta = 100 -> inv_freq = (1, 0.1): at position p, pair (x0, x2) turns by p and
    (x1, x3) by p / 10."""
    record_example()
    x = np.array([1.0, 2.0, 3.0, 4.0])
    for p in (0, 1, 5, 1000):
        cos, sin = nprope.rope_tables(np.array([p]), 4, 100.0, np.float64)
        out = nprope.rope_forward(x[None, None, None], cos, sin)[0].reshape(4)
        a, b = p, p / 10
        expected = [1 * np.cos(a) - 3 * np.sin(a), 2 * np.cos(b) - 4 * np.sin(b),
                    3 * np.cos(a) + 1 * np.sin(a), 4 * np.cos(b) + 2 * np.sin(b)]
        assert_close(out, np.array(expected), name=f"rope by hand at position {p}")


@budget(10)
@given(T=st.integers(1, 8), shift=st.integers(0, 5000), half=st.integers(1, 8), theta=THETAS, recipe=values())
def test_scores_depend_on_the_positions_difference_only(T, shift, half, theta, recipe):
    """q_m . k_n after rotation depends on m - n alone: shifting every position leaves the scores as they were."""
    record_example()
    D = 2 * half
    q, k = make_array(recipe, (1, 1, T, D), np.float64), make_array(recipe, (1, 1, T, D), np.float64, salt=1)

    def scores(offset):
        cos, sin = nprope.rope_tables(offset + np.arange(T), D, theta, np.float64)
        return nprope.rope_forward(q, cos, sin)[0] @ nprope.rope_forward(k, cos, sin)[0].swapaxes(-1, -2)

    assert_close(scores(shift), scores(0), floor=float(np.abs(q).max() * np.abs(k).max() * D),
                 rtol=1e-10 * max(1.0, shift * 10), name="rope shifted scores")   # angles of size `shift` lose ~shift ulps


def test_odd_head_width_is_refused():
    record_example()
    with pytest.raises(ValueError, match="even head width, got 5"):
        nprope.rope_tables(np.arange(3), 5, 10000.0)
    with pytest.raises(ValueError, match="even head width, got 5"):
        trope.rope_tables(torch.arange(3), 5, 10000.0)


@budget(5)
@given(recipe=values(scales=(1.0, 1e3)), offset=st.integers(0, 100))
def test_rope_finite_differences(recipe, offset):
    record_example()
    x, cos, sin, dout, dx = check_rope(2, 2, 3, 6, offset + np.arange(3), 10000.0, recipe, np.float64)
    loss = lambda: float((nprope.rope_forward(x, cos, sin)[0] * dout).sum())
    assert_matches_finite_differences(loss, x, dx, name="rope dx", rtol=1e-5)


def backward_rotating_by_plus_angle(dout, cache):
    return nprope._rotate(dout, cache.cos, cache.sin)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_planted_bug_rope_backward_rotating_by_plus_angle(dtype, monkeypatch):
    record_example()
    plain = Values(seed=1, scale=1.0, ties=False)
    check_rope(2, 2, 5, 8, 3 + np.arange(5), 10000.0, plain, dtype)
    monkeypatch.setattr(nprope, "rope_backward", backward_rotating_by_plus_angle)
    with planted_bug("rope backward rotating by +angle"):
        check_rope(2, 2, 5, 8, 3 + np.arange(5), 10000.0, plain, dtype)


def test_module_form_equals_function():
    record_example()
    x = to_torch(np.random.default_rng(0).standard_normal((1, 2, 4, 6)))
    positions = torch.arange(7, 11)
    cos, sin = trope.rope_tables(positions, 6, 500.0, torch_dtype(np.float64))
    assert_close(trope.RotaryEmbedding(6, 500.0)(x, positions), trope.rope(x, cos, sin), name="rope module")
