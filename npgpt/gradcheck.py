"""Central finite differences: the independent check that every hand-written backward is right.

For a scalar function L(x) the numerical gradient of one entry is
    dL/dx_i ~ (L(x + h e_i) - L(x - h e_i)) / (2 h)          (error O(h^2))
Run it in float64: with h = 1e-6 the rounding error is about 1e-16 / 1e-6 = 1e-10 relative.
"""
import numpy as np


def numerical_grad(loss_fn, array, *, h=1e-6, max_entries=None, rng=None):
    """Estimates dL/d(array) by central differences, perturbing `array` in place (restored after).

    loss_fn() -> float reads `array`. Returns (the flat indices checked, in row order, and the numerical
    gradient at them).
    With max_entries, a random sample of entries is checked (big tensors).
    """
    if max_entries is None or array.size <= max_entries:
        indices = np.arange(array.size)
    else:
        rng = rng or np.random.default_rng(0)
        indices = rng.choice(array.size, size=max_entries, replace=False)
    estimates = np.empty(indices.size, dtype=np.float64)
    for j, i in enumerate(indices):
        entry = np.unravel_index(i, array.shape)     # the i-th entry in row order, written in place whatever
        original = array[entry]                      # the memory layout (a transposed view has no flat view)
        array[entry] = original + h
        loss_plus = loss_fn()
        array[entry] = original - h
        loss_minus = loss_fn()
        array[entry] = original
        estimates[j] = (loss_plus - loss_minus) / (2 * h)
    return indices, estimates


def relative_error(analytic, numeric):
    """max |a - n| / max(max |a|, max |n|): an error relative to the gradient's own magnitude."""
    analytic, numeric = np.asarray(analytic, np.float64), np.asarray(numeric, np.float64)
    scale = max(np.abs(analytic).max(initial=0.0), np.abs(numeric).max(initial=0.0), 1e-30)
    return float(np.abs(analytic - numeric).max(initial=0.0) / scale)


def check_gradient(loss_fn, array, analytic_grad, *, tol=1e-6, atol=1e-8, h=1e-6, max_entries=None, name="x"):
    """Asserts the analytic gradient of loss_fn w.r.t. `array` matches central differences within `tol`.

    `tol` is relative to the gradient's magnitude. `atol` only matters for gradients that are zero in exact
    arithmetic (e.g. the key bias: softmax ignores a constant added to a whole row of scores), where the
    central difference returns pure rounding noise, about eps * |L| / h ~ 1e-9 for |L| ~ 10.
    """
    if array.dtype != np.float64:
        raise TypeError(f"finite-difference checks need float64 inputs, {name} is {array.dtype}")
    indices, numeric = numerical_grad(loss_fn, array, h=h, max_entries=max_entries)
    analytic = np.asarray(analytic_grad).reshape(-1)[indices]
    if np.abs(analytic).max(initial=0.0) <= atol and np.abs(numeric).max(initial=0.0) <= atol:
        return 0.0
    error = relative_error(analytic, numeric)
    assert error <= tol, f"gradient of {name}: relative error {error:.3e} > {tol:.0e}"
    return error
