"""`gpt2 weights download` / gptcore.formats.pretrained against a real HTTP server on 127.0.0.1, and the CLI.

No test reaches OpenAI or the mirror: an autouse fixture points the default URLs at a closed local port.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

import gptcore.formats.pretrained as pretrained
from gpt2cli.main import main
from gptcore.download import DownloadError
from gptcore.formats.pretrained import GPT2_FILES, download_gpt2, gpt2_file_urls, normalize_size
from gptcore.formats.weights import load_weights
from tests.http_server import free_port

RELEASE_FILES = ("checkpoint", "encoder.json", "hparams.json", "model.ckpt.data-00000-of-00001",
                 "model.ckpt.index", "model.ckpt.meta", "vocab.bpe")


@pytest.fixture(autouse=True)
def no_real_urls(monkeypatch):
    """Any download that forgets base_urls goes to a port where nothing listens and fails fast."""
    closed = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setattr(pretrained, "DEFAULT_BASE_URLS", (closed + "/openai", closed + "/mirror"))


def fake_release(seed=0):
    """file -> bytes standing in for a GPT-2 folder (the data file large enough to break in the middle)."""
    rng = np.random.default_rng(seed)
    files = {name: rng.bytes(64 + 10 * i) for i, name in enumerate(RELEASE_FILES)}
    files["model.ckpt.data-00000-of-00001"] = rng.bytes(300_000)
    return files


def serve(server, prefix, files, size="124M", **options):
    for name, body in files.items():
        server.add(f"{prefix}/{size}/{name}", body, **options)
    return server.url(prefix)


def sizes_of(files):
    return {name: len(body) for name, body in files.items()}


def test_the_size_table():
    assert GPT2_FILES["124M"] == {
        "checkpoint": 77, "encoder.json": 1_042_301, "hparams.json": 90,
        "model.ckpt.data-00000-of-00001": 497_759_232, "model.ckpt.index": 5_215, "model.ckpt.meta": 471_155,
        "vocab.bpe": 456_318}
    medium = GPT2_FILES["355M"]
    assert (medium["model.ckpt.data-00000-of-00001"], medium["model.ckpt.index"], medium["model.ckpt.meta"],
            medium["hparams.json"]) == (1_419_292_672, 10_399, 926_519, 91)
    for size in GPT2_FILES:
        assert sorted(GPT2_FILES[size]) == sorted(RELEASE_FILES), size
    for size in ("774M", "1558M"):       # not known here: left unchecked rather than guessed
        for name in ("model.ckpt.data-00000-of-00001", "model.ckpt.index", "model.ckpt.meta", "hparams.json"):
            assert GPT2_FILES[size][name] is None


def test_urls_and_size_names():
    assert gpt2_file_urls("gpt2-small", "hparams.json", base_urls=None) == [
        f"{base}/124M/hparams.json" for base in pretrained.DEFAULT_BASE_URLS]
    assert pretrained.OPENAI_BASE_URL == "https://openaipublic.blob.core.windows.net/gpt-2/models"
    assert pretrained.MIRROR_BASE_URL == "https://f001.backblazeb2.com/file/LLMs-from-scratch/gpt2"
    assert normalize_size("gpt2-xl") == "1558M"
    with pytest.raises(ValueError, match="choose one of 124M, 355M, 774M, 1558M"):
        normalize_size("7B")


def test_primary_failing_falls_back_to_the_mirror(http_server, tmp_path, capsys):
    files = fake_release()
    primary = serve(http_server, "/openai", files, status=503)
    mirror = serve(http_server, "/mirror", files)
    folder = download_gpt2("124M", tmp_path / "124M", base_urls=[primary, mirror], progress=False,
                           expected_sizes=sizes_of(files))
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == files
    assert "trying mirror" in capsys.readouterr().err
    tried = [path for path, _ in http_server.requests]
    assert all(f"/openai/124M/{name}" in tried and f"/mirror/124M/{name}" in tried for name in files)

    # a second run finds every file in place and asks nothing
    count = len(http_server.requests)
    download_gpt2("124M", folder, base_urls=[primary, mirror], progress=False, expected_sizes=sizes_of(files))
    assert len(http_server.requests) == count


def test_unreachable_primary_falls_back_too(http_server, tmp_path):
    files = fake_release()
    mirror = serve(http_server, "/mirror", files, size="355M")
    folder = download_gpt2("355M", tmp_path / "m", base_urls=[f"http://127.0.0.1:{free_port()}", mirror],
                           progress=False, expected_sizes=sizes_of(files), timeout=5)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == files


def test_a_partial_file_is_resumed_with_a_range_request(http_server, tmp_path):
    files = fake_release()
    base = serve(http_server, "/openai", files)
    folder = tmp_path / "124M"
    folder.mkdir()
    data = files["model.ckpt.data-00000-of-00001"]
    (folder / "model.ckpt.data-00000-of-00001.part").write_bytes(data[:120_000])
    download_gpt2("124M", folder, base_urls=[base], progress=False, expected_sizes=sizes_of(files))
    assert (folder / "model.ckpt.data-00000-of-00001").read_bytes() == data
    assert ("/openai/124M/model.ckpt.data-00000-of-00001", "bytes=120000-") in http_server.requests
    assert not list(folder.glob("*.part"))


def test_a_dropped_connection_keeps_the_part_and_the_next_run_finishes(http_server, tmp_path):
    files = fake_release()
    data_name = "model.ckpt.data-00000-of-00001"
    base = serve(http_server, "/openai", files)
    http_server.routes[f"/openai/124M/{data_name}"].drop_after = 150_000     # half way
    folder = tmp_path / "124M"
    with pytest.raises(DownloadError) as caught:
        download_gpt2("124M", folder, base_urls=[base], progress=False, expected_sizes=sizes_of(files), timeout=5)
    message = str(caught.value)
    assert data_name in message and "partial download kept" in message and "run the command again" in message
    assert not (folder / data_name).exists()
    assert (folder / f"{data_name}.part").stat().st_size == 150_000

    http_server.routes[f"/openai/124M/{data_name}"].drop_after = None
    download_gpt2("124M", folder, base_urls=[base], progress=False, expected_sizes=sizes_of(files))
    assert (folder / data_name).read_bytes() == files[data_name]
    assert http_server.requests[-1] == (f"/openai/124M/{data_name}", "bytes=150000-")


def test_wrong_size_is_a_clear_error_and_leaves_nothing(http_server, tmp_path):
    files = fake_release()
    base = serve(http_server, "/openai", files)
    expected = {**sizes_of(files), "hparams.json": 90}
    with pytest.raises(DownloadError) as caught:
        download_gpt2("124M", tmp_path / "124M", base_urls=[base], progress=False, expected_sizes=expected)
    message = str(caught.value)
    assert "hparams.json" in message and "expected 90 bytes" in message and f"got {len(files['hparams.json'])}" in message
    assert not (tmp_path / "124M" / "hparams.json").exists()
    assert not list((tmp_path / "124M").glob("*.part"))


def test_default_urls_are_used_when_none_are_given(tmp_path):
    """Without base_urls the defaults are tried (here: closed local ports, by the autouse fixture)."""
    with pytest.raises(DownloadError) as caught:
        download_gpt2("124M", tmp_path, progress=False, timeout=2)
    message = str(caught.value)
    assert "/openai/124M/checkpoint" in message and "/mirror/124M/checkpoint" in message


# ---------------------------------------------------------------------------------------------------
# the CLI, end to end with a real (small) OpenAI folder written by TensorFlow
# ---------------------------------------------------------------------------------------------------

def test_cli_download_info_convert(http_server, tmp_path, monkeypatch, capsys):
    from tests.fake_checkpoints import openai_hparams, random_openai_tensors, write_openai_checkpoint

    hparams = openai_hparams(n_vocab=23, n_ctx=8, n_embd=16, n_head=2, n_layer=1)
    release = write_openai_checkpoint(tmp_path / "release", hparams, random_openai_tensors(hparams, seed=4))
    files = {p.name: p.read_bytes() for p in release.iterdir()}
    files.update({"encoder.json": b"{}", "vocab.bpe": b"#version: 0.2\n"})
    monkeypatch.setitem(GPT2_FILES, "124M", sizes_of(files))
    primary = serve(http_server, "/openai", files, status=404)
    mirror = serve(http_server, "/mirror", files)

    dest = tmp_path / "models" / "124M"
    assert main(["weights", "download", "--size", "124M", "--dir", str(dest), "--base-url", primary,
                 "--base-url", mirror, "--quiet"]) == 0
    assert f"GPT-2 124M: {dest}" in capsys.readouterr().out
    expected_config, expected = load_weights(release)

    assert main(["weights", "info", str(dest)]) == 0
    out = capsys.readouterr().out
    assert "OpenAI TensorFlow checkpoint" in out and "emb_dim=16" in out
    n_params = 23 * 16 + 8 * 16 + 12 * 16 * 16 + 13 * 16 + 2 * 16   # wte, wpe, block weights/biases, ln_f
    assert f"parameters:  {n_params:,}" in out

    assert main(["weights", "convert", str(dest), str(tmp_path / "ours")]) == 0
    capsys.readouterr()
    config, params = load_weights(tmp_path / "ours")
    assert config == expected_config
    for name in expected:
        assert np.array_equal(params[name], expected[name]), name
    assert main(["weights", "info", str(tmp_path / "ours")]) == 0
    out = capsys.readouterr().out
    assert "gpt2-twice checkpoint" in out and "converted_from" in out


def test_cli_errors_are_one_line(http_server, tmp_path, capsys):
    assert main(["weights", "download", "--size", "7B", "--dir", str(tmp_path)]) == 2
    assert "unknown GPT-2 size '7B'" in capsys.readouterr().err
    missing = http_server.url("/nothing")
    assert main(["weights", "download", "--dir", str(tmp_path), "--base-url", missing, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "404" in err and "Fix:" in err
    assert main(["weights", "info", str(tmp_path / "absent")]) == 2
    assert "no weights at" in capsys.readouterr().err
    os.makedirs(tmp_path / "junk")
    (tmp_path / "junk" / "a.txt").write_text("x")
    assert main(["weights", "convert", str(tmp_path / "junk"), str(tmp_path / "out")]) == 2
    assert "unknown weights layout" in capsys.readouterr().err


def test_a_failed_download_leaves_no_empty_folder(tmp_path, monkeypatch, capsys):
    """Offline (nothing listens): `gpt2 weights download` fails and leaves neither gpt2/124M/ nor gpt2/."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(pretrained.MODELS_DIR_ENV, raising=False)
    assert main(["weights", "download", "--size", "124M", "--timeout", "2", "--quiet"]) == 2
    assert "124M/checkpoint" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
    kept = tmp_path / "kept"                          # a folder that was there before is left in place
    kept.mkdir()
    with pytest.raises(DownloadError):
        download_gpt2("124M", kept / "a" / "b", progress=False, timeout=2)
    assert kept.is_dir() and list(kept.iterdir()) == []


def test_a_failed_download_keeps_the_files_it_completed(http_server, tmp_path):
    files = fake_release()
    base = serve(http_server, "/openai", {name: body for name, body in files.items() if name == "checkpoint"})
    folder = tmp_path / "gpt2" / "124M"
    with pytest.raises(DownloadError):
        download_gpt2("124M", folder, base_urls=[base], progress=False, expected_sizes=sizes_of(files), timeout=2)
    assert [p.name for p in folder.iterdir()] == ["checkpoint"]     # a rerun goes on from here
