"""`gpt2 train`: the run folder it writes, exact resume through the CLI (torch and NumPy), --init-from, errors."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from gpt2cli.main import main
from gptcore.formats.checkpoint import load_checkpoint
from gptcore.fileio import read_jsonl
from gptcore.formats.runs import latest_checkpoint, list_checkpoints
from gptcore.formats.weights import load_weights
from tests.fake_checkpoints import openai_hparams, openai_to_hf_tensors, random_openai_tensors, write_hf_checkpoint

# A GPT-2-vocabulary model small enough for seconds per run: 50257 x 8 embedding, one block.
SMALL = ["--model", "tiny", "--emb-dim", "8", "--n-heads", "2", "--n-layers", "1", "--context-length", "16",
         "--batch-size", "2", "--eval-batches", "1", "--device", "cpu", "--quiet"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def train(tmp_path, *args):
    return main(["train", *SMALL, "--token-cache", str(tmp_path / "tokens"), *args])


def train_losses(run_dir):
    return [r["train_loss"] for r in read_jsonl(run_dir / "metrics.jsonl")]


@pytest.mark.parametrize("backend", ["torch", "numpy"])
def test_run_folder_and_exact_resume_through_the_cli(tmp_path, capsys, backend):
    run, whole = tmp_path / "run", tmp_path / "whole"
    common = ["--backend", backend, "--lr-decay-steps", "6", "--eval-interval", "2", "--checkpoint-interval", "2"]
    assert train(tmp_path, *common, "--out", str(run), "--max-steps", "4") == 0
    summary = capsys.readouterr().out
    assert "tokens/s" in summary and f"{backend} on cpu: steps 1..4" in summary
    assert "tokens seen" not in summary                          # --quiet: no evaluation lines

    records = read_jsonl(run / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    for key in ("train_loss", "train_perplexity", "lr", "tokens_seen", "tokens_per_sec", "epoch"):
        assert all(key in r for r in records)
    assert [("val_loss" in r) for r in records] == [False, True, False, True]
    assert records[1]["val_perplexity"] == pytest.approx(np.exp(records[1]["val_loss"]))
    assert records[-1]["tokens_seen"] == 4 * 2 * 16
    assert (run / "metrics.csv").read_text().splitlines()[0].startswith("step,epoch,train_loss")
    assert (run / "loss.png").stat().st_size > 1000
    config = json.loads((run / "config.json").read_text())
    assert config["backend"] == backend and config["model"]["emb_dim"] == 8 and config["options"]["max_steps"] == 4
    assert [step for step, _ in list_checkpoints(run)] == [2, 4]
    state = load_checkpoint(latest_checkpoint(run))[2]
    assert state["step"] == 4 and {"optimizer", "scheduler", "rng", "data"} <= set(state)

    # --resume RUN_DIR --max-steps 6: the same folder, options from its config.json, metrics appended
    assert main(["train", "--resume", str(run), "--max-steps", "6", "--quiet"]) == 0
    assert [r["step"] for r in read_jsonl(run / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]
    assert len((run / "metrics.csv").read_text().splitlines()) == 7
    assert train(tmp_path, *common, "--out", str(whole), "--max-steps", "6") == 0
    assert train_losses(run) == train_losses(whole)


@pytest.mark.parametrize("saved", ["options", "settings-only"])
def test_a_checkpoint_copied_out_of_its_run_resumes_exactly(tmp_path, saved):
    """No run config.json above the checkpoint: its own saved options / training settings (not the defaults)
    set lr, batch and schedule. "settings-only" is a checkpoint written before the options were saved in it."""
    import shutil
    run, copy, resumed, whole = (tmp_path / name for name in ("run", "copy", "resumed", "whole"))
    custom = ["--lr", "3e-3", "--batch-size", "3", "--warmup-steps", "1", "--lr-decay-steps", "5",
              "--eval-interval", "10"]
    assert train(tmp_path, *custom, "--out", str(run), "--max-steps", "2") == 0
    shutil.copytree(latest_checkpoint(run), copy)
    if saved == "settings-only":
        header = json.loads((copy / "config.json").read_text())
        header["metadata"] = {"run": header["metadata"]["run"]}
        (copy / "config.json").write_text(json.dumps(header))
    shutil.rmtree(run / "checkpoints")                          # nothing to find the run by
    assert main(["train", "--resume", str(copy), "--out", str(resumed), "--max-steps", "4", "--quiet",
                 "--token-cache", str(tmp_path / "tokens")]) == 0
    assert train(tmp_path, *custom, "--out", str(whole), "--max-steps", "4") == 0
    assert train_losses(run) + train_losses(resumed) == train_losses(whole)
    options = json.loads((resumed / "config.json").read_text())["options"]
    assert (options["lr"], options["batch_size"], options["warmup_steps"]) == (3e-3, 3, 1)


@pytest.mark.parametrize("backend", ["torch", "numpy"])
def test_each_evaluation_writes_one_console_line(tmp_path, capsys, backend):
    loud = [arg for arg in SMALL if arg != "--quiet"]
    assert main(["train", *loud, "--token-cache", str(tmp_path / "tokens"), "--backend", backend, "--max-steps", "4",
                 "--eval-interval", "2", "--lr", "1e-3", "--out", str(tmp_path / "run")]) == 0
    captured = capsys.readouterr()
    lines = [line for line in captured.out.splitlines() if line.startswith("step ")]
    records = [r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if "val_loss" in r]
    assert len(lines) == len(records) == 2
    for line, record in zip(lines, records):
        assert line.startswith(f"step {record['step']}/4, train loss {record['eval_train_loss']:.3f} (ppl ")
        assert f"val loss {record['val_loss']:.3f} (ppl {record['val_perplexity']:,.1f})" in line
        assert f"{record['tokens_seen']:,} tokens seen" in line and " tokens/s, lr " in line
        assert line.endswith(f"lr {record['lr']:.2e}")
    assert "val=" not in captured.err                            # no val=nan in the bar between evaluations


def test_config_keeps_the_history_of_invocations(tmp_path, monkeypatch):
    from datetime import datetime
    from gptcore.formats.runs import checkpoint_path
    run = tmp_path / "run"

    def invoke(*argv):
        monkeypatch.setattr(sys, "argv", ["gpt2", *argv])
        assert main(list(argv)) == 0
        return list(argv)
    first = invoke("train", *SMALL, "--token-cache", str(tmp_path / "tokens"), "--out", str(run), "--max-steps", "2",
                   "--eval-interval", "10")
    second = invoke("train", "--resume", str(run), "--max-steps", "3", "--quiet")
    config = json.loads((run / "config.json").read_text())
    assert config["command"] == second and config["options"]["max_steps"] == 3   # the top level: the latest
    assert [h["command"] for h in config["history"]] == [first, second]
    assert [h["resumed_from"] for h in config["history"]] == [None, str(checkpoint_path(run, 2))]
    assert all(datetime.fromisoformat(h["time"]).tzinfo is not None for h in config["history"])

    del config["history"]                                      # a run folder written before history existed
    (run / "config.json").write_text(json.dumps(config))
    third = invoke("train", "--resume", str(run), "--max-steps", "4", "--quiet")
    history = json.loads((run / "config.json").read_text())["history"]
    assert [(h["command"], h["time"] is None) for h in history] == [(second, True), (third, False)]


def test_resume_drops_metrics_logged_after_the_last_checkpoint(tmp_path):
    run = tmp_path / "run"
    assert train(tmp_path, "--out", str(run), "--max-steps", "3", "--checkpoint-interval", "2",
                 "--keep-checkpoints", "0", "--eval-interval", "10") == 0
    import shutil
    shutil.rmtree(latest_checkpoint(run))                       # as if the run had crashed after step 3
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    assert [r["step"] for r in read_jsonl(run / "metrics.jsonl")] == [1, 2, 3]


def test_a_torch_run_continues_in_the_numpy_backend(tmp_path):
    run = tmp_path / "run"
    assert train(tmp_path, "--out", str(run), "--max-steps", "2", "--eval-interval", "10") == 0
    assert main(["train", "--resume", str(run), "--backend", "numpy", "--max-steps", "3", "--quiet"]) == 0
    records = read_jsonl(run / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3]
    state = load_checkpoint(latest_checkpoint(run))[2]
    assert state["backend"] == "numpy" and state["optimizer"]["t"] == 3        # torch's AdamW state carried over
    assert state["data"]["position"] == 3 * 2                                  # and the data position


@pytest.mark.parametrize("backend", ["torch", "numpy"])
def test_init_from_released_weights_and_a_sample(tmp_path, backend):
    hparams = openai_hparams(n_vocab=50257, n_ctx=16, n_embd=8, n_head=2, n_layer=1)
    tensors = random_openai_tensors(hparams, seed=0)
    weights = write_hf_checkpoint(tmp_path / "hf", hparams, openai_to_hf_tensors(tensors, hparams))
    run = tmp_path / "run"
    assert main(["train", "--init-from", str(weights), "--out", str(run), "--max-steps", "1", "--lr", "1e-12",
                 "--batch-size", "2", "--context-length", "8", "--device", "cpu", "--quiet", "--token-cache",
                 str(tmp_path / "tokens"), "--sample-prompt", "Every effort moves", "--sample-tokens", "3",
                 "--backend", backend]) == 0
    config, released = load_weights(weights)
    _, trained, _ = load_checkpoint(latest_checkpoint(run))
    for name, value in released.items():                       # started from the weights (lr ~ 0)
        np.testing.assert_allclose(trained[name], value, atol=1e-6)
    record = read_jsonl(run / "metrics.jsonl")[0]
    from npgpt.generate import generate
    from gptcore.tokenizer import get_tokenizer
    tokenizer = get_tokenizer()                                 # the greedy continuation, in either backend
    assert record["sample"] == tokenizer.decode(generate(released, config, tokenizer.encode("Every effort moves"), 3))
    assert json.loads((run / "config.json").read_text())["model"]["context_length"] == 16


@pytest.mark.parametrize("args, message", [
    (["--resume", "no/such/run"], "no such file or folder"),
    (["--data", "no-such-data"], "neither a file, a folder nor a data set name"),
    (["--backend", "numpy", "--nproc", "2"], "--nproc needs the torch backend"),
    (["--backend", "numpy", "--compile"], "torch backend only"),
    (["--backend", "numpy", "--dtype", "bfloat16"], "--dtype bfloat16 applies to the torch backend only"),
    (["--backend", "numpy", "--peak-tflops", "100"], "--peak-tflops applies to the torch backend only"),
    (["--max-steps", "0"], "max_steps must be positive"),
    (["--context-length", "4096", "--init-from", "WEIGHTS"], "exceeds the model's context length 16"),
])
def test_errors_are_one_line_with_the_fix(tmp_path, capsys, args, message):
    if "WEIGHTS" in args:
        hparams = openai_hparams(n_vocab=50257, n_ctx=16, n_embd=8, n_head=2, n_layer=1)
        tensors = random_openai_tensors(hparams, seed=0)
        args[args.index("WEIGHTS")] = str(write_hf_checkpoint(tmp_path / "hf", hparams,
                                                              openai_to_hf_tensors(tensors, hparams)))
    code = main(["train", "--out", str(tmp_path / "run"), "--quiet", "--device", "cpu", "--token-cache",
                 str(tmp_path / "tokens"), *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_a_finished_run_is_not_overwritten(tmp_path, capsys):
    run = tmp_path / "run"
    assert train(tmp_path, "--out", str(run), "--max-steps", "1") == 0
    assert train(tmp_path, "--out", str(run), "--max-steps", "1") == 2
    assert f"continue it with --resume {run}" in capsys.readouterr().err


def test_resume_from_another_folder_with_changed_text_is_refused(tmp_path, shared_data_dir, capsys, monkeypatch):
    text = tmp_path / "story.txt"
    text.write_text((shared_data_dir / "the-verdict.txt").read_text(encoding="utf-8")[:4000], encoding="utf-8")
    run = tmp_path / "run"
    monkeypatch.chdir(tmp_path)
    assert train(tmp_path, "--data", "story.txt", "--out", "run", "--max-steps", "1", "--eval-interval", "10") == 0
    text.write_text(text.read_text(encoding="utf-8") + "\nOne more line.\n", encoding="utf-8")
    monkeypatch.chdir(shared_data_dir)                          # relative paths were stored as absolute ones
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--max-steps", "2", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "the training text changed since the run started" in err        # found the file from another folder
    assert "data order covers 56 windows, this data has 61" in err and "--init-from CHECKPOINT" in err
