"""benchmarks/gpu.sh (issue 17): no test depends on a GPU. Here: the script refuses clearly where CUDA is
missing, every step of it runs on the CPU with tiny models (--smoke), and the MFU arithmetic and the table are
checked on numbers worked out by hand."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import gpu_bench
from gptcore.config import get_config

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_gpu_script_refuses_without_cuda(tmp_path):
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh"), str(tmp_path / "out")], capture_output=True,
                          text=True, timeout=300, env=dict(os.environ))
    assert done.returncode == 2
    assert "no CUDA GPU here" in done.stderr and "torch.cuda.is_available() is False" in done.stderr
    assert not (tmp_path / "out").exists()
    assert gpu_bench.main(["--out", str(tmp_path / "out2")]) == 2          # the python side refuses too


def test_mfu_is_model_flops_over_time_over_peak():
    # 787.7 GFLOP per step (124M, B=4, T=256; docs/benchmarks.md) in 2 ms on a 989 TFLOP/s GPU
    flops = gpu_bench.model_flops(get_config("gpt2-small"), 4, 256, train=True)
    assert flops == pytest.approx(787.7e9, rel=1e-3)
    assert gpu_bench.mfu(flops, 2e-3, 989e12) == pytest.approx(787.7e9 / 2e-3 / 989e12, rel=1e-3)
    assert gpu_bench.mfu(flops, 2e-3, None) is None


def test_gpu_table_from_a_result():
    result = {"gpu": "NVIDIA H100 80GB HBM3", "peak_tflops": 989.0, "torch": "2.x", "cuda": "12.4", "platform": "Linux",
              "train": [{"variant": "compiled", "batch_size": 32, "seq_len": 1024, "tokens_per_s": 500000.0,
                         "step_s_median": 0.0655, "mfu": 0.412}],
              "decode": [{"engine": "torchgpt GPT-2 124M (fp32)", "new_tokens": 100, "tokens_per_s": 250.0}]}
    table = gpu_bench.markdown(result)
    assert "| compiled | 32 | 1024 | 500,000 | 65.5 ms | 41.2% |" in table
    assert "| torchgpt GPT-2 124M (fp32) | 100 | 250.0 |" in table


def test_smoke_run_goes_through_every_step_on_the_cpu(tmp_path):
    """`--smoke`: the training rows (bf16 autocast, SDPA, AdamW, synchronised timing) and the decoding rows of
    torchgpt's GPT-2 and Llama run here, in a fresh process as gpu.sh would start it, and write both files."""
    done = subprocess.run([sys.executable, "-m", "benchmarks.gpu_bench", "--smoke", "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "gpu.json").read_text())
    assert result["smoke"] is True and result["peak_tflops"] is None
    [train] = result["train"]
    assert (train["variant"], train["batch_size"], train["seq_len"]) == ("eager", 2, 32)
    assert train["tokens_per_s"] == pytest.approx(2 * 32 / train["step_s_median"]) and train["mfu"] is None
    assert [row["engine"] for row in result["decode"]] == ["torchgpt tiny (fp32)", "torchgpt tiny-llama (fp32)"]
    assert all(row["tokens_per_s"] > 0 and row["new_tokens"] == 4 for row in result["decode"])
    table = (tmp_path / "gpu.md").read_text()
    assert "not claims" in table and "| torchgpt tiny-llama (fp32) | 4 |" in table and table.strip() in done.stdout
