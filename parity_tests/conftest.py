"""Shared tools of the NumPy-vs-torch parity suite (docs/parity.md explains the choices).

- RTOL and TORCH_ERROR_FACTOR: the tolerances, with their reasons
- hypothesis profiles "ci" (default, derandomized, bounded) and "thorough", picked by $HYPOTHESIS_PROFILE and
  defined in tests/hypothesis_profiles.py (both suites use them); budget(n) sets a test's ci example count
- to_torch / to_numpy: conversion both ways (float64 stays float64, float32 stays float32)
- assert_close / assert_grads_close: max-abs / max-rel comparison against a tolerance scaled to the
  expected magnitude (floors for cancelled results, a float64 `reference` for float32); every call is
  recorded for the `gpt2 parity` table (record_example counts examples)
- torch_with_reference: run a torch computation in the test's dtype and, for float32, in float64
- KeyBiasFloors: the magnitude of the exactly-zero key-bias gradients of a torch model
- planted_bug: the context that proves a check rejects a deliberately broken backward
- causal_split: npgpt's causal attention core with its rows split in two, or whole (both paths checked)
- RecordingGenerator: npgpt's dropout rng that records the masks; fed_dropout_masks feeds torch the same ones
- numerical_grad / assert_matches_finite_differences: float64 central differences (npgpt.gradcheck)
- strategies: shapes (B <= 3, T <= 16, C <= 48, H | C, V small), value recipes (normal at magnitudes
  1e-3..1e3, exact ties) turned into arrays by make_array; small GPT configs and parameters
"""
from __future__ import annotations

import os
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import torch
from hypothesis import settings
from hypothesis import strategies as st

from npgpt import attention as npattention
from npgpt import gradcheck
from gptcore.fileio import atomic_write_json
from tests.hypothesis_profiles import load_profile_from_env

# --------------------------------------------------------------------------------------------------------
# Tolerances (max abs error <= rtol * magnitude, see assert_close)
# --------------------------------------------------------------------------------------------------------
# float64 answers "is the math right". Unit roundoff 1.1e-16; a component sums at most a few hundred
# products, a model chains a few dozen of them, so honest differences in summation order stay below ~1e-13
# of the magnitude. 1e-10 keeps a 1000x margin for that and is still 1e6 times smaller than the smallest bug
# the bite tests plant (1e-4).
# float32 answers "does it run like torch". Unit roundoff 6e-8; a component differs by a few ulps times
# the sum length, ~1e-6 of the magnitude, so 1e-5 is the budget, for components and the whole model alike.
RTOL = {np.float64: 1e-10, np.float32: 1e-5}
# Where the problem itself is ill-conditioned (a saturated softmax, a gradient that cancels to far below
# the terms it sums), no float32 code gets within 1e-5 of the exact answer, torch included. For those a
# float32 check may pass a `reference`: the same torch computation run in float64 on the float32 inputs
# widened exactly. The budget becomes
#     max |numpy - torch| <= rtol * magnitude + TORCH_ERROR_FACTOR * max |torch - reference|
# i.e. NumPy may be up to (factor - 1) = 4 times as far from the exact result as torch's own float32 run
# (|numpy - torch| <= |numpy - exact| + |torch - exact|). Where torch is accurate the second term is
# ~1e-7 of the magnitude and 1e-5 rules; a planted 1e-4 bug is caught either way (and always in float64).
# Why 4: two rounding errors of an ill-conditioned problem are random draws; over the thorough profile's
# thousands of examples NumPy's came out up to ~3x torch's (a factor of 3 failed 2 of ~20000 checks).
TORCH_ERROR_FACTOR = 5.0

# --------------------------------------------------------------------------------------------------------
# Hypothesis profiles
# --------------------------------------------------------------------------------------------------------
# Shared with tests/ (tests/hypothesis_profiles.py); loaded here too for a parity_tests folder run on its own.
PROFILE = load_profile_from_env()


def budget(ci: int, thorough: int | None = None):
    """Per-test example count for the active profile: `ci` examples under "ci" (at least 20 per property, so
    the derandomized run reaches past hypothesis's first, minimal examples; the trajectory bites, 4 training
    runs per example, take 3), `thorough` (default 16 x ci) under "thorough"."""
    count = ci if PROFILE == "ci" else (thorough if thorough is not None else 16 * ci)
    return settings(max_examples=count)


# --------------------------------------------------------------------------------------------------------
# Conversion
# --------------------------------------------------------------------------------------------------------
def to_torch(array, requires_grad: bool = False) -> torch.Tensor:
    """NumPy -> torch, same dtype (a copy, so torch never writes into NumPy's buffers); nudged by one ulp
    during torch_with_reference's nudged run."""
    tensor = torch.from_numpy(np.array(nudged(array), copy=True))
    return tensor.requires_grad_(requires_grad)


_NUDGE = {"rng": None}     # a Generator while torch_with_reference's nudged float32 run is on


def nudged(array):
    """During the nudged run, a copy of a float array with every entry moved one ulp up or down at random
    (what storing a value in the dtype may cost anyway); otherwise the array itself."""
    rng = _NUDGE["rng"]
    if rng is None or np.asarray(array).dtype.kind != "f":
        return array
    array = np.asarray(array)
    toward = np.where(rng.random(array.shape) < 0.5, -np.inf, np.inf).astype(array.dtype)
    return np.nextafter(array, toward)


def nudged_params(params: dict) -> dict:
    """nudged() for a parameter dict (what load_numpy_params gets in a run); a tied array stays one array."""
    if _NUDGE["rng"] is None:
        return params
    by_id = {}
    return {name: by_id.setdefault(id(value), nudged(value)) for name, value in params.items()}


def to_numpy(tensor) -> np.ndarray:
    """torch -> NumPy (detached, CPU); NumPy arrays and scalars pass through."""
    if isinstance(tensor, torch.Tensor):
        return tensor.detach().cpu().numpy()
    return np.asarray(tensor)


def torch_dtype(dtype) -> torch.dtype:
    return {np.float64: torch.float64, np.float32: torch.float32}[np.dtype(dtype).type]


# --------------------------------------------------------------------------------------------------------
# Recording (for `gpt2 parity`): per component, worst errors per dtype, number of checks and of examples
# --------------------------------------------------------------------------------------------------------
def _new_entry():
    return {"checks": 0, "examples": 0, "passed": 0, "failed": 0, "planted_caught": 0,
            "max_abs": {}, "max_rel": {},       # per dtype name ("float64", "float32")
            "worst": "", "worst_share": 0.0}    # the check that used most of its tolerance, and how much


_REGISTRY: dict = defaultdict(_new_entry)
_RECORDING = {"on": True}   # off while a planted bug runs: its (intended) failures are not parity errors


def current_component() -> str:
    """Component of the running test: its module name without `test_` (test_layernorm.py -> layernorm)."""
    current = os.environ.get("PYTEST_CURRENT_TEST", "unknown::")
    return Path(current.split("::")[0]).stem.removeprefix("test_")


def record_example() -> None:
    """Called once at the start of every example (hypothesis calls the test body once per example)."""
    _REGISTRY[current_component()]["examples"] += 1


def _record_check(name: str, dtype_name: str, max_abs: float, max_rel: float, share: float) -> None:
    """share: error / allowed error (<= 1 passes); the largest share names the component's worst tensor."""
    if not _RECORDING["on"]:
        return
    entry = _REGISTRY[current_component()]
    entry["checks"] += 1
    entry["max_abs"][dtype_name] = max(entry["max_abs"].get(dtype_name, 0.0), max_abs)
    entry["max_rel"][dtype_name] = max(entry["max_rel"].get(dtype_name, 0.0), max_rel)
    if share >= entry["worst_share"]:
        entry["worst_share"], entry["worst"] = share, f"{name} ({dtype_name})"


def _as_float64(array) -> np.ndarray:
    return to_numpy(array).astype(np.float64)


def assert_close(actual, expected, *, rtol: float | None = None, floor: float = 0.0, name: str = "value",
                 reference=None):
    """Asserts max |actual - expected| <= rtol * max(max |expected|, floor) (+ the float32 allowance below),
    and records the errors.

    The error is measured against the magnitude of the whole expected tensor (not elementwise): entries
    near zero carry the rounding noise of their larger neighbours. `floor` sets the magnitude for tensors
    that cancel to (nearly) zero, e.g. the magnitude of the terms a gradient sums.
    rtol defaults to RTOL for the lower of the two dtypes. `reference` (float32 checks only): the float64
    result of the same computation (or a Reference from torch_with_reference); adds TORCH_ERROR_FACTOR times
    torch's own float32 error, max |expected - reference| (or the nudged run's, if larger), to the budget;
    a float64 check adds it only for a Reference from torch_with_reference(..., nudge_float64=True).
    Reports max abs and max rel error on failure.
    """
    actual, expected = to_numpy(actual), to_numpy(expected)
    if actual.shape != expected.shape:
        raise AssertionError(f"{name}: shape {actual.shape} != expected {expected.shape}")
    dtype = np.result_type(actual.dtype, expected.dtype) if expected.dtype.kind == "f" else np.dtype(np.float64)
    if rtol is None:
        rtol = RTOL[dtype.type]
    a, e = actual.astype(np.float64), expected.astype(np.float64)
    if not (np.array_equal(np.isfinite(a), np.isfinite(e))
            and np.array_equal(a[~np.isfinite(a)], e[~np.isfinite(e)], equal_nan=True)):
        raise AssertionError(f"{name}: non-finite entries differ (nan/inf in one side only)")
    finite = np.isfinite(e)
    max_abs = float(np.abs(a[finite] - e[finite]).max(initial=0.0))
    scale = max(float(np.abs(e[finite]).max(initial=0.0)), floor, 1e-300)
    allowed = rtol * scale
    torch_error = 0.0
    if reference is not None and (dtype == np.float32 or isinstance(reference, Reference)):
        exact, others = reference, [e]
        if isinstance(reference, Reference):        # torch's float32 error: plain run or nudged run, the larger
            exact, others = reference.exact, [e, *reference.nudged]
        r = _as_float64(exact)
        torch_error = max(float(np.abs(_as_float64(o)[finite] - r[finite]).max(initial=0.0)) for o in others)
        allowed += TORCH_ERROR_FACTOR * torch_error
    max_rel = max_abs / scale
    _record_check(name, dtype.name, max_abs, max_rel, max_abs / allowed if allowed > 0 else float(max_abs > 0))
    if max_abs > allowed:
        detail = f", torch's own {dtype.name} error {torch_error / scale:.3e}" if reference is not None else ""
        raise AssertionError(f"{name}: max abs error {max_abs:.3e}, max rel error {max_rel:.3e} "
                             f"(relative to magnitude {scale:.3e}{detail}) > rtol {rtol:.0e}")
    return max_abs, max_rel


def assert_grads_close(actual: dict, expected: dict, *, rtol=None, prefix="", references: dict | None = None,
                       floors: dict | None = None):
    """assert_close for every key. Each tensor's floor is 1e-3 of the largest expected tensor's magnitude
    (a gradient that cancels to ~0 only holds rounding noise of the others), or floors[key] when given.
    references: float64 results under the same keys (see assert_close), for float32 checks."""
    assert sorted(actual) == sorted(expected), f"names differ: {sorted(set(actual) ^ set(expected))}"
    largest = max(float(np.abs(to_numpy(g)).max(initial=0.0)) for g in expected.values())
    floors = floors or {}
    for key in expected:
        assert_close(actual[key], expected[key], rtol=rtol, floor=max(1e-3 * largest, floors.get(key, 0.0)),
                     name=f"{prefix}{key}", reference=None if references is None else references[key])


class Reference(NamedTuple):
    """A check's yardstick: the float64 result (for float64 checks: torch's plain float64 result) and torch's
    results on inputs nudged by one ulp (one run for float32, FLOAT64_NUDGES for float64)."""
    exact: torch.Tensor
    nudged: tuple


def torch_with_reference(run, dtype, *, nudge_float64: bool = False):
    """run(torch dtype) -> tensors (nested in dicts/tuples/lists). Returns (run in dtype, reference), where
    reference is None for float64 and, for float32, the float64 run's results each paired with a third run's:
    float32 on inputs nudged by one ulp (as Reference).

    run must build its torch inputs with to_torch(...).to(the given dtype) (and nudged_params for
    load_numpy_params): float32 values widen to float64 exactly, so the float64 run is the exact result up to
    float64 rounding. Torch's float32 error is then the larger of its plain and its nudged run's distance from
    it: one run can be lucky (its rounding errors happen to cancel), the nudged one shows what the problem's
    conditioning makes of one-ulp errors, which no float32 code avoids.

    nudge_float64=True (float64 only): there is no wider reference, but the nudged float64 run measures the
    conditioning the same way: reference = Reference(exact=the plain run, nudged=the nudged run), so the
    float64 budget grows by TORCH_ERROR_FACTOR x what one-ulp input changes do to torch's result (~1e-16 of
    the magnitude where the problem is well-conditioned, so a planted 1e-4 bug is caught as before).
    """
    expected = run(torch_dtype(dtype))
    if np.dtype(dtype) != np.float32:
        if not nudge_float64:
            return expected, None
        return expected, _paired(expected, [_nudged_run(run, torch.float64, seed) for seed in range(FLOAT64_NUDGES)])
    reference = run(torch.float64)
    return expected, _paired(reference, [_nudged_run(run, torch.float32, 0)])


# Nudged float64 runs per check with nudge_float64: one nudge can be lucky (measured on the block's
# ill-conditioned dx: one nudge moved it by 6e-12 of its magnitude, others of the same example by 2e-9)
FLOAT64_NUDGES = 4


def _nudged_run(run, tdtype, seed):
    _NUDGE["rng"] = np.random.default_rng(seed)
    try:
        return run(tdtype)
    finally:
        _NUDGE["rng"] = None


def _paired(reference, nudged_runs: list):
    """reference's structure with every tensor t turned into Reference(t, (the same tensor of each nudged run))."""
    if isinstance(reference, dict):
        return {key: _paired(reference[key], [run[key] for run in nudged_runs]) for key in reference}
    if isinstance(reference, (tuple, list)):
        return type(reference)(_paired(item, [run[i] for run in nudged_runs]) for i, item in enumerate(reference))
    if isinstance(reference, torch.Tensor):
        return Reference(reference, tuple(nudged_runs))
    return reference


class KeyBiasFloors:
    """Magnitudes for the key-bias gradients of every attention layer in a torch module.

    d(W_key.bias) = sum over positions of dk, which is exactly 0: softmax ignores a shift shared by all
    scores of a query, and q.(k_s + b) shifts them all by q.b. Both sides compute rounding noise of the
    terms, so the magnitude to compare against is sum over positions of |dk| (what the sum cancelled).
    Hooks every `...W_key` linear layer; floors() after backward -> {"<prefix>W_key.bias": magnitude}.
    """

    def __init__(self, module: torch.nn.Module):
        self.outputs = {}
        self.handles = [sub.register_forward_hook(self._hook(name)) for name, sub in module.named_modules()
                        if name.split(".")[-1] == "W_key" and getattr(sub, "bias", None) is not None]

    def _hook(self, name):
        def keep_output(module, inputs, output):
            output.retain_grad()
            self.outputs[name] = output
        return keep_output

    def floors(self) -> dict:
        for handle in self.handles:
            handle.remove()
        return {f"{name}.bias": float(out.grad.abs().reshape(-1, out.shape[-1]).sum(0).max())
                for name, out in self.outputs.items() if out.grad is not None}


@contextmanager
def causal_split(split: bool):
    """Inside: npgpt's causal attention core splits its rows in two (attention._row_blocks) whatever the size
    (split=True), or never. The split needs CAUSAL_SPLIT_MIN_SKIPPED weights to pay, which no small test shape
    reaches, so the parity tests draw the path they check."""
    previous = npattention.CAUSAL_SPLIT_MIN_SKIPPED
    npattention.CAUSAL_SPLIT_MIN_SKIPPED = 1 if split else 2**62
    try:
        yield
    finally:
        npattention.CAUSAL_SPLIT_MIN_SKIPPED = previous


@contextmanager
def planted_bug(description: str, match: str | None = None):
    """`with planted_bug("..."): check(...)` asserts the check raises AssertionError (the bug is caught),
    whose message matches the regex `match` when given.

    Checks inside are not recorded as parity errors; the catch is counted (`planted_caught`) for the
    `gpt2 parity` table. Fails the test, naming the bug, when the check passes.
    """
    _RECORDING["on"] = False
    try:
        with pytest.raises(AssertionError, match=match):
            yield
    except BaseException as error:
        if isinstance(error, pytest.fail.Exception):
            raise AssertionError(f"planted bug NOT caught: {description}") from None
        raise
    finally:
        _RECORDING["on"] = True
    _REGISTRY[current_component()]["planted_caught"] += 1


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
    if path:
        tolerances = {"float64": RTOL[np.float64], "float32": RTOL[np.float32],
                      "torch_error_factor": TORCH_ERROR_FACTOR}
        atomic_write_json(path, {"profile": PROFILE, "tolerances": tolerances,
                                 "components": dict(sorted(_REGISTRY.items()))})


# --------------------------------------------------------------------------------------------------------
# The same dropout masks in both backends
# --------------------------------------------------------------------------------------------------------
class RecordingGenerator:
    """A numpy.random.Generator stand-in for npgpt's `rng=`: it records every uniform draw.

    npgpt.dropout.dropout_mask(shape, p, rng) keeps an element where rng.random() >= p, so
    keep_masks(p) rebuilds the masks npgpt used, in its draw order; torch gets them through
    fed_dropout_masks. If npgpt drew in another order or torch consumed the masks in another order, the
    parity checks would fail (the masks are not assumed, they are recorded).
    """

    def __init__(self, seed: int):
        self._rng = np.random.default_rng(seed)
        self.draws: list[np.ndarray] = []

    def random(self, shape):
        draw = self._rng.random(shape)
        self.draws.append(draw)
        return draw

    def keep_masks(self, p: float) -> list[np.ndarray]:
        return [draw >= p for draw in self.draws]


class MaskFeed:
    """Hands out keep-masks to the dropouts of a torch module in the order they run (see fed_dropout_masks)."""

    def __init__(self, masks):
        self._masks = iter(masks)
        self.taken = 0

    def apply(self, where: str, dropout: torch.nn.Dropout, x: torch.Tensor) -> torch.Tensor:
        """npgpt's dropout_forward with the next mask: out = x * keep / (1 - p); a p = 0 dropout takes none."""
        if dropout.p == 0.0:
            return x
        if not dropout.training:
            raise ValueError(f"dropout masks were fed but {where} is in eval mode (no dropout); call "
                             f"model.train() first or feed no masks")
        mask = next(self._masks, None)
        if mask is None:
            raise ValueError(f"dropout masks ran out at mask {self.taken} ({where}); feed one mask per dropout "
                             f"in the order embedding, then per block: attention weights, after attention, "
                             f"after feed-forward")
        mask = torch.as_tensor(mask, device=x.device)
        if tuple(mask.shape) != tuple(x.shape):
            raise ValueError(f"dropout mask {self.taken} ({where}) has shape {tuple(mask.shape)}, "
                             f"expected {tuple(x.shape)}")
        self.taken += 1
        return x * mask * (1.0 / (1.0 - dropout.p))


@contextmanager
def fed_dropout_masks(module: torch.nn.Module, masks):
    """Within the block, every nn.Dropout inside `module` (a GPTModel, a block, an attention layer) applies
    the next of `masks` (bool keep-masks, arrays or tensors) instead of drawing its own; yields the MaskFeed
    (feed.taken counts the masks used).

    The masks are taken in the order the dropouts run, for a GPTModel npgpt's draw order: embedding
    (B, T, C), then per block attention weights (B, H, T, T), after attention (B, T, C), after feed-forward
    (B, T, C); like npgpt, a dropout with p = 0 takes none. Running out, a wrong shape, or a fed dropout in
    eval mode is a ValueError. SDPA draws its attention dropout inside the fused kernel, so an attention
    layer with dropout runs its explicit path while masks are fed (its use_sdpa is switched off, then back).
    """
    feed = MaskFeed(masks)
    dropouts = {name: m for name, m in module.named_modules() if isinstance(m, torch.nn.Dropout)}
    fused = [m for m in module.modules() if getattr(m, "use_sdpa", False) and m.dropout.p > 0]
    try:
        for name, dropout in dropouts.items():
            # An instance attribute shadows the class's forward: the module calls it as dropout(x).
            dropout.forward = lambda x, name=name, dropout=dropout: feed.apply(name or "dropout", dropout, x)
        for attention in fused:
            attention.use_sdpa = False
        yield feed
    finally:
        for dropout in dropouts.values():
            del dropout.forward
        for attention in fused:
            attention.use_sdpa = True


# --------------------------------------------------------------------------------------------------------
# Finite differences (float64)
# --------------------------------------------------------------------------------------------------------
def numerical_grad(loss_fn, array: np.ndarray, *, h: float = 1e-6, max_entries: int = 20, seed: int = 0):
    """Central differences (L(x + h) - L(x - h)) / 2h at up to max_entries random entries of `array`
    (npgpt.gradcheck.numerical_grad with a seeded sample). Returns (flat indices, estimates).

    float64 only: with h = 1e-6 the roundoff is ~1e-10 relative, the truncation O(h^2).
    """
    if array.dtype != np.float64:
        raise TypeError(f"finite differences need float64, got {array.dtype}")
    return gradcheck.numerical_grad(loss_fn, array, h=h, max_entries=max_entries, rng=np.random.default_rng(seed))


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
    """No grad-mode leaks between tests."""
    torch.set_grad_enabled(True)
    yield


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """torch with one intra-op thread: the tensors here are tiny, so a second thread only adds overhead
    (measured: the model and multi-head modules took 2.4x the CPU time with two threads on a busy 2-core
    machine), and results do not depend on the core count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --------------------------------------------------------------------------------------------------------
# Whole models (generation tests): small random GPT configs, parameters with opinions, the torch twin
# --------------------------------------------------------------------------------------------------------
@st.composite
def small_gpt_configs(draw, max_vocab: int = 48, max_context: int = 12):
    """A GPTConfig with V <= max_vocab, T_max <= max_context, C = H * D <= 24, 1-2 layers, no dropout."""
    from gptcore.config import GPTConfig

    n_heads = draw(st.integers(1, 3))
    return GPTConfig(vocab_size=draw(st.integers(4, max_vocab)), context_length=draw(st.integers(3, max_context)),
                     emb_dim=n_heads * draw(st.integers(1, 8)), n_heads=n_heads, n_layers=draw(st.integers(1, 2)),
                     drop_rate=0.0, qkv_bias=draw(st.booleans()), tie_weights=draw(st.booleans()))


def random_gpt_params(config, seed: int, dtype, std: float = 0.3) -> dict:
    """GPT-2's init (npgpt.model.init_params) with the weights scaled from std 0.02 up to `std`, LayerNorm
    scales and shifts and the biases jittered by N(0, 0.1): GPT-2's init gives nearly uniform next-token
    distributions, these give a tiny model clear preferences (and LayerNorm/bias paths nonzero work)."""
    from npgpt.model import init_params
    from gptcore.params import unique_arrays

    params = init_params(config, seed=seed, dtype=dtype)
    rng = np.random.default_rng(seed)
    for name, value in unique_arrays(params):
        if name.endswith((".scale", ".shift", ".bias")):
            value += weights(rng, value.shape, dtype, std=0.1)
        else:
            value *= std / 0.02
    return params


def torch_twin(params: dict, config, use_sdpa: bool = False):
    """A torchgpt.GPTModel in eval mode holding `params`, in their dtype (float64 stays float64); its attention
    the explicit reference, or F.scaled_dot_product_attention with use_sdpa (the CLI's and benchmark's path)."""
    from torchgpt import GPTModel, load_numpy_params

    model = GPTModel(config, use_sdpa=use_sdpa).to(torch_dtype(params["tok_emb.weight"].dtype))
    return load_numpy_params(model, params).eval()
