"""Test-session defaults for both suites (tests/ and parity_tests/).

Data: the fixture `shared_data_dir` is the folder with the public data files: $GPT2_DATA_DIR, else
../shared/data, else a download into data/cache (tests/data_source.py). CI points GPT2_DATA_DIR and
TIKTOKEN_CACHE_DIR at ../shared/data; with ../shared beside the checkout both default to it.

Hypothesis profiles (ci, thorough; $HYPOTHESIS_PROFILE) for every property test: tests/hypothesis_profiles.py.
"""
import os

import pytest

from tests.data_source import TestDataUnavailable, default_environment, resolve_data_dir
from tests.hypothesis_profiles import load_profile_from_env

load_profile_from_env()
default_environment(os.environ)
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def shared_data_dir():
    """The folder holding every file of data/manifest.json (a clean clone downloads them once)."""
    try:
        return resolve_data_dir()
    except TestDataUnavailable as error:
        problem = str(error)
    pytest.fail(problem, pytrace=False)       # outside the except: the message alone, no exception chain
