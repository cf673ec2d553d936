"""`gpt2 parity`: run the NumPy-vs-torch parity suite (parity_tests/, pytest + hypothesis) and print
one row per component: examples tried, checks made, the largest errors per dtype, the tensor that came
closest to its tolerance, passed/failed.

    gpt2 parity [--profile ci|thorough] [-k EXPR] [--report FILE] [--tests DIR] [-x] [-v]

The tests ship in the source checkout, not in the installed package: from a clone installed with
`pip install -e .` they are found beside the code; anywhere else pass --tests DIR.
Exit status: 0 all passed, 1 a test failed, 2 bad input (no tests there, -k matched nothing, ...).
"""
from __future__ import annotations

from pathlib import Path

from gpt2cli.errors import UserError

PROFILES = ("ci", "thorough")
DTYPES = ("float64", "float32")


def register(subparsers):
    parser = subparsers.add_parser(
        "parity", help="prove NumPy and torch agree: run parity_tests and print a per-component error table",
        description="Runs parity_tests/ with pytest and prints, per component, the examples hypothesis tried, "
                    "the checks made, the largest absolute/relative errors per dtype and the worst tensor.")
    parser.add_argument("--profile", choices=PROFILES, default="ci",
                        help="hypothesis profile: ci (deterministic, bounded, ~20 s on 2 cores) or thorough "
                             "(random, 16x the examples, ~2.5 min, for local runs); default ci")
    parser.add_argument("-k", dest="keyword", metavar="EXPR", default=None,
                        help="only run tests matching this pytest -k expression (e.g. 'attention or model')")
    parser.add_argument("--report", metavar="FILE", default=None,
                        help="also write the table's numbers as JSON to FILE")
    parser.add_argument("--tests", metavar="DIR", default=None,
                        help="the parity_tests folder to run (default: the one in this source checkout)")
    parser.add_argument("-x", "--exitfirst", action="store_true", help="stop at the first failing test")
    parser.add_argument("-v", "--verbose", action="store_true", help="pytest prints one line per test")
    parser.set_defaults(func=run)


def default_tests_dir() -> Path:
    """parity_tests/ beside the gpt2cli package: present in a source checkout (editable install)."""
    return Path(__file__).resolve().parents[2] / "parity_tests"


def locate_tests(explicit: str | None) -> Path:
    folder = Path(explicit).expanduser().resolve() if explicit else default_tests_dir()
    if not (folder / "conftest.py").is_file():
        if explicit:
            raise UserError(f"no parity tests in {folder} (no conftest.py); pass --tests the parity_tests "
                            f"folder of a gpt2-twice source checkout")
        raise UserError(f"the parity tests are not installed with the package (looked in {folder}); they live "
                        f"in the source checkout: clone the repository and `pip install -e '.[test]'`, or pass "
                        f"--tests /path/to/checkout/parity_tests")
    return folder


def check_test_tools() -> None:
    import importlib.util

    missing = [name for name in ("pytest", "hypothesis") if importlib.util.find_spec(name) is None]
    if missing:
        raise UserError(f"{' and '.join(missing)} not installed; install the test extra: pip install -e '.[test]'")


def pytest_command(tests_dir: Path, args) -> list[str]:
    import sys

    command = [sys.executable, "-m", "pytest", str(tests_dir), "-p", "no:cacheprovider", "-rfE"]
    command.append("-v" if args.verbose else "-q")
    if args.keyword:
        command += ["-k", args.keyword]
    if args.exitfirst:
        command.append("-x")
    return command


def pytest_environment(tests_dir: Path, profile: str, report_path: Path) -> dict:
    """PYTHONPATH puts the checkout holding the tests first, then the npgpt this command runs with."""
    import os

    import npgpt

    paths = [str(tests_dir.parent), str(Path(npgpt.__file__).resolve().parents[1])]
    if os.environ.get("PYTHONPATH"):
        paths.append(os.environ["PYTHONPATH"])
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "HYPOTHESIS_PROFILE": profile,
            "PARITY_REPORT": str(report_path)}


def _error(value) -> str:
    return "-" if value is None else f"{value:.1e}"


def format_table(report: dict) -> str:
    """The per-component table of a PARITY_REPORT payload ({"profile", "components": {name: entry}})."""
    header = ["component", "examples", "checks"]
    for dtype in DTYPES:
        short = dtype.replace("float", "f")
        header += [f"max abs {short}", f"max rel {short}"]
    header += ["worst (share of its tolerance)", "result"]
    rows = []
    for name, entry in report["components"].items():
        tests = entry["passed"] + entry["failed"]
        if not tests and not entry["checks"]:
            continue                              # a module name seen without a test run (e.g. collection only)
        row = [name, str(entry["examples"]), str(entry["checks"])]
        for dtype in DTYPES:
            row += [_error(entry["max_abs"].get(dtype)), _error(entry["max_rel"].get(dtype))]
        worst = f"{entry['worst']} {entry['worst_share']:.0%}" if entry["worst"] else "-"
        result = f"passed {entry['passed']}/{tests}" if not entry["failed"] else f"FAILED {entry['failed']}/{tests}"
        rows.append(row + [worst, result])
    widths = [max(len(cells[i]) for cells in [header] + rows) for i in range(len(header))]
    align = ["<"] + [">"] * (len(header) - 3) + ["<", "<"]
    lines = ["  ".join(f"{cell:{a}{w}}" for cell, a, w in zip(cells, align, widths)) for cells in [header] + rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def summary_lines(report: dict) -> list[str]:
    components = report["components"].values()
    passed = sum(entry["passed"] for entry in components)
    failed = sum(entry["failed"] for entry in components)
    caught = sum(entry["planted_caught"] for entry in components)
    profile = report["profile"]
    kind = "deterministic: derandomized examples" if profile == "ci" else "random examples, 16x as many"
    lines = [f"profile {profile} ({kind}): {passed} tests passed, {failed} failed"]
    if caught:
        lines.append(f"planted bugs caught: {caught} (the same checks reject deliberately broken backwards: "
                     f"test_bites.py and each module's own)")
    lines.extend(tolerance_lines(report.get("tolerances", DEFAULT_TOLERANCES)))
    return lines


# What parity_tests/conftest.py uses (RTOL, TORCH_ERROR_FACTOR); a report states its own, these are for older ones.
DEFAULT_TOLERANCES = {"float64": 1e-10, "float32": 1e-5, "torch_error_factor": 5.0}


def tolerance_lines(tolerances: dict) -> list[str]:
    """The budget each check had, as docs/parity.md "Tolerances and why" states it: rtol alone is not all of it."""
    return [f"tolerances (docs/parity.md, \"Tolerances and why\"): |numpy - torch| <= rtol x magnitude, rtol "
            f"{tolerances['float64']:g} in float64, {tolerances['float32']:g} in float32, where float32 checks also "
            f"allow {tolerances['torch_error_factor']:g} x torch's own float32 error (its distance from torch run "
            f"in float64)",
            "  magnitude: the tensor's largest entry, at least 1e-3 of the largest tensor's; results that cancel "
            "are measured against their terms (float32 attention: 3% of them)",
            "  'worst' is the check that used most of its tolerance",
            "  why a float32 'max abs' can be large (1e+03 and more) and still fine: float32 keeps about 7 "
            "significant digits, so a tensor whose entries reach 1e+09 carries rounding of about 1e+02 in each; "
            "errors are judged relative to the magnitude (the 'max rel' columns, against rtol), 'max abs' is "
            "shown for reference only"]


def run(args) -> int:
    import json
    import subprocess
    import tempfile

    from gptcore.fileio import atomic_write_json

    tests_dir = locate_tests(args.tests)
    check_test_tools()
    with tempfile.TemporaryDirectory(prefix="gpt2-parity-") as scratch:
        report_path = Path(scratch) / "report.json"
        completed = subprocess.run(pytest_command(tests_dir, args), cwd=tests_dir.parent,
                                   env=pytest_environment(tests_dir, args.profile, report_path))
        if completed.returncode == 5:
            raise UserError(f"no parity test matches -k {args.keyword!r}; the components are the test modules "
                            f"in {tests_dir} (e.g. -k attention, -k 'model or block')")
        if not report_path.is_file():
            raise UserError(f"pytest stopped before the parity tests ran (exit code {completed.returncode}); "
                            f"see its output above")
        report = json.loads(report_path.read_text())
    print()
    print(format_table(report))
    for line in summary_lines(report):
        print(line)
    failed = completed.returncode != 0 or any(entry["failed"] for entry in report["components"].values())
    if args.report:
        atomic_write_json(args.report, {**report, "pytest_exit_code": completed.returncode, "passed": not failed})
        print(f"report: {args.report}")
    return 1 if failed else 0
