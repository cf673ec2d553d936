"""benchmarks/plain_script.py (issue 17): the benchmark a user's own script sees. Its --quick mode runs here
in a fresh process, as a user runs it, so the script cannot rot; no speed is asserted (a loaded machine's
numbers are not the code's)."""
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_quick_plain_script_writes_markdown_and_json_with_the_kernel_header(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "plain_script.py"), "--quick", "--no-hf",
                           "--out", str(tmp_path)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "plain_script.json").read_text())
    assert result["settings"]["quick"] is True and result["settings"]["model"] == "tiny"
    machine = result["machine"]
    assert machine["malloc_keeps_freed_memory"] is (os.environ.get("NPGPT_KEEP_FREED_MEMORY", "1") == "1" and
                                                    sys.platform.startswith("linux"))
    assert set(machine["blas_kernel"]["environment"]) == {"OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"}
    assert machine["blas_kernel"]["environment"]["OPENBLAS_CORETYPE"] == os.environ.get("OPENBLAS_CORETYPE")
    assert machine["blas_kernel"]["blas"]
    for task in ("infer", "train_step"):
        times = result[task]["times_s"]
        assert set(times) == {"numpy", "torch"} and all(len(t) == 2 and min(t) > 0 for t in times.values())
        assert result["ratios"][f"{task} numpy/torch time"] > 0
        assert result["ratios"][f"{task} numpy/hf time"] is None                   # --no-hf
    decode = result["decode"]
    assert set(decode["median_tokens_per_s"]) == {"numpy", "numpy_decoding_layout", "torchgpt"}
    assert all(decode["same_tokens_as_numpy"].values())                          # same weights, same greedy tokens
    floor = result["floor"]                                                      # what the machine allows
    assert floor["gemm"]["best_gflops"] == max(rate[3] for rate in floor["gemm"]["rates"])
    for task, target in (("infer", 0.8), ("train_step", 0.85)):
        row = floor["tasks"][task]
        assert row["target"] == target and row["floor_s"] == pytest.approx(row["min_gflop"] / floor["gemm"]["best_gflops"])
        assert row["lowest_ratio"] == pytest.approx(row["floor_s"] / statistics.median(result[task]["times_s"]["torch"]))
        assert row["target_reachable"] is (row["lowest_ratio"] <= target)
    markdown = (tmp_path / "plain_script.md").read_text()
    assert "| infer | " in markdown.split("What the machine allows")[1]
    assert "not claims" in markdown and "NumPy's BLAS kernel: " in markdown and "| infer |" in markdown
    assert markdown.strip() in done.stdout


@pytest.mark.parametrize("argv, message", [(["--repeats", "0"], "--repeats must be at least 1")])
def test_plain_script_rejects_bad_settings(tmp_path, argv, message):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "plain_script.py"), *argv],
                          cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 2 and message in done.stderr


@pytest.mark.slow
def test_quick_plain_script_with_transformers(tmp_path):
    """The hf column: transformers reads npgpt's weights (saved as a Hugging Face folder) and decodes the same
    greedy tokens (importing transformers takes ~5-12 s here, hence slow)."""
    pytest.importorskip("transformers")
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "plain_script.py"), "--quick", "--hf",
                           "--out", str(tmp_path)], cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "plain_script.json").read_text())
    for task in ("infer", "train_step"):
        assert set(result[task]["times_s"]) == {"numpy", "torch", "hf"}
        assert result["ratios"][f"{task} numpy/hf time"] > 0
    assert result["decode"]["same_tokens_as_numpy"] == {"numpy": True, "numpy_decoding_layout": True,
                                                        "torchgpt": True, "hf": True}
    assert result["ratios"]["decode numpy speed-up over hf"] > 0
