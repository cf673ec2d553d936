"""`gpt2 bench`: NumPy against PyTorch (eager and SDPA) and Hugging Face, per component and end to end.

    gpt2 bench                          # full run: components, model sizes, T sweep, decode (bench_results/)
    gpt2 bench --quick                  # smoke run in under a minute (numbers are not claims)
    gpt2 bench --sections models --repeats 7 --out bench_results/models

The code lives in benchmarks/ (suite.py runs the sections; harness.py is the timing method; cases.py
what is timed and the FLOP formula; report.py tables and plots). docs/benchmarks.md explains the method.
"""
from __future__ import annotations

from gpt2cli.errors import user_errors


def register(subparsers):
    from benchmarks.suite import add_arguments

    parser = subparsers.add_parser("bench", help="time NumPy against PyTorch and transformers (tables, JSON, plots)")
    add_arguments(parser)
    parser.set_defaults(func=run)


def run(args) -> int:
    import sys

    from benchmarks.suite import run as run_suite, settings_from_args
    from gptcore.config import ConfigError

    with user_errors(TypeError, ConfigError):
        settings = settings_from_args(args)
    run_suite(settings, args.out, log=lambda message: print(message, file=sys.stderr, flush=True))
    return 0
