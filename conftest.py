"""Test-session defaults for both suites (tests/ and parity_tests/).

The tests read the public data files offline. CI points GPT2_DATA_DIR and TIKTOKEN_CACHE_DIR at
../shared/data; for a developer checkout with ../shared beside it we default to the same folder.

Hypothesis profiles (ci, thorough; $HYPOTHESIS_PROFILE) for every property test: tests/hypothesis_profiles.py.
"""
import os
from pathlib import Path

from tests.hypothesis_profiles import load_profile_from_env

load_profile_from_env()

_shared_data = Path(__file__).resolve().parent.parent / "shared" / "data"
if "GPT2_DATA_DIR" not in os.environ and _shared_data.is_dir():
    os.environ["GPT2_DATA_DIR"] = str(_shared_data)
if "TIKTOKEN_CACHE_DIR" not in os.environ and "GPT2_DATA_DIR" in os.environ:
    os.environ["TIKTOKEN_CACHE_DIR"] = str(Path(os.environ["GPT2_DATA_DIR"]) / "tiktoken_cache")
os.environ.setdefault("MPLBACKEND", "Agg")
