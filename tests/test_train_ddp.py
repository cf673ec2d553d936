"""DistributedDataParallel on CPU (gloo, 2 processes through `gpt2 train --nproc 2`, i.e. torchrun
--standalone, whose rendezvous binds port 0): the same losses as one process with the same global batch,
one gradient all-reduce per optimizer step (no_sync for the other micro-batches), its checkpoint resumes in
one process, and a Ctrl-C stops every process at a checkpoint with one message from rank 0."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from gpt2cli.main import main
from gptcore.fileio import read_jsonl
from gptcore.formats.runs import checkpoint_path, latest_checkpoint
from torchgpt.distributed import COUNT_REDUCES_ENV, free_port

pytestmark = pytest.mark.usefixtures("one_torch_thread")
REPO_ROOT = Path(__file__).resolve().parent.parent
# drop_rate 0: the processes draw their own dropout masks, which one process cannot reproduce.
SMALL = ["--model", "tiny", "--emb-dim", "8", "--n-heads", "2", "--n-layers", "1", "--context-length", "16",
         "--drop-rate", "0", "--device", "cpu", "--dtype", "float32", "--eval-batches", "1", "--quiet"]
COMMON = [*SMALL, "--max-steps", "4", "--eval-interval", "2", "--checkpoint-interval", "2", "--keep-checkpoints", "0"]


def gpt2_command(*args):
    return [sys.executable, "-m", "gpt2cli", "train", *args]


def environment(**extra):
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), **extra}


def test_two_gloo_processes_train_like_one_and_their_checkpoint_resumes_in_one(tmp_path):
    cache = ["--token-cache", str(tmp_path / "tokens")]
    ddp_run, single_run, resumed_run = tmp_path / "ddp", tmp_path / "single", tmp_path / "resumed"
    # 2 processes x micro-batch 2 x 2 accumulation steps = a global batch of 8 windows per step
    loud = [arg for arg in COMMON if arg != "--quiet"]
    result = subprocess.run(gpt2_command(*loud, *cache, "--batch-size", "2", "--grad-accum", "2", "--nproc", "2",
                                         "--out", str(ddp_run)),
                            cwd=REPO_ROOT, env=environment(**{COUNT_REDUCES_ENV: "1"}), capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # rank 0 only, once each: the evaluation lines of steps 2 and 4, then the summary
    assert [line.split(",")[0] for line in result.stdout.splitlines()] == \
        ["step 2/4", "step 4/4", "torch on cpu x2: steps 1..4"]

    assert main(["train", *COMMON, *cache, "--batch-size", "4", "--grad-accum", "2", "--out", str(single_run)]) == 0
    # The DDP run's step-2 checkpoint, continued by one process into a new folder: --grad-accum 4 keeps
    # the global batch of 8.
    assert main(["train", "--resume", str(checkpoint_path(ddp_run, 2)), "--out", str(resumed_run), "--quiet"]) == 0

    ddp, single = read_jsonl(ddp_run / "metrics.jsonl"), read_jsonl(single_run / "metrics.jsonl")
    assert [r["step"] for r in ddp] == [1, 2, 3, 4]
    # no_sync: the first micro-batch's backward keeps its gradients local; only the last one all-reduces
    # (without no_sync this is 2; the average would be the same, so the losses cannot tell)
    assert [r["grad_reduces"] for r in ddp] == [1, 1, 1, 1]
    assert [r["tokens_seen"] for r in ddp] == [r["tokens_seen"] for r in single] == [128, 256, 384, 512]
    for key in ("train_loss", "grad_norm"):
        np.testing.assert_allclose([r[key] for r in ddp], [r[key] for r in single], rtol=1e-5)
    np.testing.assert_allclose([r["val_loss"] for r in ddp if "val_loss" in r],
                               [r["val_loss"] for r in single if "val_loss" in r], rtol=1e-5)
    resumed = read_jsonl(resumed_run / "metrics.jsonl")
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]          # a branch starts with the run's metrics (issue 19)
    assert resumed[:2] == ddp[:2]
    np.testing.assert_allclose([r["train_loss"] for r in resumed[2:]], [r["train_loss"] for r in single[2:]],
                               rtol=1e-5)
    assert sorted(p.name for p in (ddp_run / "checkpoints").iterdir()) == ["step-00000002", "step-00000004"]


def test_ctrl_c_stops_every_process_at_a_checkpoint_with_one_message(tmp_path):
    run = tmp_path / "run"
    # --val-fraction 0.001: too little validation text for a window, so every process meets the same note
    command = gpt2_command(*SMALL, "--token-cache", str(tmp_path / "tokens"), "--batch-size", "2",
                           "--val-fraction", "0.001", "--max-steps", "100000", "--nproc", "2", "--out", str(run))
    # A session of its own, as a shell gives a foreground job: the Ctrl-C goes to its process group.
    launcher = subprocess.Popen(command, cwd=REPO_ROOT, env=environment(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not ((run / "metrics.jsonl").is_file() and (run / "metrics.jsonl").read_text()):
            assert launcher.poll() is None and time.monotonic() < deadline, launcher.communicate()
            time.sleep(0.1)
        os.killpg(launcher.pid, signal.SIGINT)
        out, err = launcher.communicate(timeout=120)
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
    assert launcher.returncode == 130, err
    last_step = read_jsonl(run / "metrics.jsonl")[-1]["step"]
    saved = latest_checkpoint(run)
    assert saved == checkpoint_path(run, last_step)
    assert err.count("note: the validation text has") == 1           # rank 0 only
    assert err.count("gpt2 train: stopped at step") == 1 and f"saved to {saved};" in err
    for noise in ("Traceback", "SignalException", "None", "death signal", "interrupted"):
        assert noise not in err, err


def test_launcher_strips_nproc_and_uses_a_free_port():
    from gpt2cli.commands.train import strip_nproc
    from torchgpt.distributed import torchrun_command
    assert strip_nproc(["train", "--nproc", "2", "--out", "x", "--nproc=3"]) == ["train", "--out", "x"]
    command = torchrun_command(2, ["train", "--out", "x"])
    assert command[1:4] == ["-m", "torchgpt.distributed", "--nproc_per_node=2"] and "--standalone" in command
    assert command[-5:] == ["-m", "gpt2cli", "train", "--out", "x"]
    port = free_port()
    assert f"--master_port={port}" in torchrun_command(2, ["train"], port=port)
