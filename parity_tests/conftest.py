"""Shared tools of the NumPy-vs-torch parity suite.

- to_torch / to_numpy: conversion both ways (float64 stays float64, float32 stays float32)
- assert_close: max-abs / max-rel comparison against a tolerance scaled to the expected magnitude;
  every call is recorded for the `gpt2 parity` table
- numerical_grad: float64 central finite differences, the independent third opinion
- hypothesis profiles "ci" (default, derandomized, bounded) and "thorough", picked by $HYPOTHESIS_PROFILE
- draw strategies: shapes (B <= 3, T <= 16, C <= 48, H | C, V small) and value recipes
  (normal, large magnitude, exact ties) turned into arrays by make_array
"""
from __future__ import annotations

import json
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

# --------------------------------------------------------------------------------------------------------
# Tolerances (max abs error <= rtol * max |expected|, see assert_close)
# --------------------------------------------------------------------------------------------------------
# float64: unit roundoff 1.1e-16. A component sums at most a few hundred products, a model chains a few
# dozen of them, so honest differences in summation order stay below ~1e-13 of the magnitude. 1e-10 keeps
# a 1000x margin for that and is still 1e6 times smaller than the smallest bug the bite tests plant (1e-4).
RTOL = {np.float64: 1e-10, np.float32: 1e-5}
# float32 (unit roundoff 6e-8): a component differs by a few ulps times the sum length, ~1e-6 of the
# magnitude; 1e-5 is the documented budget for components. Whole-model gradients pass through L blocks
# and the V-wide softmax, where cancellation amplifies roundoff: 1e-4 is their budget (test_model).
RTOL_MODEL32 = 1e-4

# --------------------------------------------------------------------------------------------------------
# Hypothesis profiles
# --------------------------------------------------------------------------------------------------------
settings.register_profile(
    "ci", derandomize=True, database=None, max_examples=25, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)
settings.register_profile(
    "thorough", max_examples=400, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
if PROFILE not in ("ci", "thorough"):
    raise ValueError(f"HYPOTHESIS_PROFILE={PROFILE!r}; choose ci or thorough")
settings.load_profile(PROFILE)


def budget(ci: int, thorough: int | None = None):
    """Per-test example count for the active profile (expensive tests ask for fewer under "ci")."""
    count = ci if PROFILE == "ci" else (thorough if thorough is not None else 16 * ci)
    return settings(max_examples=count)


# --------------------------------------------------------------------------------------------------------
# Conversion
# --------------------------------------------------------------------------------------------------------
def to_torch(array, requires_grad: bool = False) -> torch.Tensor:
    """NumPy -> torch, same dtype (a copy, so torch never writes into NumPy's buffers)."""
    tensor = torch.from_numpy(np.array(array, copy=True))
    return tensor.requires_grad_(requires_grad)


def to_numpy(tensor) -> np.ndarray:
    """torch -> NumPy (detached, CPU); NumPy arrays and scalars pass through."""
    if isinstance(tensor, torch.Tensor):
        return tensor.detach().cpu().numpy()
    return np.asarray(tensor)


def torch_dtype(dtype) -> torch.dtype:
    return {np.float64: torch.float64, np.float32: torch.float32}[np.dtype(dtype).type]


# --------------------------------------------------------------------------------------------------------
# Recording (for `gpt2 parity`): per component, worst errors, number of checks and of examples
# --------------------------------------------------------------------------------------------------------
_REGISTRY: dict = defaultdict(lambda: {"max_abs": 0.0, "max_rel": 0.0, "checks": 0, "examples": 0,
                                       "passed": 0, "failed": 0, "worst": ""})


def current_component() -> str:
    """Component of the running test: its module name without `test_` (test_layernorm.py -> layernorm)."""
    current = os.environ.get("PYTEST_CURRENT_TEST", "unknown::")
    return Path(current.split("::")[0]).stem.removeprefix("test_")


def record_example() -> None:
    """Called once at the start of every example (hypothesis calls the test body once per example)."""
    _REGISTRY[current_component()]["examples"] += 1


def _record_check(name: str, max_abs: float, max_rel: float) -> None:
    entry = _REGISTRY[current_component()]
    entry["checks"] += 1
    entry["max_abs"] = max(entry["max_abs"], max_abs)
    if max_rel >= entry["max_rel"]:
        entry["max_rel"], entry["worst"] = max_rel, name


def assert_close(actual, expected, *, rtol: float | None = None, floor: float = 0.0, name: str = "value"):
    """Asserts max |actual - expected| <= rtol * max(max |expected|, floor), and records the errors.

    The error is measured against the magnitude of the whole expected tensor (not elementwise): entries
    near zero carry the rounding noise of their larger neighbours. `floor` sets the magnitude for tensors
    that are zero in exact arithmetic (e.g. the key-bias gradient), typically the largest gradient's.
    rtol defaults to RTOL for expected's dtype. Reports max abs and max rel error on failure.
    """
    actual, expected = to_numpy(actual), to_numpy(expected)
    if actual.shape != expected.shape:
        raise AssertionError(f"{name}: shape {actual.shape} != expected {expected.shape}")
    if rtol is None:
        rtol = RTOL[np.result_type(expected.dtype, actual.dtype).type if expected.dtype.kind == "f" else np.float64]
    a, e = actual.astype(np.float64), expected.astype(np.float64)
    if not (np.array_equal(np.isfinite(a), np.isfinite(e)) and np.array_equal(a[~np.isfinite(a)], e[~np.isfinite(e)])):
        raise AssertionError(f"{name}: non-finite entries differ (nan/inf in one side only)")
    finite = np.isfinite(e)
    diff = np.abs(a[finite] - e[finite])
    max_abs = float(diff.max(initial=0.0))
    scale = max(float(np.abs(e[finite]).max(initial=0.0)), floor, 1e-300)
    max_rel = max_abs / scale
    _record_check(name, max_abs, max_rel)
    if max_rel > rtol:
        raise AssertionError(f"{name}: max abs error {max_abs:.3e}, max rel error {max_rel:.3e} "
                             f"(relative to magnitude {scale:.3e}) > rtol {rtol:.0e}")
    return max_abs, max_rel


def assert_grads_close(actual: dict, expected: dict, *, rtol=None, prefix=""):
    """assert_close for every key; each gradient's floor is 1e-3 of the largest gradient's magnitude
    (tensors whose exact gradient is 0, like W_key.bias, only hold rounding noise of the others)."""
    assert sorted(actual) == sorted(expected), f"gradient names differ: {sorted(set(actual) ^ set(expected))}"
    largest = max(float(np.abs(to_numpy(g)).max(initial=0.0)) for g in expected.values())
    for key in expected:
        assert_close(actual[key], expected[key], rtol=rtol, floor=1e-3 * largest, name=f"{prefix}{key}")


def pytest_runtest_logreport(report):
    if report.when == "call" or (report.when == "setup" and report.failed):
        entry = _REGISTRY[Path(report.nodeid.split("::")[0]).stem.removeprefix("test_")]
        if report.passed:
            entry["passed"] += 1
        elif report.failed:
            entry["failed"] += 1


def pytest_sessionfinish(session, exitstatus):
    """Writes the registry to $PARITY_REPORT (JSON) when set; `gpt2 parity` prints it as a table."""
    path = os.environ.get("PARITY_REPORT")
    if not path:
        return
    payload = {"profile": PROFILE, "components": dict(sorted(_REGISTRY.items()))}
    tmp = Path(path).with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------------------
# Finite differences (float64)
# --------------------------------------------------------------------------------------------------------
def numerical_grad(loss_fn, array: np.ndarray, *, h: float = 1e-6, max_entries: int = 20, seed: int = 0):
    """Central differences (L(x + h) - L(x - h)) / 2h at up to max_entries random entries of `array`.

    loss_fn() -> float reads `array`, which is perturbed in place and restored. Returns (flat indices,
    estimates). float64 only: with h = 1e-6 the roundoff is ~1e-10 relative, the truncation O(h^2).
    """
    if array.dtype != np.float64:
        raise TypeError(f"finite differences need float64, got {array.dtype}")
    flat = array.reshape(-1)
    rng = np.random.default_rng(seed)
    indices = rng.choice(flat.size, size=min(max_entries, flat.size), replace=False)
    estimates = np.empty(indices.size)
    for j, i in enumerate(indices):
        original = flat[i]
        flat[i] = original + h
        plus = loss_fn()
        flat[i] = original - h
        minus = loss_fn()
        flat[i] = original
        estimates[j] = (plus - minus) / (2 * h)
    return indices, estimates


def assert_matches_finite_differences(loss_fn, array, analytic_grad, *, name, rtol=1e-6, max_entries=20):
    """The analytic gradient at sampled entries agrees with central differences within rtol (float64)."""
    indices, numeric = numerical_grad(loss_fn, array, max_entries=max_entries)
    analytic = np.asarray(to_numpy(analytic_grad), np.float64).reshape(-1)[indices]
    assert_close(analytic, numeric, rtol=rtol, floor=1e-8, name=f"finite differences {name}")


# --------------------------------------------------------------------------------------------------------
# Strategies
# --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Values:
    """A recipe for test arrays: a seed, a magnitude, and whether entries repeat exactly (ties)."""
    seed: int
    scale: float
    ties: bool

    def rng(self, salt: int = 0) -> np.random.Generator:
        return np.random.default_rng([self.seed, salt])


def values(scales=(1e-3, 1.0, 1.0, 10.0, 1e3)):
    """Normal values at a drawn magnitude, or (ties=True) a handful of repeated values (-2..2) * scale."""
    return st.builds(Values, seed=st.integers(0, 2**32 - 1), scale=st.sampled_from(scales), ties=st.booleans())


def make_array(recipe: Values, shape, dtype, salt: int = 0) -> np.ndarray:
    rng = recipe.rng(salt)
    if recipe.ties:
        raw = rng.integers(-2, 3, size=shape).astype(np.float64)
    else:
        raw = rng.standard_normal(shape)
    return (raw * recipe.scale).astype(dtype)


def weights(rng: np.random.Generator, shape, dtype, std: float = 0.3) -> np.ndarray:
    """Parameter-like values (normal, std `std`), drawn in float64 and cast."""
    return (rng.standard_normal(shape) * std).astype(dtype)


@st.composite
def model_dims(draw, max_c: int = 48):
    """(B, T, C, H) with B <= 3, T <= 16, C <= max_c and H dividing C."""
    H = draw(st.integers(1, 4))
    D = draw(st.integers(1, max(1, max_c // H)))
    return draw(st.integers(1, 3)), draw(st.integers(1, 16)), H * D, H


dtypes = st.sampled_from([np.float64, np.float32])


@pytest.fixture(autouse=True)
def _deterministic_torch():
    """Same torch thread count and no grad-mode leaks between tests."""
    torch.set_grad_enabled(True)
    yield


# --------------------------------------------------------------------------------------------------------
# Whole models (generation tests): small random GPT configs, parameters with opinions, the torch twin
# --------------------------------------------------------------------------------------------------------
@st.composite
def small_gpt_configs(draw, max_vocab: int = 48, max_context: int = 12):
    """A GPTConfig with V <= max_vocab, T_max <= max_context, C = H * D <= 24, 1-2 layers, no dropout."""
    from npgpt.config import GPTConfig

    n_heads = draw(st.integers(1, 3))
    return GPTConfig(vocab_size=draw(st.integers(4, max_vocab)), context_length=draw(st.integers(3, max_context)),
                     emb_dim=n_heads * draw(st.integers(1, 8)), n_heads=n_heads, n_layers=draw(st.integers(1, 2)),
                     drop_rate=0.0, qkv_bias=draw(st.booleans()), tie_weights=draw(st.booleans()))


def random_gpt_params(config, seed: int, dtype, std: float = 0.3) -> dict:
    """GPT-2's init (npgpt.model.init_params) with the weights scaled from std 0.02 up to `std`, LayerNorm
    scales and shifts and the biases jittered by N(0, 0.1): GPT-2's init gives nearly uniform next-token
    distributions, these give a tiny model clear preferences (and LayerNorm/bias paths nonzero work)."""
    from npgpt.model import init_params
    from npgpt.params import unique_arrays

    params = init_params(config, seed=seed, dtype=dtype)
    rng = np.random.default_rng(seed)
    for name, value in unique_arrays(params):
        if name.endswith((".scale", ".shift", ".bias")):
            value += weights(rng, value.shape, dtype, std=0.1)
        else:
            value *= std / 0.02
    return params


def torch_twin(params: dict, config):
    """A torchgpt.GPTModel in eval mode holding `params`, in their dtype (float64 stays float64)."""
    from torchgpt import GPTModel, load_numpy_params

    model = GPTModel(config).to(torch_dtype(params["tok_emb.weight"].dtype))
    return load_numpy_params(model, params).eval()
