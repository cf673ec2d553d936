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


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch with one intra-op thread for the module: faster on a busy 2-core machine, and CPU results that
    do not depend on the core count. Use with pytestmark = pytest.mark.usefixtures("one_torch_thread")."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
