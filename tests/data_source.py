"""Where the tests find the public data files of data/manifest.json, in this order:

1. $GPT2_DATA_DIR (CI points it at ../shared/data). Set but not a folder is an error, never a silent
   fallback: the person who set it meant that folder.
2. ../shared/data beside the checkout (the project's own machines).
3. A clean clone: every manifest entry fetched with gptcore.datasets.fetch into the default cache,
   data/cache (verified by SHA-256; later runs find the files there and use no network). tiktoken
   then uses its own default cache and downloads its two files itself.
When none works (no folder, no network): one message that says which variables to set.

tiktoken reads $TIKTOKEN_CACHE_DIR; `default_environment` points it at <data dir>/tiktoken_cache only
where that folder exists (../shared/data has one; data/cache does not).
"""
from __future__ import annotations

import os
from pathlib import Path

from gptcore import datasets
from gptcore.download import DownloadError

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
TIKTOKEN_ENV = "TIKTOKEN_CACHE_DIR"
FIX = (f"Fix: connect to the network, or export {datasets.DATA_DIR_ENV}=<a folder holding the files of "
       f"data/manifest.json> (e.g. /abs/path/to/shared/data) and {TIKTOKEN_ENV}=<a folder holding tiktoken's "
       f"two GPT-2 files> (e.g. ${datasets.DATA_DIR_ENV}/tiktoken_cache)")


class TestDataUnavailable(RuntimeError):
    """No folder with the data files and no way to download them."""

    __test__ = False            # a class named Test* is not a test class for pytest


def default_environment(environ: dict, shared: Path = SHARED_DATA) -> None:
    """Fills in GPT2_DATA_DIR (../shared/data when it exists) and TIKTOKEN_CACHE_DIR (its tiktoken_cache
    folder when that exists) where they are not set, in `environ` (os.environ at session start)."""
    if not environ.get(datasets.DATA_DIR_ENV) and shared.is_dir():
        environ[datasets.DATA_DIR_ENV] = str(shared)
    data_dir = environ.get(datasets.DATA_DIR_ENV)
    if TIKTOKEN_ENV not in environ and data_dir and (Path(data_dir) / "tiktoken_cache").is_dir():
        environ[TIKTOKEN_ENV] = str(Path(data_dir) / "tiktoken_cache")


def resolve_data_dir(shared: Path = SHARED_DATA, cache: Path = datasets.DEFAULT_DATA_DIR) -> Path:
    """The folder holding every file of the manifest (see the module docstring for the order).

    Raises TestDataUnavailable naming the problem and the fix.
    """
    configured = os.environ.get(datasets.DATA_DIR_ENV)
    if configured:
        folder = Path(configured).expanduser()
        if not folder.is_dir():
            raise TestDataUnavailable(f"{datasets.DATA_DIR_ENV}={configured} is not a folder. Fix: point it at a "
                                      f"folder holding the files of data/manifest.json (e.g. ../shared/data), "
                                      f"or unset it to download them into {cache}")
        return folder
    if shared.is_dir():
        return shared
    return fetch_all_into(cache, shared)


def fetch_all_into(cache: Path, shared: Path = SHARED_DATA) -> Path:
    """Every data set of the manifest in `cache` (downloaded where missing); returns `cache`."""
    try:
        for name in datasets.dataset_names():
            datasets.fetch(name, cache, progress=False)
    except (DownloadError, datasets.DataError, OSError) as error:
        reason = str(error).split(". Fix:")[0]          # our own fix below replaces the downloader's
        raise TestDataUnavailable(
            f"no test data: {datasets.DATA_DIR_ENV} is not set, {shared} does not exist, and downloading "
            f"the data sets into {cache} failed ({reason}). {FIX}") from error
    return cache
