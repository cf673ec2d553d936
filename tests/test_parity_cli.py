"""`gpt2 parity`: runs parity_tests with pytest in a subprocess and prints the per-component table."""
import json
import shutil
from pathlib import Path

from gpt2cli.commands import parity
from gpt2cli.main import main

REPO_ROOT = Path(__file__).resolve().parent.parent

FINE = '''
from parity_tests.conftest import assert_close, record_example

def test_fine():
    record_example()
    assert_close([1.0, 2.0], [1.0, 2.0 + 1e-14], name="fine value")
'''
BROKEN = '''
import numpy as np
from parity_tests.conftest import assert_close, record_example

def test_broken():
    record_example()
    assert_close(np.ones(3), np.ones(3) * (1 + 1e-3), name="off by 1e-3")
'''


def tiny_suite(tmp_path, broken=True):
    """A parity_tests folder with the real conftest and one passing (and one failing) component."""
    folder = tmp_path / "checkout" / "parity_tests"
    folder.mkdir(parents=True)
    (folder / "__init__.py").write_text("")
    shutil.copy(REPO_ROOT / "parity_tests" / "conftest.py", folder / "conftest.py")
    (folder / "test_fine.py").write_text(FINE)
    if broken:
        (folder / "test_broken.py").write_text(BROKEN)
    return folder


def table_row(output, component):
    rows = [line for line in output.splitlines() if line.split()[:1] == [component]]
    assert len(rows) == 1, output
    return rows[0]


def test_runs_the_real_suite_and_prints_the_table(tmp_path, capfd):
    report = tmp_path / "out" / "parity.json"
    assert main(["parity", "-k", "test_softmax", "--report", str(report)]) == 0
    out = capfd.readouterr().out
    row = table_row(out, "softmax")
    assert row.endswith("passed 1/1") and "softmax dx (float" in row                  # worst tensor named
    assert "profile ci (deterministic" in out
    saved = json.loads(report.read_text())
    assert saved["passed"] is True and saved["pytest_exit_code"] == 0 and saved["profile"] == "ci"
    assert saved["tolerances"] == {"float64": 1e-10, "float32": 1e-5, "torch_error_factor": 5.0}
    assert "float32 checks also allow 5 x torch's own float32 error" in out
    entry = saved["components"]["softmax"]
    assert entry["examples"] == 40 and entry["checks"] == 3 * 40                  # budget(40), 3 checks each
    assert 0 < entry["max_rel"]["float64"] < 1e-10 and 0 < entry["max_rel"]["float32"] < 1e-5


def test_a_failing_component_fails_the_command(tmp_path, capfd):
    assert main(["parity", "--tests", str(tiny_suite(tmp_path)), "--profile", "thorough"]) == 1
    out = capfd.readouterr().out
    assert "FAILED 1/1" in table_row(out, "broken") and "off by 1e-3" in table_row(out, "broken")
    assert "passed 1/1" in table_row(out, "fine")
    assert "1 tests passed, 1 failed" in out and "profile thorough" in out


def test_keyword_passthrough_and_no_match(tmp_path, capfd):
    suite = tiny_suite(tmp_path)
    assert main(["parity", "--tests", str(suite), "-k", "fine"]) == 0
    assert "broken" not in capfd.readouterr().out.split("component")[-1]
    assert main(["parity", "--tests", str(suite), "-k", "no_such_component"]) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert err[-1].startswith("gpt2 parity: error: no parity test matches -k 'no_such_component'")


def test_missing_tests_folder_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    assert main(["parity", "--tests", str(tmp_path / "nowhere")]) == 2
    assert "no parity tests in" in capsys.readouterr().err
    # a non-editable install: the package sits in site-packages, the tests stayed in the checkout
    monkeypatch.setattr(parity, "default_tests_dir", lambda: tmp_path / "site-packages" / "parity_tests")
    assert main(["parity"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "not installed with the package" in err and "--tests" in err and "pip install -e" in err


def test_default_location_is_this_checkout():
    assert parity.default_tests_dir() == REPO_ROOT / "parity_tests"


def test_table_marks_failures_and_skips_untested_modules():
    entry = {"checks": 4, "examples": 2, "passed": 1, "failed": 1, "planted_caught": 0, "worst": "d x (float32)",
             "worst_share": 3.5, "max_abs": {"float32": 2e-3}, "max_rel": {"float32": 1e-4}}
    unused = {**entry, "checks": 0, "passed": 0, "failed": 0}
    table = parity.format_table({"profile": "ci", "components": {"model": entry, "helpers": unused}})
    assert "helpers" not in table
    row = table_row(table, "model")
    assert "FAILED 1/2" in row and "d x (float32) 350%" in row and "1.0e-04" in row and " - " in row


def test_summary_states_the_whole_budget():
    """Not just rtol: the torch-error allowance and the magnitude floors of docs/parity.md, from the report."""
    report = {"profile": "ci", "components": {}, "tolerances": {"float64": 1e-10, "float32": 1e-5,
                                                                "torch_error_factor": 3.0}}
    text = "\n".join(parity.summary_lines(report))
    assert "rtol 1e-10 in float64, 1e-05 in float32" in text and "allow 3 x torch's own float32 error" in text
    assert "at least 1e-3 of the largest tensor's" in text and "measured against their terms" in text
    del report["tolerances"]                          # a report written before tolerances were recorded
    assert "allow 5 x torch's own" in "\n".join(parity.summary_lines(report))
