"""Atomic file writes: a reader (or a crash) never sees a half-written file.

Every writer puts the bytes into a temporary file in the target's folder, flushes them to disk, then
moves the file into place with os.replace, which is atomic on POSIX and Windows within one file system.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def default_file_mode() -> int:
    """0o666 less the process umask: the mode open() gives a new file (os.umask can only be read by setting it)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Writes `data` to `path` atomically (creating parent folders); returns the path. The file gets the
    usual mode of a new file (0o666 less the umask), not mkstemp's private 0o600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(handle, default_file_mode())
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Writes UTF-8 `text` to `path` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, values, *, indent: int | None = 2) -> Path:
    """Writes `values` as JSON (NaN/inf allowed, as Python's json writes them) atomically."""
    text = json.dumps(values, indent=indent, allow_nan=True)
    return atomic_write_text(path, text + "\n")


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    """Appends one JSON object as one line, flushed and fsynced (a log that survives a crash line by line)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as stream:
        stream.write(json.dumps(record, allow_nan=True) + "\n")
        stream.flush()
        os.fsync(stream.fileno())


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Every JSON object of a JSON-lines file; a malformed line raises ValueError naming the file and line."""
    path = Path(path)
    records = []
    with open(path, encoding="utf-8") as stream:
        for line_number, line in enumerate(stream, start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}, line {line_number}: not valid JSON ({error.msg})") from error
    return records
