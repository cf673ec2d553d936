"""Fixtures shared by the behaviour tests."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.http_server import LocalHTTPServer

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def http_server():
    """A started LocalHTTPServer on 127.0.0.1 (see tests/http_server.py), stopped afterwards."""
    with LocalHTTPServer() as server:
        yield server


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The folder with the exact public data files: $GPT2_DATA_DIR, else ../shared/data.

    CI sets GPT2_DATA_DIR; a set variable pointing at a missing folder is a failure, not a skip.
    """
    configured = os.environ.get("GPT2_DATA_DIR")
    if configured:
        folder = Path(configured)
        if not folder.is_dir():
            pytest.fail(f"GPT2_DATA_DIR={configured} is not a folder; point it at the shared data")
        return folder
    folder = REPO_ROOT.parent / "shared" / "data"
    if not folder.is_dir():
        pytest.fail("no data: set GPT2_DATA_DIR to a folder holding the files of data/manifest.json")
    return folder
