"""Run folders through the real CLI (issue 19): every command that reads weights takes a run folder, a
checkpoint folder or a file in both backends; a run's history stays linear (branch with --out); only a run
that trains writes config.json; a corrupt checkpoint names the run's older good one; `weights info/convert`
name the run, checkpoint and step; classifiers are named as such where a language model is needed."""
from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest

from gpt2cli.main import main
from gptcore.config import get_config
from gptcore.fileio import read_jsonl
from gptcore.formats.checkpoint import load_checkpoint, read_checkpoint_metadata, save_checkpoint
from gptcore.formats.runs import FINAL_MODEL_DIR, RunLog, checkpoint_path, list_checkpoints, prune_checkpoints

SMALL = ["--model", "tiny", "--emb-dim", "8", "--n-heads", "2", "--n-layers", "1", "--context-length", "16",
         "--batch-size", "2", "--eval-batches", "1", "--device", "cpu", "--quiet", "--eval-interval", "10"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A `gpt2 train` run folder with checkpoints at steps 2 and 4 (NumPy backend, seconds)."""
    root = tmp_path_factory.mktemp("runs")
    run = root / "run"
    assert main(["train", *SMALL, "--backend", "numpy", "--token-cache", str(root / "tokens"), "--out", str(run),
                 "--max-steps", "4", "--checkpoint-interval", "2", "--lr-decay-steps", "8"]) == 0
    assert [step for step, _ in list_checkpoints(run)] == [2, 4]
    return run


@pytest.fixture
def run(trained_run, tmp_path):
    """A fresh copy of the trained run for a test that may change it."""
    return shutil.copytree(trained_run, tmp_path / "run")


def folder_digest(folder):
    """{relative path: sha256} of every file under `folder`: 'not touched' means equal digests."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def generate(capsys, *args):
    code = main(["generate", "--prompt", "Every effort", "--max-new-tokens", "4", "--device", "cpu", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ---------------------------------------------------------------------------------------------------
# 1. one resolver: a run folder, a checkpoint folder, a file; --weights and --checkpoint; both backends
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("flag", ["--checkpoint", "--weights"])
@pytest.mark.parametrize("kind", ["run", "checkpoint folder", "file"])
def test_generate_reads_a_run_a_checkpoint_and_a_file_in_both_backends(trained_run, capsys, backend, flag, kind):
    newest = checkpoint_path(trained_run, 4)
    path = {"run": trained_run, "checkpoint folder": newest, "file": newest / "model.safetensors"}[kind]
    code, out, err = generate(capsys, flag, str(path), "--backend", backend)
    assert code == 0, err
    reference_code, reference, _ = generate(capsys, "--weights", str(newest), "--backend", "numpy")
    assert reference_code == 0 and out == reference          # the same weights: the same greedy tokens


def test_weights_info_and_convert_name_the_run_checkpoint_and_step(trained_run, tmp_path, capsys):
    assert main(["weights", "info", str(trained_run)]) == 0
    out = capsys.readouterr().out
    assert "Hugging Face" not in out and "gpt2-twice checkpoint" in out
    assert f"run:         {trained_run}" in out
    assert f"checkpoint:  {checkpoint_path(trained_run, 4)} (step 4)" in out
    assert main(["weights", "convert", str(trained_run), str(tmp_path / "converted")]) == 0
    out = capsys.readouterr().out
    assert "Hugging Face" not in out and f"run {trained_run}, checkpoint {checkpoint_path(trained_run, 4)} (step 4)" in out
    metadata = read_checkpoint_metadata(tmp_path / "converted")
    assert metadata["source_format"] == "checkpoint"
    assert (metadata["run"], metadata["checkpoint"], metadata["step"]) == (str(trained_run),
                                                                           str(checkpoint_path(trained_run, 4)), 4)


def test_a_released_folder_error_names_a_flag_not_a_function(tmp_path, capsys):
    folder = tmp_path / "other"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"format": "something-else"}))
    (folder / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError) as error:
        load_checkpoint(folder)
    assert "--weights" in str(error.value) and "load_weights" not in str(error.value)


# ---------------------------------------------------------------------------------------------------
# 2. a run's history stays linear; --out branches
# ---------------------------------------------------------------------------------------------------

def test_resuming_in_place_from_an_older_checkpoint_is_refused_and_touches_nothing(run, capsys):
    before = folder_digest(run)
    older = checkpoint_path(run, 2)
    assert main(["train", "--resume", str(older), "--max-steps", "3", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "went on past step 2" in err and f"--resume {older} --out NEW_FOLDER" in err
    assert len(err.strip().splitlines()) == 1
    assert folder_digest(run) == before


def test_out_branches_from_an_older_checkpoint_with_the_runs_metrics(run, tmp_path, capsys):
    before = folder_digest(run)
    branch = tmp_path / "branch"
    assert main(["train", "--resume", str(checkpoint_path(run, 2)), "--out", str(branch), "--max-steps", "3",
                 "--quiet"]) == 0
    assert folder_digest(run) == before                                   # the old folder is not touched
    original, branched = read_jsonl(run / "metrics.jsonl"), read_jsonl(branch / "metrics.jsonl")
    assert [r["step"] for r in branched] == [1, 2, 3]
    assert branched[:2] == original[:2]                                   # the run's metrics up to step 2
    assert branched[2]["train_loss"] == pytest.approx(original[2]["train_loss"], rel=1e-6)   # exact resume
    assert len((branch / "metrics.csv").read_text().splitlines()) == 4
    assert [step for step, _ in list_checkpoints(branch)] == [3]
    history = json.loads((branch / "config.json").read_text())["history"]
    assert history[-1]["resumed_from"] == str(checkpoint_path(run, 2)) and len(history) == 2


def tiny_checkpoint(path, step):
    config = get_config("tiny", vocab_size=16, emb_dim=4, n_heads=1, n_layers=1, context_length=4)
    from gptcore.arch import param_shapes
    params = {name: np.zeros(shape, dtype=np.float32) for name, shape in param_shapes(config).items()}
    return save_checkpoint(path, params, config, training_state={"step": step})


def test_pruning_never_deletes_for_a_checkpoint_older_than_what_it_keeps(tmp_path):
    for step in (2, 4, 6):
        tiny_checkpoint(checkpoint_path(tmp_path, step), step)
    prune_checkpoints(tmp_path, keep=2, newest_step=4)        # just wrote step 4; step 6 is not older than it
    assert [step for step, _ in list_checkpoints(tmp_path)] == [2, 4, 6]
    prune_checkpoints(tmp_path, keep=2, newest_step=6)
    assert [step for step, _ in list_checkpoints(tmp_path)] == [4, 6]


# ---------------------------------------------------------------------------------------------------
# 4, 5. only a run that trains writes config.json; a corrupt checkpoint offers the older good one
# ---------------------------------------------------------------------------------------------------

def test_nothing_to_do_writes_nothing(run, capsys):
    before = folder_digest(run)
    assert main(["train", "--resume", str(run), "--max-steps", "3", "--quiet"]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert folder_digest(run) == before
    assert json.loads((run / "config.json").read_text())["options"]["max_steps"] == 4


def corrupt(checkpoint):
    model = checkpoint / "model.safetensors"
    model.write_bytes(model.read_bytes()[:100])


def test_a_failed_corrupt_resume_writes_nothing_and_offers_the_older_checkpoint(run, capsys):
    corrupt(checkpoint_path(run, 4))
    before = folder_digest(run)
    assert main(["train", "--resume", str(run), "--max-steps", "6", "--quiet"]) == 2
    err = capsys.readouterr().err
    older = checkpoint_path(run, 2)
    assert f"older checkpoint {older} (step 2) loads" in err and f"--resume {older} --out NEW_FOLDER" in err
    assert len(err.strip().splitlines()) == 1
    assert folder_digest(run) == before                                   # no history entry, no metrics cut


def test_generate_on_a_run_with_a_corrupt_newest_checkpoint_names_the_older_one(run, capsys):
    corrupt(checkpoint_path(run, 4))
    code, _, err = generate(capsys, "--checkpoint", str(run))
    assert code == 2 and f"older checkpoint {checkpoint_path(run, 2)} (step 2) loads" in err


# ---------------------------------------------------------------------------------------------------
# friction: a classifier where a language model is needed, --threads, --data, evaluate's hint
# ---------------------------------------------------------------------------------------------------

@pytest.fixture
def classifier_run(tmp_path):
    """A run folder as `gpt2 finetune classify --out` leaves it: config.json and model/ with a classifier."""
    from npgpt.classifier import classifier_from_lm_params
    from npgpt.model import init_params
    lm_config = get_config("tiny", emb_dim=8, n_heads=2, n_layers=1, context_length=16)
    config, params = classifier_from_lm_params(init_params(lm_config, seed=0), lm_config, 2, seed=0)
    run = tmp_path / "spam"
    RunLog(run).write_config({"task": "classification"})
    save_checkpoint(run / FINAL_MODEL_DIR, params, config,
                    metadata={"task": "classification", "labels": ["ham", "spam"], "num_classes": 2})
    return run


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_generate_on_a_classifier_says_which_command_uses_it(classifier_run, capsys, backend):
    code, _, err = generate(capsys, "--weights", str(classifier_run), "--backend", backend)
    assert code == 2 and "is a text classifier (labels: ham, spam)" in err
    assert f"gpt2 classify --checkpoint {classifier_run}" in err and "missing" not in err


def test_train_resume_on_a_classifier_run_says_what_it_is(classifier_run, capsys):
    assert main(["train", "--resume", str(classifier_run), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "finetuning run" in err and f"gpt2 classify --checkpoint {classifier_run}" in err
    assert "without --resume" not in err


def test_train_takes_threads(tmp_path, monkeypatch):
    import gpt2cli.commands.train as train_command
    seen = []

    class Recorded:
        def __init__(self, count):
            seen.append(count)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False
    monkeypatch.setattr(train_command, "limited_threads", Recorded)
    assert main(["train", *SMALL, "--backend", "numpy", "--token-cache", str(tmp_path / "tokens"), "--out",
                 str(tmp_path / "run"), "--max-steps", "1", "--threads", "1"]) == 0
    assert seen == [1]


def test_data_is_one_name_and_data_file_an_alias(capsys):
    from gpt2cli.main import build_parser
    parser = build_parser()
    for argv, dest in ((["finetune", "classify"], "data_file"), (["train"], "data"),
                       (["finetune", "instruct"], "data")):
        value = ["x.txt"] if argv == ["train"] else "x.txt"
        assert getattr(parser.parse_args([*argv, "--data", "x.txt"]), dest) == value
        assert getattr(parser.parse_args([*argv, "--data-file", "x.txt"]), dest) == value
        with pytest.raises(SystemExit):
            parser.parse_args([*argv, "--help"])
        help_text = capsys.readouterr().out
        assert "--data " in help_text and "--data-file" not in help_text


def test_evaluate_without_responses_points_to_finetune_instruct(tmp_path, capsys):
    assert main(["evaluate", "--responses", str(tmp_path / "nope.json"), "--judge-model", "llama3"]) == 2
    err = capsys.readouterr().err
    assert "gpt2 finetune instruct" in err and "gpt2 data fetch" not in err
