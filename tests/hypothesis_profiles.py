"""The hypothesis profiles of both suites (tests/ and parity_tests/), picked by $HYPOTHESIS_PROFILE:

    ci        (default) derandomized, so a run is repeatable; 25 examples per test unless a test asks
    thorough  random, 400 examples per test: the search for new counterexamples

The root conftest.py loads them for every test; parity_tests/conftest.py loads them too, because
`gpt2 parity --tests DIR` may run a parity_tests folder without the root conftest beside it.
"""
from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

PROFILES = ("ci", "thorough")
# Generated inputs can be large (texts, arrays), and a test may use function-scoped fixtures that hold no
# per-example state (a server, a tokenizer), so these health checks would only flag what is intended.
_QUIET = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture]


def load_profile_from_env() -> str:
    """Registers both profiles and loads the one $HYPOTHESIS_PROFILE names (default ci); returns its name."""
    settings.register_profile("ci", derandomize=True, database=None, max_examples=25, deadline=None,
                              print_blob=True, suppress_health_check=_QUIET)
    settings.register_profile("thorough", max_examples=400, deadline=None, print_blob=True,
                              suppress_health_check=_QUIET)
    name = os.environ.get("HYPOTHESIS_PROFILE", "ci")
    if name not in PROFILES:
        raise ValueError(f"HYPOTHESIS_PROFILE={name!r} is not a profile; choose one of {', '.join(PROFILES)}")
    settings.load_profile(name)
    return name
