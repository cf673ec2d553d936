"""DistributedDataParallel on CPU (gloo, 2 processes through `gpt2 train --nproc 2`, i.e. torchrun
--standalone, whose rendezvous binds port 0): the same losses as one process with the same global batch,
and its checkpoint resumes in one process."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gpt2cli.main import main
from npgpt.fileio import read_jsonl
from npgpt.runs import checkpoint_path
from torchgpt.distributed import free_port

pytestmark = pytest.mark.usefixtures("one_torch_thread")
REPO_ROOT = Path(__file__).resolve().parent.parent
# drop_rate 0: the processes draw their own dropout masks, which one process cannot reproduce.
COMMON = ["--model", "tiny", "--emb-dim", "8", "--n-heads", "2", "--n-layers", "1", "--context-length", "16",
          "--drop-rate", "0", "--device", "cpu", "--dtype", "float32", "--max-steps", "4", "--eval-interval", "2",
          "--eval-batches", "1", "--checkpoint-interval", "2", "--keep-checkpoints", "0", "--quiet"]


def test_two_gloo_processes_train_like_one_and_their_checkpoint_resumes_in_one(tmp_path):
    cache = ["--token-cache", str(tmp_path / "tokens")]
    ddp_run, single_run, resumed_run = tmp_path / "ddp", tmp_path / "single", tmp_path / "resumed"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    result = subprocess.run([sys.executable, "-m", "gpt2cli", "train", *COMMON, *cache, "--batch-size", "2",
                             "--nproc", "2", "--out", str(ddp_run)],
                            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "x2" in result.stdout                             # the summary line comes from rank 0 only, once
    assert result.stdout.count("tokens/s") == 1

    assert main(["train", *COMMON, *cache, "--batch-size", "4", "--out", str(single_run)]) == 0
    # The DDP run's step-2 checkpoint, continued by one process into a new folder: --grad-accum 2 keeps
    # the global batch of 4 (2 per process x 2 processes).
    assert main(["train", "--resume", str(checkpoint_path(ddp_run, 2)), "--out", str(resumed_run), "--quiet"]) == 0

    ddp, single = read_jsonl(ddp_run / "metrics.jsonl"), read_jsonl(single_run / "metrics.jsonl")
    assert [r["step"] for r in ddp] == [1, 2, 3, 4]
    assert [r["tokens_seen"] for r in ddp] == [r["tokens_seen"] for r in single]
    for key in ("train_loss", "grad_norm"):
        np.testing.assert_allclose([r[key] for r in ddp], [r[key] for r in single], rtol=1e-5)
    np.testing.assert_allclose([r["val_loss"] for r in ddp if "val_loss" in r],
                               [r["val_loss"] for r in single if "val_loss" in r], rtol=1e-5)
    resumed = read_jsonl(resumed_run / "metrics.jsonl")
    assert [r["step"] for r in resumed] == [3, 4]
    np.testing.assert_allclose([r["train_loss"] for r in resumed], [r["train_loss"] for r in single[2:]], rtol=1e-5)
    assert sorted(p.name for p in (ddp_run / "checkpoints").iterdir()) == ["step-00000002", "step-00000004"]


def test_launcher_strips_nproc_and_uses_a_free_port():
    from gpt2cli.commands.train import strip_nproc
    from torchgpt.distributed import torchrun_command
    assert strip_nproc(["train", "--nproc", "2", "--out", "x", "--nproc=3"]) == ["train", "--out", "x"]
    command = torchrun_command(2, ["train", "--out", "x"])
    assert command[1:4] == ["-m", "torch.distributed.run", "--nproc_per_node=2"] and "--standalone" in command
    assert command[-5:] == ["-m", "gpt2cli", "train", "--out", "x"]
    port = free_port()
    assert f"--master_port={port}" in torchrun_command(2, ["train"], port=port)
