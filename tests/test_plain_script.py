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

from npgpt.speed import blas_threads

ROOT = Path(__file__).resolve().parent.parent


def test_quick_plain_script_writes_markdown_and_json_with_the_kernel_header(tmp_path):
    # as a user's shell runs it: without the OPENBLAS_THREAD_TIMEOUT npgpt set in this test process, so the
    # script (NumPy imported first) has npgpt restart OpenBLAS's threads, and its header says so
    env = {k: v for k, v in os.environ.items() if k != blas_threads.ENV} | {"PYTHONPATH": str(ROOT)}
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
    assert machine["openblas_thread_timeout"] == blas_threads.SHORT_TIMEOUT
    assert machine["openblas_thread_timeout_how"] == blas_threads.RESTARTED
    for task in ("infer", "train_step"):
        times = result[task]["times_s"]
        assert set(times) == {"numpy", "torch"} and all(len(t) == 2 and min(t) > 0 for t in times.values())
        assert result["ratios"][f"{task} numpy/torch time"] > 0
        assert result["ratios"][f"{task} numpy/hf time"] is None                   # --no-hf
    decode = result["decode"]
    assert set(decode["median_tokens_per_s"]) == {"numpy", "numpy_torch_layout", "torchgpt"}
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
    assert f"OPENBLAS_THREAD_TIMEOUT=4 ({blas_threads.RESTARTED})" in markdown
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
    assert result["decode"]["same_tokens_as_numpy"] == {"numpy": True, "numpy_torch_layout": True,
                                                        "torchgpt": True, "hf": True}
    assert result["ratios"]["decode numpy speed-up over hf"] > 0


def test_machine_floor_arithmetic_with_a_fixed_gemm_rate(monkeypatch):
    """The floor table from a known GEMM rate and known times: FLOPs of benchmarks.cases, B*T rows in every
    probed linear GEMM, the ratio over torch (not NumPy), reachable only when that ratio is under the target,
    and the markdown cells equal to the numbers."""
    from benchmarks import cases, harness, plain_script
    from gptcore.config import get_config

    config, B, T = get_config("tiny"), 2, 16
    probed = []

    def fixed_rate(shapes, min_time, repeats=3):
        probed.extend(shapes)
        return {"best_gflops": 100.0, "best_shape": [1, 1, 1], "rates": [[1, 1, 1, 100.0]]}

    monkeypatch.setattr(harness, "best_numpy_gemm_rate", fixed_rate)
    infer_gflop = cases.min_matmul_flops(config, B, T, train=False) / 1e9
    train_gflop = cases.min_matmul_flops(config, B, T, train=True) / 1e9
    # infer: floor / torch just above the target (unreachable) while floor / numpy is below it; train: reachable
    infer_torch = infer_gflop / 100.0 / 0.81
    train_torch = train_gflop / 100.0 / 0.5
    result = {"infer": {"times_s": {"numpy": [infer_torch * 2, infer_torch * 2], "torch": [infer_torch] * 2}},
              "train_step": {"times_s": {"numpy": [train_torch, train_torch * 3, train_torch * 2],
                                         "torch": [train_torch] * 3}}}
    floor = plain_script.machine_floor(config, B, T, result, quick=True)
    assert set(cases.linear_gemm_shapes(config, B * T)) <= set(probed)
    infer, train = floor["tasks"]["infer"], floor["tasks"]["train_step"]
    assert infer["min_gflop"] == pytest.approx(infer_gflop) and train["min_gflop"] == pytest.approx(3 * infer_gflop)
    assert infer["lowest_ratio"] == pytest.approx(0.81) and infer["target_reachable"] is False
    assert train["lowest_ratio"] == pytest.approx(0.5) and train["target_reachable"] is True
    assert infer["numpy_s"] == pytest.approx(infer_torch * 2) and train["numpy_s"] == pytest.approx(train_torch * 2)
    assert infer["numpy_share_of_floor"] == pytest.approx(0.81 / 2)
    row = next(line for line in plain_script.floor_table(floor) if line.startswith("| infer |"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells == ["infer", f"{infer_gflop:.1f}", f"{infer['floor_s']:.3f} s", f"{infer_torch:.3f} s", "0.810",
                     "0.8", "no", f"{infer_torch * 2:.3f} s", "40%"]
