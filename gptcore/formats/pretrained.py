"""OpenAI's released GPT-2 checkpoints: the file list, expected sizes, and download_gpt2.

    folder = download_gpt2("124M")            # -> ./gpt2/124M with the seven files
    config, params = npgpt.load_weights(folder)

Every file comes from OpenAI's original URL first, then from the mirror the book's readers use (download
failures are their most reported problem), through gptcore.download.download_file: streamed with a
progress bar, resumed with an HTTP Range request after a broken connection, size-checked, and moved into
place atomically. Tests and private mirrors pass their own `base_urls`.
"""
from __future__ import annotations

import os
from pathlib import Path

from gptcore.config import SIZE_ALIASES
from gptcore.download import download_file

OPENAI_BASE_URL = "https://openaipublic.blob.core.windows.net/gpt-2/models"
MIRROR_BASE_URL = "https://f001.backblazeb2.com/file/LLMs-from-scratch/gpt2"
DEFAULT_BASE_URLS = (OPENAI_BASE_URL, MIRROR_BASE_URL)
MODELS_DIR_ENV = "GPT2_MODELS_DIR"

# Expected size in bytes of each released file, as recorded from OpenAI's files; None where the size has not
# been recorded here: the download then checks only that the transfer completed (the Content-Length the
# server announced), and load_weights still checks every tensor's shape against hparams.json.
# The tokenizer files are one tokenizer shared by every size, so their sizes hold for all four folders.
# The small `checkpoint` pointer file is recorded for 124M only.
_TOKENIZER = {"encoder.json": 1_042_301, "vocab.bpe": 456_318}
_NOT_RECORDED = {"checkpoint": None, "hparams.json": None, "model.ckpt.data-00000-of-00001": None,
                 "model.ckpt.index": None, "model.ckpt.meta": None}

GPT2_FILES: dict[str, dict[str, int | None]] = {
    "124M": {"checkpoint": 77, **_TOKENIZER, "hparams.json": 90, "model.ckpt.data-00000-of-00001": 497_759_232,
             "model.ckpt.index": 5_215, "model.ckpt.meta": 471_155},
    "355M": {"checkpoint": None, **_TOKENIZER, "hparams.json": 91, "model.ckpt.data-00000-of-00001": 1_419_292_672,
             "model.ckpt.index": 10_399, "model.ckpt.meta": 926_519},
    # 774M and 1558M: the model files' sizes are not known here (no copy could be measured); unchecked.
    "774M": {**_NOT_RECORDED, **_TOKENIZER},
    "1558M": {**_NOT_RECORDED, **_TOKENIZER},
}
# Download order: the small files first, so a wrong size or a dead URL shows up before the big one.
_ORDER = ("checkpoint", "hparams.json", "encoder.json", "vocab.bpe", "model.ckpt.index", "model.ckpt.meta",
          "model.ckpt.data-00000-of-00001")


def normalize_size(size: str) -> str:
    """'124M' (or the preset name 'gpt2-small') -> '124M'; ValueError listing the choices otherwise."""
    by_preset = {preset: openai for openai, preset in SIZE_ALIASES.items()}
    key = by_preset.get(size, size)
    if key not in GPT2_FILES:
        raise ValueError(f"unknown GPT-2 size {size!r}; choose one of {', '.join(GPT2_FILES)} "
                         f"(or {', '.join(by_preset)})")
    return key


def default_models_dir() -> Path:
    """$GPT2_MODELS_DIR, else ./gpt2 (the folder the book's readers use)."""
    return Path(os.environ.get(MODELS_DIR_ENV) or "gpt2")


def gpt2_file_urls(size: str, file: str, base_urls: list[str] | tuple[str, ...] | None = None) -> list[str]:
    """The URLs to try for one file: '{base}/{size}/{file}' for each base, canonical first."""
    size = normalize_size(size)
    bases = DEFAULT_BASE_URLS if base_urls is None else ([base_urls] if isinstance(base_urls, str) else base_urls)
    return [f"{base.rstrip('/')}/{size}/{file}" for base in bases]


def download_gpt2(size: str = "124M", dest_dir: str | os.PathLike | None = None, *,
                  base_urls: list[str] | tuple[str, ...] | None = None, timeout: float = 30.0,
                  progress: bool = True, expected_sizes: dict[str, int | None] | None = None) -> Path:
    """Download OpenAI's GPT-2 `size` files into `dest_dir` (default <models dir>/<size>); return the folder.

    base_urls: the URL prefixes to try in order (default: OpenAI's, then the mirror); a file's URL is
    '{base}/{size}/{file}'. expected_sizes: file -> bytes, replacing GPT2_FILES[size] (private mirrors,
    tests). A file already in place (with its recorded size, where one is recorded) is kept without
    touching the network: the downloader only ever moves complete transfers into place, and an interrupted
    one is resumed from its .part file, so running the command again finishes a broken download.
    Raises gptcore.download.DownloadError naming the file, the URLs tried and the fix.
    """

    size = normalize_size(size)
    folder = Path(dest_dir) if dest_dir is not None else default_models_dir() / size
    expected = GPT2_FILES[size] if expected_sizes is None else expected_sizes
    unknown = sorted(set(expected) - set(_ORDER))
    if unknown:
        raise ValueError(f"expected_sizes names files {unknown} that are not part of a GPT-2 release; "
                         f"the files are {list(_ORDER)}")
    created = missing_folders(folder)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        for file in _ORDER:
            download_file(gpt2_file_urls(size, file, base_urls), folder / file, expected_size=expected.get(file),
                          timeout=timeout, progress=progress,
                          hint=f"check your network connection and run the command again (it resumes), or put "
                               f"OpenAI's {size}/{file} at {folder / file} yourself")
    except BaseException:
        remove_empty_folders(created)
        raise
    return folder


def missing_folders(folder: Path) -> list[Path]:
    """The folders that mkdir(parents=True) would create for `folder`, deepest first."""
    missing = []
    for candidate in (folder, *folder.parents):
        if candidate.exists():
            break
        missing.append(candidate)
    return missing


def remove_empty_folders(folders: list[Path]) -> None:
    """Removes those of `folders` (deepest first) that are still empty: a failed download leaves no empty
    folder behind, while the files it did complete (or its .part files, which a rerun resumes) stay."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:      # not empty (or already gone): keep it and its parents
            return
