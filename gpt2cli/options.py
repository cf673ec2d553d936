"""Flags and runtime helpers shared by several commands (no command module imports another).

Heavy libraries (torch, threadpoolctl, the backends) are imported inside the functions that use them, so
building the parser for `gpt2 --help` stays fast.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import warnings

DEVICE_HELP = "torch device: auto, cpu, cuda, cuda:N, mps (default auto)"


def add_threads_option(parser) -> None:
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="CPU threads for torch and NumPy's BLAS (default: the libraries' own choice, "
                             "usually one per core). On a busy shared machine 1 can be many times faster")


def add_data_file_option(parser, help: str) -> None:
    """--data FILE (one name for the training data across commands), and --data-file, its older spelling, kept
    working but left out of --help. Both fill args.data_file."""
    parser.add_argument("--data", dest="data_file", metavar="FILE", default=None, help=help)
    parser.add_argument("--data-file", dest="data_file", default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def add_data_alias(parser, dest: str = "data", **kwargs) -> None:
    """--data-file accepted as another spelling of a command's --data (left out of --help)."""
    parser.add_argument("--data-file", dest=dest, default=argparse.SUPPRESS, help=argparse.SUPPRESS, **kwargs)


def add_backend_and_device_options(parser) -> None:
    """--backend torch|numpy (default torch) and --device, as the classification commands spell them."""
    parser.add_argument("--backend", choices=("torch", "numpy"), default="torch",
                        help="torch (default) or numpy, the reference written by hand")
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)


@contextlib.contextmanager
def limited_threads(count: int | None):
    """torch and BLAS limited to `count` threads inside the block (None: unchanged); restored afterwards."""
    if count is None:
        yield
        return
    if count < 1:
        raise ValueError(f"--threads must be a positive integer, got {count}")
    import torch
    from threadpoolctl import threadpool_limits

    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        with threadpool_limits(count):
            yield
    finally:
        torch.set_num_threads(previous)


@contextlib.contextmanager
def one_line_warnings():
    """Warnings (e.g. truncated messages) as `warning: ...` lines on stderr, without source lines."""
    def show(message, category, filename, lineno, file=None, line=None):
        print(f"warning: {message}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.simplefilter("always", UserWarning)
        warnings.showwarning = show
        yield


def classifier_backend(name: str, params: dict, config, num_classes: int, device_name: str):
    """(the classifier backend of --backend NAME holding `params`, the device it runs on as text)."""
    if name == "numpy":
        if device_name not in ("auto", "cpu"):
            raise ValueError(f"--backend numpy runs on the CPU; drop --device {device_name} or use --backend torch")
        from npgpt.classifier_train import NumpyClassifierBackend
        return NumpyClassifierBackend(params, config, num_classes), "cpu"
    from torchgpt import pick_device
    from torchgpt.classifier_train import TorchClassifierBackend
    device = pick_device(device_name)
    return TorchClassifierBackend(params, config, num_classes, device=device), str(device)
