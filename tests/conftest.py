"""Fixtures shared by the behaviour tests (`shared_data_dir`, shared with parity_tests, is in the root conftest.py)."""
from __future__ import annotations

import pytest

from tests.http_server import LocalHTTPServer


@pytest.fixture
def http_server():
    """A started LocalHTTPServer on 127.0.0.1 (see tests/http_server.py), stopped afterwards."""
    with LocalHTTPServer() as server:
        yield server


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch with one intra-op thread for the module: faster on a busy 2-core machine, and CPU results that
    do not depend on the core count. Use with pytestmark = pytest.mark.usefixtures("one_torch_thread")."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
