"""gptcore.engine.run_setup: the rules behind `gpt2 train`'s options and --resume, one function at a time.
(tests/test_train_cli.py runs them end to end through the command.)"""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from gptcore.arch import param_shapes
from gptcore.config import get_config
from gptcore.engine import run_setup
from gptcore.engine.run_setup import DEFAULTS
from gptcore.engine.training import settings_dict
from gptcore.formats.checkpoint import STATE_JSON_FILE, save_checkpoint
from gptcore.formats.runs import RunLog, checkpoint_path
from tests.fake_checkpoints import openai_hparams, openai_to_hf_tensors, random_openai_tensors, write_hf_checkpoint


def complete(**changes) -> dict:
    options = run_setup.merged_options(None, changes)
    run_setup.complete_schedule(options)
    return options


def test_given_options_are_the_run_options_that_are_not_none():
    values = {"lr": 1e-3, "batch_size": None, "compile": False, "quiet": True, "resume": "runs/x"}
    assert run_setup.given_options(values) == {"lr": 1e-3, "compile": False}


def test_flags_win_over_the_saved_options_which_win_over_the_defaults():
    options = run_setup.merged_options({"lr": 1e-3, "batch_size": 4}, {"batch_size": 2})
    assert (options["lr"], options["batch_size"], options["seed"]) == (1e-3, 2, DEFAULTS["seed"])
    assert run_setup.merged_options(None, {}) == DEFAULTS and run_setup.merged_options(None, {}) is not DEFAULTS


def test_complete_schedule_fixes_the_horizon_warmup_and_final_lr():
    options = complete(max_steps=200, lr=1e-3)
    assert (options["lr_decay_steps"], options["warmup_steps"], options["min_lr"]) == (200, 10, 1e-4)
    kept = complete(max_steps=200, lr_decay_steps=100, warmup_steps=0, min_lr=0.0)
    assert (kept["lr_decay_steps"], kept["warmup_steps"], kept["min_lr"]) == (100, 0, 0.0)


def test_options_from_settings_inverts_training_settings():
    options = complete(max_steps=50, batch_size=3, grad_accum=2, lr=2e-3, schedule="constant", grad_clip=0.0,
                       eval_interval=7, eval_batches=2, checkpoint_interval=10, keep_checkpoints=0, seed=9)
    settings = run_setup.training_settings(options)
    assert settings.grad_clip is None and settings.cosine is False and settings.grad_accum_steps == 2
    recovered = run_setup.options_from_settings(settings_dict(settings))
    assert recovered == {name: options[name] for name in recovered}


def test_options_from_old_settings_fix_the_horizon_at_their_max_steps():
    settings = settings_dict(run_setup.training_settings(complete(max_steps=40)))
    settings["lr_decay_steps"] = None                       # "the run's max_steps", as older runs wrote it
    assert run_setup.options_from_settings(settings)["lr_decay_steps"] == 40


@pytest.mark.parametrize("given, message", [
    ({"compile": True}, "--compile applies to the torch backend only"),
    ({"sdpa": True}, "--sdpa applies to the torch backend only"),
    ({"peak_tflops": 100.0}, "--peak-tflops applies to the torch backend only"),
    ({"dtype": "bfloat16"}, "--dtype bfloat16 applies to the torch backend only"),
    ({"device": "cuda"}, "the NumPy backend runs on the CPU"),
])
def test_torch_only_options_are_refused_with_the_numpy_backend(given, message):
    with pytest.raises(ValueError, match=message.replace("-", r"\-")):
        run_setup.check_numpy_backend_options(given)


def test_harmless_options_pass_with_the_numpy_backend():
    run_setup.check_numpy_backend_options({"sdpa": False, "dtype": "float32", "device": "cpu", "lr": 1e-3})
    run_setup.check_numpy_backend_options({})


@pytest.mark.parametrize("before, now, batch, accum, expected", [(1, 2, 4, 4, 2), (2, 1, 4, 1, 2), (2, 4, 2, 4, 2)])
def test_another_process_count_keeps_the_global_batch(before, now, batch, accum, expected):
    options = {"batch_size": batch, "grad_accum": accum}
    note = run_setup.keep_global_batch(options, {"world_size": before}, {}, now)
    assert options["grad_accum"] == expected and batch * accum * before == batch * expected * now
    assert f"--grad-accum {expected} keeps the global batch of {batch * accum * before}" in note


def test_the_global_batch_rule_steps_aside():
    options = {"batch_size": 4, "grad_accum": 2}
    assert run_setup.keep_global_batch(options, None, {}, 2) is None                        # a fresh run
    assert run_setup.keep_global_batch(options, {"world_size": 2}, {}, 2) is None           # same processes
    assert run_setup.keep_global_batch(options, {"world_size": 1}, {"grad_accum": 2}, 2) is None   # explicit
    assert options == {"batch_size": 4, "grad_accum": 2}
    with pytest.raises(ValueError, match="does not divide; pass --batch-size and --grad-accum explicitly"):
        run_setup.keep_global_batch({"batch_size": 4, "grad_accum": 1}, {"world_size": 1}, {}, 3)


def test_notes_about_the_schedule_and_the_data_only_on_a_resume():
    options = complete(max_steps=30, lr_decay_steps=20)
    assert run_setup.schedule_end_note(options, None) is None
    assert "stays at --min-lr after step 20" in run_setup.schedule_end_note(options, {"options": {}})
    assert run_setup.data_change_note(None, "abc") is None
    assert run_setup.data_change_note({"data": {"key": "abc"}}, "abc") is None
    assert "token files old -> abc" in run_setup.data_change_note({"data": {"key": "old"}}, "abc")


def test_absolute_paths_leave_data_set_names_alone(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("story.txt").write_text("x")
    options = dict(DEFAULTS, data=["story.txt", "the-verdict"], token_cache="tokens")
    run_setup.absolute_paths(options)
    assert options["data"] == [str(tmp_path / "story.txt"), "the-verdict"]
    assert options["token_cache"] == str(tmp_path / "tokens") and options["init_from"] is None


class FakeCorpus:
    def __init__(self, train_size, val_size):
        self.train, self.val = np.arange(train_size, dtype=np.uint16), np.arange(val_size, dtype=np.uint16)

    def train_tokens(self):
        return self.train

    def val_tokens(self):
        return self.val


def test_window_datasets_over_the_token_files():
    train_set, val_set = run_setup.window_datasets(FakeCorpus(41, 9), context_length=8, stride=4)
    assert (len(train_set), len(val_set)) == ((41 - 9) // 4 + 1, 1)
    assert run_setup.window_datasets(FakeCorpus(41, 8), 8, 8)[1] is None      # less than one window + target
    with pytest.raises(ValueError, match="fewer than one window of 9; give more text"):
        run_setup.window_datasets(FakeCorpus(8, 100), 8, 8)


def test_model_config_from_a_preset_with_its_overrides():
    config, params = run_setup.model_config_and_params(dict(DEFAULTS, n_layers=1, context_length=16), None)
    assert params is None and (config.n_layers, config.context_length, config.emb_dim) == (1, 16, 64)


def test_init_from_fixes_the_model_sizes(tmp_path):
    hparams = openai_hparams(n_vocab=50257, n_ctx=16, n_embd=8, n_head=2, n_layer=1)
    weights = write_hf_checkpoint(tmp_path / "hf", hparams,
                                  openai_to_hf_tensors(random_openai_tensors(hparams, seed=0), hparams))
    config, params = run_setup.model_config_and_params(dict(DEFAULTS, init_from=str(weights), drop_rate=0.2), None)
    assert (config.emb_dim, config.drop_rate) == (8, 0.2) and params["tok_emb.weight"].shape == (50257, 8)
    with pytest.raises(ValueError, match=r"--init-from fixes the model's sizes; drop \['n_layers'\]"):
        run_setup.model_config_and_params(dict(DEFAULTS, init_from=str(weights), n_layers=2), None)


def test_a_checkpoint_without_training_state_cannot_be_resumed(tmp_path):
    with pytest.raises(ValueError, match="holds no training state .* with --init-from instead of --resume"):
        run_setup.checkpoint_state_json(tmp_path)
    (tmp_path / STATE_JSON_FILE).write_text(json.dumps({"state": {"step": 12, "world_size": 2}}))
    assert run_setup.checkpoint_step(tmp_path) == 12


def write_checkpoint(path: Path, *, options: dict, settings: dict, world_size: int = 1) -> Path:
    """A tiny checkpoint as `gpt2 train` writes it: the run's options in its metadata, settings in its state."""
    config = get_config("tiny", vocab_size=16, emb_dim=4, n_heads=1, n_layers=1, context_length=4)
    params = {name: np.zeros(shape, dtype=np.float32) for name, shape in param_shapes(config).items()}
    return save_checkpoint(path, params, config, metadata={"options": options, "data_key": "k1"},
                           training_state={"step": 3, "settings": settings, "world_size": world_size})


def test_a_run_folder_resumes_in_itself_from_its_newest_checkpoint(tmp_path):
    run = tmp_path / "run"
    RunLog(run).write_config({"options": {"lr": 1e-3}, "world_size": 1})
    settings = settings_dict(run_setup.training_settings(complete()))
    for step in (2, 4):
        write_checkpoint(checkpoint_path(run, step), options={}, settings=settings)
    source = run_setup.resume_source(run, None)
    assert source.checkpoint == checkpoint_path(run, 4) and source.out == run and source.same_folder
    assert source.saved_options == {"lr": 1e-3}
    elsewhere = run_setup.resume_source(checkpoint_path(run, 2), tmp_path / "branch")
    assert elsewhere.checkpoint == checkpoint_path(run, 2) and not elsewhere.same_folder
    assert elsewhere.run_config["options"] == {"lr": 1e-3}      # still the run's own config.json


def test_a_checkpoint_outside_a_run_brings_its_own_options(tmp_path):
    settings = settings_dict(run_setup.training_settings(complete(lr=3e-3, batch_size=3, max_steps=5)))
    loose = write_checkpoint(tmp_path / "copy", options={"lr": 1.0, "tokenizer": "bpe", "not_an_option": 1},
                             settings=settings, world_size=2)
    with pytest.raises(ValueError, match="is a checkpoint outside a run folder; give --out DIR"):
        run_setup.resume_source(loose, None)
    source = run_setup.resume_source(loose, tmp_path / "continued")
    assert source.out == tmp_path / "continued" and not source.same_folder
    assert source.run_config["world_size"] == 2 and source.run_config["data"] == {"key": "k1"}
    options = source.saved_options                            # the training state's settings are authoritative
    assert (options["lr"], options["batch_size"], options["tokenizer"]) == (3e-3, 3, "bpe")
    assert "not_an_option" not in options
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        run_setup.resume_source(tmp_path / "missing", None)


def test_run_history_appends_this_invocation():
    now = datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=1)))
    fresh = run_setup.run_history(None, None, 1, ["train", "--out", "r"], now=now)
    assert fresh == [{"command": ["train", "--out", "r"], "time": "2025-01-02T03:04:05+01:00", "resumed_from": None,
                      "world_size": 1}]
    again = run_setup.run_history({"history": fresh}, Path("r/checkpoints/step-2"), 2, ["train", "--resume", "r"])
    assert again[0] == fresh[0] and again[1]["resumed_from"] == str(Path("r/checkpoints/step-2"))
    assert again[1]["world_size"] == 2 and datetime.fromisoformat(again[1]["time"]).tzinfo is not None
    older = run_setup.run_history({"command": ["train"], "world_size": 2}, None, 1, ["train", "--resume", "r"])
    assert older[0] == {"command": ["train"], "time": None, "resumed_from": None, "world_size": 2}
