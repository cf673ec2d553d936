"""Training text -> token files on disk, tokenized once and memory-mapped when training.

    sources = resolve_sources(["notes/", "extra.txt"])         # files, folders, or manifest names
    corpus = prepare_corpus(sources, cache_dir="data/cache/tokens")
    train_ids = corpus.train_tokens()                           # read-only np.memmap of uint16

Layout of one prepared corpus, a folder named after the key of its inputs:

    <cache_dir>/<key>/train.bin    uint16 token ids, the first (1 - val_fraction) of every file
    <cache_dir>/<key>/val.bin      uint16 token ids, the rest of every file
    <cache_dir>/<key>/meta.json    what went in (files with path, size, mtime and SHA-256, tokenizer, split)
                                   and the counts

The key is a SHA-256 over the files' contents (in order), the tokenizer and the split, so the same
inputs reuse the folder and any change makes a new one. meta.json is written last: a folder without it
is an interrupted preparation and is redone. Files are joined with <|endoftext|> between them.

Reuse without reading the text: when a prepared corpus's meta.json records the same files with the same
size and mtime_ns (and the same tokenizer and split), it is taken without hashing them. Hashing happens
only when those differ (an edited, touched or replaced file), and a touched file with the same content
still finds its folder by the hash, whose meta.json then records the new mtimes. A file whose mtime was
within STATS_SETTLE_NS of the moment its stats were recorded is always hashed: a coarse filesystem clock
could give a second edit in that moment the same mtime.

Each file is split like the book splits its one story (by position in the text, before tokenizing),
moved forward to the next line start. Text is read and tokenized in chunks cut just before a newline
that a visible ASCII character follows (see _is_chunk_cut): GPT-2's tokens never cross such a cut, so
chunked encoding gives exactly the ids of encoding the whole file at once.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from gptcore.datasets import DEFAULT_DATA_DIR, dataset_names, fetch
from gptcore.fileio import atomic_write_json
from gptcore.tokenizer import get_tokenizer

TOKEN_DTYPE = np.uint16          # GPT-2's 50257 ids fit; half the disk of int32
CORPUS_FORMAT = "gpt2-twice-tokens-v1"
TOKEN_CACHE_ENV = "GPT2_TOKEN_CACHE"
DEFAULT_DATASET = "the-verdict"
CHUNK_BYTES = 1 << 20
ENDOFTEXT = "<|endoftext|>"
STATS_SETTLE_NS = 3 * 10**9     # more than the coarsest common mtime granularity (FAT: 2 s)


def default_cache_dir() -> Path:
    """$GPT2_TOKEN_CACHE, else <repo>/data/cache/tokens (git-ignored, next to downloaded data)."""
    configured = os.environ.get(TOKEN_CACHE_ENV)
    return Path(configured).expanduser() if configured else DEFAULT_DATA_DIR / "tokens"


def _text_files_in(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.rglob("*") if p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    if not files:
        raise FileNotFoundError(f"folder {folder} holds no files to train on; put .txt files in it")
    return files


def resolve_sources(data: list[str] | None, data_dir: str | os.PathLike | None = None,
                    download: bool = True) -> list[Path]:
    """Each entry of `data` -> text files: a file as is, a folder's files (sorted, hidden ones skipped),
    or a data set name from the manifest (fetched and verified). None or [] means the-verdict."""
    files: list[Path] = []
    for entry in data or [DEFAULT_DATASET]:
        path = Path(entry).expanduser()
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            files.extend(_text_files_in(path))
        elif entry in dataset_names():
            fetched = fetch(entry, data_dir, download=download)
            files.extend(_text_files_in(fetched) if fetched.is_dir() else [fetched])
        else:
            raise FileNotFoundError(f"--data {entry!r} is neither a file, a folder nor a data set name; "
                                    f"give text files or folders, or one of: {', '.join(dataset_names())}")
    return files


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


def corpus_key(file_records: list[dict], tokenizer_name: str, n_vocab: int, val_fraction: float) -> str:
    """SHA-256 (hex, first 20 characters) of everything the token files depend on."""
    described = {"format": CORPUS_FORMAT, "tokenizer": tokenizer_name, "n_vocab": n_vocab,
                 "val_fraction": val_fraction, "files": [(r["size"], r["sha256"]) for r in file_records]}
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:20]


def _is_chunk_cut(data: bytes, index: int) -> bool:
    """True when data[index] is a newline followed by a visible ASCII character: cutting just BEFORE it
    leaves GPT-2's tokens unchanged.

    Why: let W be the whitespace run that ends with this newline. In the whole text the pre-tokenizer
    makes W[:-1] one token (\\s+(?!\\S) stops before the last whitespace character, since a visible one
    follows) and the newline another; cut there, the first chunk ends with W[:-1] (one token at the end of
    a text) and the second starts with the newline (one token before a visible character). Cutting AFTER
    the newline would not do: at the end of a text "\\n\\n" is one token, before a letter it is two.
    A newline byte is never inside a UTF-8 character."""
    return 0 < index < len(data) - 1 and data[index] == 0x0A and 0x21 <= data[index + 1] <= 0x7E


def _last_chunk_cut(data: bytes) -> int | None:
    index = data.rfind(b"\n")
    while index != -1:
        if _is_chunk_cut(data, index):
            return index
        index = data.rfind(b"\n", 0, index)
    return None


def split_point(path: Path, val_fraction: float) -> int:
    """Byte offset where a file's validation tail starts: (1 - val_fraction) of its size, moved forward to
    the next line start (when there is none, to the next character start)."""
    size = path.stat().st_size
    target = int(round((1.0 - val_fraction) * size))
    with open(path, "rb") as handle:
        handle.seek(target)
        tail = handle.read()
    newline = tail.find(b"\n")
    if newline != -1:
        return target + newline + 1
    offset = target
    while offset < size and tail[offset - target] & 0xC0 == 0x80:   # skip UTF-8 continuation bytes
        offset += 1
    return offset


def _text_chunks(path: Path, start: int, stop: int):
    """(decoded text, bytes) of bytes [start, stop) of `path`, in pieces cut as _is_chunk_cut allows."""
    with open(path, "rb") as handle:
        handle.seek(start)
        remaining, pending = stop - start, b""
        while remaining > 0 or pending:
            block = handle.read(min(CHUNK_BYTES, remaining)) if remaining > 0 else b""
            if remaining > 0 and not block:
                remaining = 0               # the file shrank while we read it: take what there is
            remaining -= len(block)
            pending += block
            cut = len(pending) if remaining <= 0 else _last_chunk_cut(pending)
            if cut is None:
                continue                    # no boundary yet: read more before encoding
            piece, pending = pending[:cut], pending[cut:]
            try:
                yield piece.decode("utf-8"), len(piece)
            except UnicodeDecodeError as error:
                raise ValueError(f"{path} is not UTF-8 text (byte {start + error.start} of the file); "
                                 f"convert it to UTF-8 or leave it out of --data") from error


@dataclass
class TokenCorpus:
    """A prepared corpus: its folder and meta.json; the token files open as read-only memory maps."""
    folder: Path
    meta: dict

    @property
    def train_path(self) -> Path:
        return self.folder / "train.bin"

    @property
    def val_path(self) -> Path:
        return self.folder / "val.bin"

    def _open(self, path: Path) -> np.ndarray:
        if path.stat().st_size == 0:
            return np.zeros(0, dtype=TOKEN_DTYPE)
        return np.memmap(path, dtype=TOKEN_DTYPE, mode="r")

    def train_tokens(self) -> np.ndarray:
        return self._open(self.train_path)

    def val_tokens(self) -> np.ndarray:
        return self._open(self.val_path)


def load_corpus(folder: str | os.PathLike) -> TokenCorpus | None:
    """The prepared corpus in `folder`, or None when it is missing or incomplete."""
    folder = Path(folder)
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    corpus = TokenCorpus(folder, meta)
    itemsize = np.dtype(TOKEN_DTYPE).itemsize
    for path, count in ((corpus.train_path, meta.get("train_tokens")), (corpus.val_path, meta.get("val_tokens"))):
        if not path.is_file() or path.stat().st_size != itemsize * (count or 0):
            return None
    return corpus


def prepare_corpus(files: list[Path], *, cache_dir: str | os.PathLike | None = None, tokenizer_name: str = "tiktoken",
                   val_fraction: float = 0.1, progress: bool = True) -> TokenCorpus:
    """Token files for `files` (see the module docstring): reused when present, else built with a progress bar."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"the validation fraction must be in [0, 1), got {val_fraction}")
    tokenizer = get_tokenizer(tokenizer_name)
    if tokenizer.n_vocab > np.iinfo(TOKEN_DTYPE).max + 1:
        raise ValueError(f"tokenizer {tokenizer_name} has {tokenizer.n_vocab} ids, more than {TOKEN_DTYPE.__name__} holds")
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    recorded_ns = time.time_ns()         # before the stats: a change after them shows as a later mtime
    stats = file_stats(files)
    kind = {"format": CORPUS_FORMAT, "tokenizer": tokenizer_name, "n_vocab": tokenizer.n_vocab,
            "val_fraction": val_fraction}
    unchanged = _find_by_stats(cache, stats, kind)
    if unchanged is not None:
        return unchanged
    records = [{**stat, "sha256": _sha256_file(Path(stat["path"]))} for stat in stats]
    key = corpus_key(records, tokenizer_name, tokenizer.n_vocab, val_fraction)
    folder = cache / key
    existing = load_corpus(folder)
    if existing is not None:
        return _record_stats(existing, records, recorded_ns)
    folder.mkdir(parents=True, exist_ok=True)
    counts = _tokenize_into(folder, [Path(f) for f in files], tokenizer, val_fraction, progress)
    meta = {**kind, "key": key, "dtype": np.dtype(TOKEN_DTYPE).name, "files": records,
            "stats_recorded_ns": recorded_ns, "train_tokens": counts["train"], "val_tokens": counts["val"]}
    atomic_write_json(folder / "meta.json", meta)
    return TokenCorpus(folder, meta)


def file_stats(files: list[Path]) -> list[dict]:
    """{path (absolute), size, mtime_ns} of each file: what the reuse without hashing compares."""
    stats = []
    for f in files:
        info = Path(f).stat()
        stats.append({"path": str(Path(f).resolve()), "size": info.st_size, "mtime_ns": info.st_mtime_ns})
    return stats


def _stats_vouch(meta: dict, stats: list[dict]) -> bool:
    """Whether meta.json's recorded stats equal `stats` and were recorded well after every file's last change."""
    recorded = [(r.get("path"), r.get("size"), r.get("mtime_ns")) for r in meta.get("files", [])]
    settled_before = meta.get("stats_recorded_ns", 0) - STATS_SETTLE_NS
    return (recorded == [(s["path"], s["size"], s["mtime_ns"]) for s in stats]
            and all(s["mtime_ns"] < settled_before for s in stats))


def _find_by_stats(cache: Path, stats: list[dict], kind: dict) -> TokenCorpus | None:
    """A complete corpus in `cache` of the same kind whose meta.json vouches for these files unchanged."""
    if not cache.is_dir():
        return None
    for meta_file in sorted(cache.glob("*/meta.json")):
        corpus = load_corpus(meta_file.parent)
        if (corpus is not None and all(corpus.meta.get(name) == value for name, value in kind.items())
                and _stats_vouch(corpus.meta, stats)):
            return corpus
    return None


def _record_stats(corpus: TokenCorpus, records: list[dict], recorded_ns: int) -> TokenCorpus:
    """The corpus found by hashing, its meta.json updated to these files' stats (e.g. touched, or the same text
    at another path) when they are settled, so the next start reuses it without hashing."""
    meta = {**corpus.meta, "files": records, "stats_recorded_ns": recorded_ns}
    if _stats_vouch(corpus.meta, records) or not _stats_vouch(meta, records):
        return corpus                   # nothing new to vouch for (or the files changed just now)
    atomic_write_json(corpus.folder / "meta.json", meta)
    return TokenCorpus(corpus.folder, meta)


def _tokenize_into(folder: Path, files: list[Path], tokenizer, val_fraction: float, progress: bool) -> dict:
    """Streams every file's train part into train.bin and validation part into val.bin (temp files, then renamed)."""
    outputs, temps, counts = {}, {}, {"train": 0, "val": 0}
    total = sum(f.stat().st_size for f in files)
    bar = tqdm(total=total, unit="B", unit_scale=True, desc="tokenizing", disable=not progress, leave=False)
    try:
        for split in ("train", "val"):
            handle, temps[split] = tempfile.mkstemp(dir=folder, prefix=f".{split}.", suffix=".tmp")
            outputs[split] = os.fdopen(handle, "wb")
        separator = np.array([tokenizer.eot_id], dtype=TOKEN_DTYPE)
        for number, path in enumerate(files):
            cut = split_point(path, val_fraction) if val_fraction > 0 else path.stat().st_size
            for split, (start, stop) in (("train", (0, cut)), ("val", (cut, path.stat().st_size))):
                if number and counts[split]:
                    outputs[split].write(separator.tobytes())      # <|endoftext|> between documents
                    counts[split] += 1
                for text, size in _text_chunks(path, start, stop):
                    ids = np.asarray(tokenizer.encode(text, allowed_special={ENDOFTEXT}), dtype=TOKEN_DTYPE)
                    outputs[split].write(ids.tobytes())
                    counts[split] += ids.size
                    bar.update(size)
        for split in ("train", "val"):
            outputs[split].flush()
            os.fsync(outputs[split].fileno())
            outputs[split].close()
            os.replace(temps[split], folder / f"{split}.bin")
    except BaseException:
        for split, stream in outputs.items():
            stream.close()
            Path(temps[split]).unlink(missing_ok=True)
        raise
    finally:
        bar.close()
    return counts
