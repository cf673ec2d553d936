"""`gpt2 demo`: the README's first command, on a few steps."""
import json

import pytest

from gpt2cli.main import main


def test_demo_trains_both_backends_in_lockstep_and_generates(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(["demo", "--steps", "4", "--print-every", "2", "--eval-interval", "2", "--batch-size", "2",
                 "--context-length", "16", "--max-new-tokens", "3", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "NumPy loss" in printed and "torch loss" in printed
    assert printed.count("identical tokens") == 2          # greedy and sampled agree across backends
    summary = json.loads((out / "demo.json").read_text())
    assert [e["step"] for e in summary["history"]] == [1, 2, 3, 4]
    assert summary["dtype"] == "float64"                     # the default: the proof, not the fast path
    assert summary["max_abs_diff"] < 1e-10
    assert summary["history"][-1]["numpy_loss"] < summary["history"][0]["numpy_loss"]
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"


def test_demo_float32_agrees_to_float32_rounding(tmp_path):
    out = tmp_path / "demo32"
    assert main(["demo", "--steps", "3", "--dtype", "float32", "--batch-size", "2", "--context-length", "8",
                 "--max-new-tokens", "0", "--out", str(out)]) == 0
    summary = json.loads((out / "demo.json").read_text())
    assert summary["dtype"] == "float32"
    assert summary["max_abs_diff"] < 1e-4                    # float32 rounding only, over 3 steps


def test_demo_rejects_a_context_longer_than_the_preset(tmp_path, capsys):
    assert main(["demo", "--context-length", "65", "--out", str(tmp_path)]) == 2
    assert "exceeds" in capsys.readouterr().err
