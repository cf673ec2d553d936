"""tests/data_source.py: where the suite finds its data on CI, beside ../shared, and in a clean clone."""
from __future__ import annotations

import io
import zipfile

import pytest

from gptcore import datasets
from gptcore.download import sha256_of
from tests.data_source import TestDataUnavailable, default_environment, resolve_data_dir
from tests.http_server import free_port


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in (datasets.DATA_DIR_ENV, datasets.BASE_URL_ENV, "TIKTOKEN_CACHE_DIR"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def no_network(monkeypatch):
    monkeypatch.setenv(datasets.BASE_URL_ENV, f"http://127.0.0.1:{free_port()}")


def serve_manifest_files(server, source_dir):
    """Serves every manifest file from `source_dir` under its URL's last segment (the SMS file zipped)."""
    for entry in datasets.load_manifest().values():
        for record in entry["files"]:
            data = (source_dir / record["path"]).read_bytes()
            if "archive" in record:
                buffer = io.BytesIO()
                with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
                    archive.writestr(record["archive"]["member"], data)
                data, url = buffer.getvalue(), record["archive"]["url"]
            else:
                url = record["url"]
            server.add("/" + url.rsplit("/", 1)[-1], data)


def test_env_folder_comes_first_and_needs_no_network(tmp_path, monkeypatch, no_network):
    monkeypatch.setenv(datasets.DATA_DIR_ENV, str(tmp_path / "env"))
    (tmp_path / "env").mkdir()
    assert resolve_data_dir(shared=tmp_path, cache=tmp_path / "cache") == tmp_path / "env"
    assert not (tmp_path / "cache").exists()


def test_env_naming_a_missing_folder_is_an_error_not_a_fallback(tmp_path, monkeypatch):
    monkeypatch.setenv(datasets.DATA_DIR_ENV, str(tmp_path / "typo"))
    with pytest.raises(TestDataUnavailable, match=r"GPT2_DATA_DIR=.*typo is not a folder\. Fix: point it at"):
        resolve_data_dir(shared=tmp_path, cache=tmp_path / "cache")


def test_shared_folder_beside_the_checkout_is_next(tmp_path, no_network):
    assert resolve_data_dir(shared=tmp_path, cache=tmp_path / "cache") == tmp_path
    assert not (tmp_path / "cache").exists()


def test_clean_clone_downloads_every_data_set_into_the_cache(http_server, shared_data_dir, tmp_path, monkeypatch):
    serve_manifest_files(http_server, shared_data_dir)
    monkeypatch.setenv(datasets.BASE_URL_ENV, http_server.base_url)   # the canonical URLs, played locally
    cache = tmp_path / "cache"
    assert resolve_data_dir(shared=tmp_path / "no-shared", cache=cache) == cache
    for entry in datasets.load_manifest().values():
        for record in entry["files"]:
            assert sha256_of(cache / record["path"]) == record["sha256"], record["path"]
    served = len(http_server.requests)
    assert resolve_data_dir(shared=tmp_path / "no-shared", cache=cache) == cache       # a second session
    assert len(http_server.requests) == served                                       # finds them: no request


def test_no_folder_and_no_network_fails_with_one_clear_message(tmp_path, no_network):
    cache = tmp_path / "cache"
    with pytest.raises(TestDataUnavailable) as caught:
        resolve_data_dir(shared=tmp_path / "no-shared", cache=cache)
    message = str(caught.value)
    assert message.startswith("no test data: GPT2_DATA_DIR is not set") and str(tmp_path / "no-shared") in message
    assert "could not download the-verdict.txt" in message and message.count("Fix:") == 1
    assert "export GPT2_DATA_DIR=" in message and "TIKTOKEN_CACHE_DIR=" in message
    assert list(cache.iterdir()) == []                                  # nothing half-downloaded left


def test_default_environment_fills_in_only_what_exists(tmp_path):
    environ = {}
    default_environment(environ, shared=tmp_path / "no-shared")
    assert environ == {}                              # a clean clone: tiktoken keeps its own default cache
    (tmp_path / "tiktoken_cache").mkdir()
    default_environment(environ, shared=tmp_path)
    assert environ == {"GPT2_DATA_DIR": str(tmp_path), "TIKTOKEN_CACHE_DIR": str(tmp_path / "tiktoken_cache")}
    fetched = {"GPT2_DATA_DIR": str(tmp_path / "cache")}           # a folder without tiktoken's files
    default_environment(fetched, shared=tmp_path)
    assert fetched == {"GPT2_DATA_DIR": str(tmp_path / "cache")}
    mine = {"TIKTOKEN_CACHE_DIR": "/elsewhere"}
    default_environment(mine, shared=tmp_path)
    assert mine["TIKTOKEN_CACHE_DIR"] == "/elsewhere"                 # what the user set wins
