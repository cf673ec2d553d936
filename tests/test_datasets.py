"""The manifest, gptcore.datasets.fetch and `gpt2 data`, offline and against a local HTTP server."""
from __future__ import annotations

import io
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from gpt2cli.main import main
from gptcore import datasets, download
from gptcore.datasets import DataError, data_dir, fetch, load_manifest
from gptcore.download import DownloadError, sha256_of
from tests.http_server import free_port

SMS_ZIP_PATH = "/sms+spam+collection.zip"


@pytest.fixture
def no_network(monkeypatch):
    """Every download goes to a port where nothing listens (fails fast if attempted)."""
    monkeypatch.setenv(datasets.BASE_URL_ENV, f"http://127.0.0.1:{free_port()}")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    monkeypatch.delenv(datasets.DATA_DIR_ENV, raising=False)
    monkeypatch.delenv(datasets.BASE_URL_ENV, raising=False)


def test_manifest_entries_are_complete():
    manifest = load_manifest()
    assert set(manifest) == {"the-verdict", "instruction-data", "sms-spam", "gpt2-bpe"}
    for name, entry in manifest.items():
        assert entry["license"] and entry["files"], name
        for record in entry["files"]:
            assert re.fullmatch(r"[0-9a-f]{64}", record["sha256"]), record
            assert isinstance(record["size"], int) and record["size"] > 0
            url = record.get("url") or record["archive"]["url"]
            assert url.startswith("https://")
    assert [r["path"] for r in manifest["gpt2-bpe"]["files"]] == ["gpt2_bpe/encoder.json", "gpt2_bpe/vocab.bpe"]
    assert manifest["sms-spam"]["files"][0]["archive"]["member"] == "SMSSpamCollection"


def test_shared_data_matches_manifest(shared_data_dir):
    # The manifest's layout is the shared folder's layout, byte for byte.
    for entry in load_manifest().values():
        for record in entry["files"]:
            path = shared_data_dir / record["path"]
            assert path.stat().st_size == record["size"], path
            assert sha256_of(path) == record["sha256"], path


def test_data_dir_precedence(monkeypatch, tmp_path):
    assert data_dir() == datasets.REPO_ROOT / "data" / "cache"
    monkeypatch.setenv("GPT2_DATA_DIR", str(tmp_path / "env"))
    assert data_dir() == tmp_path / "env"
    assert data_dir(tmp_path / "explicit") == tmp_path / "explicit"


def test_fetch_from_data_dir_env_without_network(shared_data_dir, monkeypatch, no_network):
    monkeypatch.setenv("GPT2_DATA_DIR", str(shared_data_dir))
    assert fetch("the-verdict") == shared_data_dir / "the-verdict.txt"
    assert fetch("instruction-data") == shared_data_dir / "instruction-data.json"
    assert fetch("sms-spam") == shared_data_dir / "sms_spam_collection" / "SMSSpamCollection"
    bpe = fetch("gpt2-bpe")
    assert bpe == shared_data_dir / "gpt2_bpe" and (bpe / "encoder.json").is_file() and (bpe / "vocab.bpe").is_file()


def test_unknown_name_lists_known_names():
    with pytest.raises(DataError, match="unknown data set 'verdict'; known: the-verdict, instruction-data"):
        fetch("verdict")


def test_missing_file_without_download(tmp_path):
    with pytest.raises(FileNotFoundError, match="the-verdict.txt is missing.*gpt2 data fetch the-verdict"):
        fetch("the-verdict", tmp_path, download=False)


def test_corrupt_local_file_names_file_and_both_hashes(tmp_path, no_network):
    record = load_manifest()["the-verdict"]["files"][0]
    bad = tmp_path / "the-verdict.txt"
    bad.write_bytes(b"#" * record["size"])  # right size, wrong bytes
    with pytest.raises(DataError) as caught:
        fetch("the-verdict", tmp_path)
    message = str(caught.value)
    assert str(bad) in message and record["sha256"] in message and sha256_of(bad) in message
    bad.write_bytes(b"short")
    with pytest.raises(DataError, match=f"expected {record['size']} bytes, got 5"):
        fetch("the-verdict", tmp_path)
    assert bad.read_bytes() == b"short"  # never overwritten behind the user's back


def test_fetch_downloads_from_local_server(http_server, shared_data_dir, tmp_path):
    for name in ("the-verdict.txt", "encoder.json", "vocab.bpe"):
        source = shared_data_dir / ("gpt2_bpe/" + name if name != "the-verdict.txt" else name)
        http_server.add("/" + name, source.read_bytes())
    path = fetch("the-verdict", tmp_path, base_url=http_server.base_url, progress=False)
    assert path == tmp_path / "the-verdict.txt"
    assert path.read_bytes() == (shared_data_dir / "the-verdict.txt").read_bytes()
    bpe = fetch("gpt2-bpe", tmp_path, base_url=http_server.base_url + "/", progress=False)
    assert sorted(p.name for p in bpe.iterdir()) == ["encoder.json", "vocab.bpe"]
    requests_made = len(http_server.requests)
    fetch("the-verdict", tmp_path, base_url=http_server.base_url)  # present now: no request
    assert len(http_server.requests) == requests_made


def sms_zip_bytes(member_bytes: bytes, member_name: str = "SMSSpamCollection") -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(member_name, member_bytes)
        archive.writestr("readme", b"SMS Spam Collection v.1\n")
    return buffer.getvalue()


def test_fetch_sms_zip_from_local_server(http_server, shared_data_dir, tmp_path, monkeypatch):
    original = (shared_data_dir / "sms_spam_collection" / "SMSSpamCollection").read_bytes()
    http_server.add(SMS_ZIP_PATH, sms_zip_bytes(original))
    monkeypatch.setenv("GPT2_DATA_BASE_URL", http_server.base_url)  # the env route for the override
    path = fetch("sms-spam", tmp_path, progress=False)
    assert path == tmp_path / "sms_spam_collection" / "SMSSpamCollection"
    assert path.read_bytes() == original
    assert sorted(p.name for p in path.parent.iterdir()) == ["SMSSpamCollection"]  # zip + scratch gone


def test_fetch_sms_zip_with_wrong_member_leaves_nothing(http_server, tmp_path):
    http_server.add(SMS_ZIP_PATH, sms_zip_bytes(b"ham\tnot the real data\n"))
    with pytest.raises(DownloadError, match="SMSSpamCollection.*not the published file.*expected 477907 bytes"):
        fetch("sms-spam", tmp_path, base_url=http_server.base_url, progress=False)
    assert list((tmp_path / "sms_spam_collection").iterdir()) == []


def test_fetch_sms_zip_refuses_zip_slip(http_server, tmp_path):
    http_server.add(SMS_ZIP_PATH, sms_zip_bytes(b"x", member_name="../SMSSpamCollection"))
    with pytest.raises(DownloadError, match="no member 'SMSSpamCollection'"):
        fetch("sms-spam", tmp_path, base_url=http_server.base_url, progress=False)
    assert not (tmp_path / "SMSSpamCollection").exists()


@pytest.mark.parametrize("served", ["not a zip", "cut short"])
def test_fetch_sms_unreadable_zip_names_file_url_and_fix(http_server, tmp_path, served):
    whole = sms_zip_bytes(b"ham\tsee you at six\n" * 200)
    body = b"<html>Service Unavailable</html>" if served == "not a zip" else whole[: len(whole) // 2]
    url = http_server.add(SMS_ZIP_PATH, body)
    with pytest.raises(DownloadError) as caught:
        fetch("sms-spam", tmp_path, base_url=http_server.base_url, progress=False)
    message = str(caught.value)
    assert "sms+spam+collection.zip" in message and url in message and "not a readable zip archive" in message
    assert "Fix: fetch it again" in message and "check the URL" in message
    assert list((tmp_path / "sms_spam_collection").iterdir()) == []        # no zip, no .part, no scratch


def test_interrupted_sms_zip_fetch_leaves_nothing(http_server, tmp_path, monkeypatch):
    http_server.add(SMS_ZIP_PATH, sms_zip_bytes(b"ham\tsee you at six\n" * 5000))

    def one_chunk_then_ctrl_c(response, chunk_size):
        yield response.raw.read(1000, decode_content=False)
        raise KeyboardInterrupt

    monkeypatch.setattr(download, "_body_chunks", one_chunk_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        fetch("sms-spam", tmp_path, base_url=http_server.base_url, progress=False)
    assert list((tmp_path / "sms_spam_collection").iterdir()) == []


# ---- the CLI -------------------------------------------------------------------------------

def test_cli_fetch_offline_from_data_dir(shared_data_dir, no_network, capsys):
    assert main(["data", "fetch", "the-verdict", "--data-dir", str(shared_data_dir)]) == 0
    assert capsys.readouterr().out.strip() == f"the-verdict: {shared_data_dir / 'the-verdict.txt'}"


def test_cli_fetch_all_and_list(shared_data_dir, no_network, capsys, monkeypatch):
    monkeypatch.setenv("GPT2_DATA_DIR", str(shared_data_dir))
    assert main(["data", "fetch", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert out.count(str(shared_data_dir)) == 4 and "gpt2-bpe:" in out
    assert main(["data", "list"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if "present" in line]
    assert [row.split()[0] for row in rows] == ["the-verdict", "instruction-data", "sms-spam", "gpt2-bpe"]


def test_cli_list_marks_missing(tmp_path, capsys):
    assert main(["data", "list", "--data-dir", str(tmp_path)]) == 0
    rows = capsys.readouterr().out.splitlines()[2:]
    assert [row.split()[2] for row in rows] == ["missing"] * 4


def test_cli_fetch_without_file_or_network_fails_in_one_line(tmp_path, no_network, capsys):
    assert main(["data", "fetch", "the-verdict", "--data-dir", str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "the-verdict.txt" in err and "http://127.0.0.1" in err and "--data-dir" in err
    assert list(tmp_path.iterdir()) == []


def test_cli_subprocess_exit_code(tmp_path, no_network):
    # The real console entry point, as a user runs it (env carries the unreachable base URL).
    result = subprocess.run([sys.executable, "-m", "gpt2cli", "data", "fetch", "the-verdict",
                             "--data-dir", str(tmp_path)], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parent.parent, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "gpt2 data: error: could not download the-verdict.txt" in result.stderr
    assert "Traceback" not in result.stderr
