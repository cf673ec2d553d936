"""`gpt2 data`: list the data manifest and fetch (download + verify) its files.

    gpt2 data list [--data-dir X]
    gpt2 data fetch [NAME ...] [--data-dir X] [--offline] [--quiet]
"""
from __future__ import annotations

from gpt2cli.errors import user_errors


def register(subparsers):
    parser = subparsers.add_parser("data", help="list and fetch the data sets (verified by SHA-256)")
    actions = parser.add_subparsers(dest="data_command", metavar="ACTION")
    actions.required = True

    fetch = actions.add_parser("fetch", help="make data sets available locally (all when no NAME)")
    fetch.add_argument("names", nargs="*", metavar="NAME", help="data set names (see `gpt2 data list`)")
    fetch.add_argument("--data-dir", default=None,
                       help="data folder (default: $GPT2_DATA_DIR, else <repo>/data/cache)")
    fetch.add_argument("--offline", action="store_true", help="never download; only verify local files")
    fetch.add_argument("--quiet", action="store_true", help="no progress bar")
    fetch.set_defaults(func=run_fetch)

    listing = actions.add_parser("list", help="show the manifest and which files are present")
    listing.add_argument("--data-dir", default=None,
                         help="data folder (default: $GPT2_DATA_DIR, else <repo>/data/cache)")
    listing.set_defaults(func=run_list)


def run_fetch(args) -> int:
    from gptcore.datasets import dataset_names, fetch
    from gptcore.download import DownloadError

    names = args.names or dataset_names()
    for name in names:
        with user_errors(DownloadError):        # a failed download: one line, exit code 2
            path = fetch(name, args.data_dir, download=not args.offline, progress=not args.quiet)
        print(f"{name}: {path}")
    return 0


def run_list(args) -> int:
    from gptcore.datasets import data_dir, file_status, load_manifest

    root = data_dir(args.data_dir)
    print(f"data dir: {root}")
    print(f"{'name':<18} {'size':>10}  {'status':<8} license")
    for name, entry in load_manifest().items():
        size = sum(record["size"] for record in entry["files"])
        statuses = {file_status(record, root) for record in entry["files"]}
        status = "corrupt" if "corrupt" in statuses else ("missing" if "missing" in statuses else "present")
        print(f"{name:<18} {size:>10,}  {status:<8} {entry['license']}")
    return 0
