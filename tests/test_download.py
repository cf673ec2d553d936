"""gptcore.download against a real HTTP server on 127.0.0.1 (tests/http_server.py)."""
from __future__ import annotations

import hashlib
import io
import os
import zipfile
import zlib

import pytest

from gptcore import download
from gptcore.download import (CorruptArchiveError, DownloadError, UnsafeArchiveError, download_file,
    safe_extract_zip, sha256_of)
from tests.http_server import free_port

PAYLOAD = os.urandom(200_000)
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


def fetch(url, dest, **options):
    options.setdefault("sha256", PAYLOAD_SHA)
    options.setdefault("expected_size", len(PAYLOAD))
    return download_file(url, dest, progress=False, **options)


def test_download_verifies_and_moves_into_place(http_server, tmp_path):
    url = http_server.add("/model.bin", PAYLOAD)
    dest = tmp_path / "sub" / "model.bin"
    assert fetch(url, dest) == dest
    assert dest.read_bytes() == PAYLOAD
    assert sha256_of(dest) == PAYLOAD_SHA
    assert not (tmp_path / "sub" / "model.bin.part").exists()


def test_present_file_is_not_downloaded_again(http_server, tmp_path):
    url = http_server.add("/model.bin", PAYLOAD)
    dest = tmp_path / "model.bin"
    fetch(url, dest)
    http_server.routes.clear()  # any new request would now get 404
    fetch(url, dest)
    assert len(http_server.requests) == 1


def test_present_but_wrong_file_is_replaced(http_server, tmp_path):
    url = http_server.add("/model.bin", PAYLOAD)
    dest = tmp_path / "model.bin"
    dest.write_bytes(b"old junk")
    fetch(url, dest)
    assert dest.read_bytes() == PAYLOAD


def test_404_names_url_file_and_fix(http_server, tmp_path):
    url = http_server.add("/gone.bin", status=404)
    dest = tmp_path / "gone.bin"
    with pytest.raises(DownloadError) as caught:
        fetch(url, dest)
    message = str(caught.value)
    assert url in message and "gone.bin" in message and "404" in message and "Fix:" in message
    assert list(tmp_path.iterdir()) == []


def test_connection_refused(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/model.bin"
    with pytest.raises(DownloadError, match="connection refused") as caught:
        fetch(url, tmp_path / "model.bin")
    assert url in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_slow_server_times_out(http_server, tmp_path):
    url = http_server.add("/slow.bin", PAYLOAD, delay=1.5)
    with pytest.raises(DownloadError, match="no answer within 0.3 s"):
        fetch(url, tmp_path / "slow.bin", timeout=0.3)
    assert list(tmp_path.iterdir()) == []


def test_truncated_body_without_resume_leaves_nothing(http_server, tmp_path):
    # Content-Length promises 100 bytes more than the body holds, then the server hangs up.
    url = http_server.add("/short.bin", PAYLOAD[:-100], content_length=len(PAYLOAD))
    with pytest.raises(DownloadError, match="connection broke"):
        fetch(url, tmp_path / "short.bin", resume=False)
    assert list(tmp_path.iterdir()) == []


def test_wrong_hash_deletes_file_and_names_both_hashes(http_server, tmp_path):
    wrong = b"x" * len(PAYLOAD)
    url = http_server.add("/model.bin", wrong)
    with pytest.raises(DownloadError) as caught:
        fetch(url, tmp_path / "model.bin")
    message = str(caught.value)
    assert PAYLOAD_SHA in message and hashlib.sha256(wrong).hexdigest() in message
    assert "model.bin" in message
    assert list(tmp_path.iterdir()) == []


def test_wrong_size_is_refused(http_server, tmp_path):
    url = http_server.add("/model.bin", PAYLOAD + b"extra")
    with pytest.raises(DownloadError, match=f"expected {len(PAYLOAD)} bytes, got {len(PAYLOAD) + 5}"):
        fetch(url, tmp_path / "model.bin")
    assert list(tmp_path.iterdir()) == []


def test_dropped_connection_then_resume_with_range(http_server, tmp_path):
    url = http_server.add("/big.bin", PAYLOAD, drop_after=70_000)
    dest = tmp_path / "big.bin"
    with pytest.raises(DownloadError, match="run again to resume"):
        fetch(url, dest)
    assert not dest.exists()  # an interrupted download never shows up at dest
    part = tmp_path / "big.bin.part"
    assert part.read_bytes() == PAYLOAD[:70_000]

    http_server.routes["/big.bin"].drop_after = None  # the network is back
    fetch(url, dest)
    assert dest.read_bytes() == PAYLOAD
    assert http_server.requests[-1] == ("/big.bin", "bytes=70000-")
    assert not part.exists()


def test_resume_restarts_cleanly_when_server_ignores_range(http_server, tmp_path):
    url = http_server.add("/big.bin", PAYLOAD, support_range=False)
    (tmp_path / "big.bin.part").write_bytes(b"garbage that is not the start of the file")
    fetch(url, tmp_path / "big.bin")
    assert (tmp_path / "big.bin").read_bytes() == PAYLOAD
    assert http_server.requests[-1][1] is not None  # we asked for a range, got a 200


def test_stale_part_longer_than_file_is_discarded(http_server, tmp_path):
    url = http_server.add("/big.bin", PAYLOAD)
    (tmp_path / "big.bin.part").write_bytes(b"z" * (len(PAYLOAD) + 10))
    fetch(url, tmp_path / "big.bin", expected_size=None)
    assert (tmp_path / "big.bin").read_bytes() == PAYLOAD


def test_no_resume_discards_part(http_server, tmp_path):
    url = http_server.add("/big.bin", PAYLOAD)
    (tmp_path / "big.bin.part").write_bytes(PAYLOAD[:100])
    fetch(url, tmp_path / "big.bin", resume=False)
    assert http_server.requests[-1] == ("/big.bin", None)
    assert (tmp_path / "big.bin").read_bytes() == PAYLOAD


def interrupt_after_first_chunk(monkeypatch):
    """The body iterator hands over one chunk, then Ctrl-C arrives (KeyboardInterrupt mid-stream)."""
    real = download._body_chunks

    def interrupted(response, chunk_size):
        chunks = real(response, chunk_size)
        yield next(chunks)
        raise KeyboardInterrupt

    monkeypatch.setattr(download, "_body_chunks", interrupted)


def test_interrupted_download_without_resume_leaves_nothing(http_server, tmp_path, monkeypatch):
    url = http_server.add("/big.bin", PAYLOAD)
    interrupt_after_first_chunk(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        fetch(url, tmp_path / "big.bin", resume=False, chunk_size=50_000)
    assert list(tmp_path.iterdir()) == []


def test_interrupted_download_keeps_only_a_resumable_part(http_server, tmp_path, monkeypatch):
    url = http_server.add("/big.bin", PAYLOAD)
    dest = tmp_path / "big.bin"
    interrupt_after_first_chunk(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        fetch(url, dest, chunk_size=50_000)
    assert not dest.exists()                                 # never under the real name
    part = tmp_path / "big.bin.part"
    saved = part.stat().st_size
    assert 0 < saved < len(PAYLOAD) and PAYLOAD.startswith(part.read_bytes())
    monkeypatch.undo()                                       # the next run is not interrupted
    fetch(url, dest)
    assert dest.read_bytes() == PAYLOAD and not part.exists()
    assert http_server.requests[-1] == ("/big.bin", f"bytes={saved}-")   # continued, not restarted


def test_unexpected_error_mid_stream_deletes_the_part(http_server, tmp_path, monkeypatch):
    url = http_server.add("/big.bin", PAYLOAD)

    def disk_full(response, chunk_size):
        yield PAYLOAD[:1000]
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(download, "_body_chunks", disk_full)
    with pytest.raises(OSError, match="No space left"):
        fetch(url, tmp_path / "big.bin")
    assert list(tmp_path.iterdir()) == []


def test_falls_back_to_mirror_when_first_url_404s(http_server, tmp_path, capsys):
    first = http_server.add("/canonical.bin", status=404)
    mirror = http_server.add("/mirror.bin", PAYLOAD)
    fetch([first, mirror], tmp_path / "model.bin")
    assert (tmp_path / "model.bin").read_bytes() == PAYLOAD
    assert f"trying mirror {mirror}" in capsys.readouterr().err


def test_falls_back_when_first_url_serves_wrong_bytes_and_resumes_from_mirror(http_server, tmp_path):
    refused = f"http://127.0.0.1:{free_port()}/model.bin"
    dropping = http_server.add("/drops.bin", PAYLOAD, drop_after=50_000)
    mirror = http_server.add("/mirror.bin", PAYLOAD)
    fetch([refused, dropping, mirror], tmp_path / "model.bin")
    assert (tmp_path / "model.bin").read_bytes() == PAYLOAD
    assert http_server.requests[-1] == ("/mirror.bin", "bytes=50000-")


def test_all_urls_failing_lists_each(http_server, tmp_path):
    first = http_server.add("/a.bin", status=404)
    second = http_server.add("/b.bin", status=500)
    with pytest.raises(DownloadError) as caught:
        fetch([first, second], tmp_path / "model.bin")
    assert first in str(caught.value) and second in str(caught.value) and "500" in str(caught.value)


def make_zip(path, members: dict[str, bytes]):
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(zipfile.ZipInfo(name), data)
    return path


def test_safe_extract_zip_extracts_members(tmp_path):
    archive = make_zip(tmp_path / "ok.zip", {"SMSSpamCollection": b"ham\thi\n", "docs/readme": b"r"})
    target = tmp_path / "out"
    paths = safe_extract_zip(archive, target)
    assert sorted(p.relative_to(target.resolve()).as_posix() for p in paths) == ["SMSSpamCollection", "docs/readme"]
    assert (target / "docs" / "readme").read_bytes() == b"r"
    (only,) = safe_extract_zip(archive, tmp_path / "one", members=["SMSSpamCollection"])
    assert only.name == "SMSSpamCollection" and not (tmp_path / "one" / "docs").exists()


@pytest.mark.parametrize("evil_name", ["../evil", "docs/../../evil", "<tmp>/evil", "C:/evil"])
def test_safe_extract_zip_refuses_escaping_members(tmp_path, evil_name):
    # An absolute name points into tmp_path too, so even a broken guard writes nowhere else.
    evil_name = evil_name.replace("<tmp>", tmp_path.as_posix())
    archive = make_zip(tmp_path / "bad.zip", {"fine.txt": b"ok", evil_name: b"pwned"})
    target = tmp_path / "out"
    with pytest.raises(UnsafeArchiveError, match="outside"):
        safe_extract_zip(archive, target)
    assert not (tmp_path / "evil").exists()
    assert not target.exists() or list(target.iterdir()) == []  # checked before anything is written


def test_safe_extract_zip_missing_member_lists_contents(tmp_path):
    archive = make_zip(tmp_path / "ok.zip", {"readme": b"r"})
    with pytest.raises(DownloadError, match="no member 'SMSSpamCollection'.*readme"):
        safe_extract_zip(archive, tmp_path / "out", members=["SMSSpamCollection"])


def deflated_zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def with_garbage_data(archive: bytes) -> bytes:
    """The first member's compressed bytes all 0xFF: a deflate block of the reserved type 3, which zlib
    refuses whatever its version (flipping arbitrary bits could also land on a CRC error instead)."""
    info = zipfile.ZipFile(io.BytesIO(archive)).infolist()[0]
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)   # 30: local header size
    return archive[:start] + b"\xff" * info.compress_size + archive[start + info.compress_size:]


SMS_LIKE = deflated_zip({"SMSSpamCollection": b"ham\tsee you at the station at six\n" * 500, "readme": b"r"})
DAMAGED_ZIPS = {
    "not a zip": (b"<html><body>404 Not Found</body></html>", zipfile.BadZipFile),
    "cut short": (SMS_LIKE[: len(SMS_LIKE) // 2], zipfile.BadZipFile),
    "bad compressed data": (with_garbage_data(SMS_LIKE), zlib.error),
}


@pytest.mark.parametrize("damage", list(DAMAGED_ZIPS))
def test_unreadable_zip_is_a_download_error_naming_file_and_fix(tmp_path, damage):
    content, cause = DAMAGED_ZIPS[damage]
    archive = tmp_path / "sms.zip"
    archive.write_bytes(content)
    target = tmp_path / "out"
    with pytest.raises(CorruptArchiveError) as caught:
        safe_extract_zip(archive, target, members=["SMSSpamCollection"])
    message = str(caught.value)
    assert str(archive) in message and "not a readable zip archive" in message
    assert "Fix: delete it and fetch it again" in message and "check the URL" in message
    assert isinstance(caught.value, DownloadError) and isinstance(caught.value.__cause__, cause)
    assert not target.exists() or list(target.iterdir()) == []      # no half-extracted member left
