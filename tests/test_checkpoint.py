"""gptcore.formats.checkpoint: our format (safetensors + JSON), atomic writes, training state, both backends."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

import gptcore.formats.checkpoint as checkpoint
import npgpt.model as npmodel
from gptcore.formats.checkpoint import (CheckpointError, is_checkpoint, load_checkpoint, read_checkpoint_metadata,
    save_checkpoint)
from gptcore.config import GPTConfig
from gptcore.formats.weights import detect_format, load_weights
from torchgpt import GPTModel, to_numpy_params
from torchgpt.checkpoint import load_model, load_training_checkpoint, save_training_checkpoint

CONFIG = GPTConfig(vocab_size=37, context_length=12, emb_dim=16, n_heads=4, n_layers=2, drop_rate=0.1,
                   qkv_bias=False)
IDX = np.random.default_rng(0).integers(0, CONFIG.vocab_size, size=(2, 9))


def assert_same_params(expected, actual):
    assert list(actual) == list(expected)
    for name in expected:
        assert actual[name].dtype == expected[name].dtype, name
        assert np.array_equal(actual[name], expected[name]), name


def leftovers(folder):
    """Temporary folders a save left next to its target."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_round_trip_is_bitwise(tmp_path, tie, dtype):
    config = CONFIG.replace(tie_weights=tie)
    params = npmodel.init_params(config, seed=1, dtype=dtype)
    save_checkpoint(tmp_path / "ckpt", params, config, metadata={"run": "a", "tokens": 123})
    assert is_checkpoint(tmp_path / "ckpt") and detect_format(tmp_path / "ckpt") == "checkpoint"
    loaded_config, loaded, state = load_checkpoint(tmp_path / "ckpt")
    assert loaded_config == config and state is None
    assert_same_params(params, loaded)
    assert (loaded["out_head.weight"] is loaded["tok_emb.weight"]) == tie
    assert read_checkpoint_metadata(tmp_path / "ckpt") == {"run": "a", "tokens": 123}
    assert read_checkpoint_metadata(tmp_path / "ckpt" / "model.safetensors") == {"run": "a", "tokens": 123}
    # the tied head is stored once
    stored = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert stored["aliases"] == ({"out_head.weight": "tok_emb.weight"} if tie else {})
    # load_weights reads our checkpoints too (what `gpt2 generate --weights` uses)
    config_again, params_again = load_weights(tmp_path / "ckpt")
    assert config_again == config
    assert_same_params(params, params_again)


def test_model_file_alone_is_self_describing_and_readable_by_safetensors(tmp_path):
    from safetensors.numpy import load_file
    params = npmodel.init_params(CONFIG, seed=2)
    save_checkpoint(tmp_path / "ckpt", params, CONFIG)
    file = tmp_path / "ckpt" / "model.safetensors"
    by_package = load_file(str(file))      # our streamed writer produces a file the reference reader accepts
    assert sorted(by_package) == sorted(name for name in params if name != "out_head.weight")
    for name, value in by_package.items():
        assert np.array_equal(value, params[name])
    config, loaded, _ = load_checkpoint(file)
    assert config == CONFIG
    assert_same_params(params, loaded)
    assert loaded["out_head.weight"] is loaded["tok_emb.weight"]


def test_training_state_round_trip(tmp_path):
    params = npmodel.init_params(CONFIG, seed=3)
    generator = np.random.default_rng(42)
    generator.random(5)
    state = {
        "step": 17,
        "optimizer": {"t": 17, "m": {"tok_emb.weight": np.ones((37, 16), np.float32)},
                      "v": {"tok_emb.weight": np.full((37, 16), 2.0, np.float32)},
                      "lr": 1e-3, "betas": (0.9, 0.95), "eps": 1e-8, "weight_decay": 0.1},
        "scheduler": {"name": "cosine", "warmup": 10, "best": float("inf")},
        "rng": {"numpy": generator.bit_generator.state, "torch_cpu": torch.get_rng_state().numpy()},
        "history": [np.float32(1.5), 2, None, True, "x"],
    }
    save_checkpoint(tmp_path / "ckpt", params, CONFIG, training_state=state)
    _, _, loaded = load_checkpoint(tmp_path / "ckpt")
    assert loaded["step"] == 17 and loaded["scheduler"] == state["scheduler"]
    assert loaded["optimizer"]["betas"] == [0.9, 0.95]                  # tuples come back as lists
    assert np.array_equal(loaded["optimizer"]["m"]["tok_emb.weight"], state["optimizer"]["m"]["tok_emb.weight"])
    assert loaded["history"] == [1.5, 2, None, True, "x"]
    restored = np.random.default_rng()
    restored.bit_generator.state = loaded["rng"]["numpy"]              # 128-bit PCG64 state survives JSON
    assert np.array_equal(restored.random(4), generator.random(4))
    torch_state = torch.from_numpy(loaded["rng"]["torch_cpu"])
    assert torch.equal(torch_state, torch.get_rng_state())
    _, _, skipped = load_checkpoint(tmp_path / "ckpt", load_training_state=False)
    assert skipped is None


def test_training_state_that_is_not_json_or_arrays(tmp_path):
    params = npmodel.init_params(CONFIG)
    with pytest.raises(CheckpointError, match="scheduler/fn has type builtin_function_or_method"):
        save_checkpoint(tmp_path / "ckpt", params, CONFIG, training_state={"scheduler": {"fn": len}})
    with pytest.raises(CheckpointError, match="not a string"):
        save_checkpoint(tmp_path / "ckpt", params, CONFIG, training_state={1: 2})
    assert not (tmp_path / "ckpt").exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize("saved_by", ["npgpt", "torchgpt"])
def test_saved_by_one_backend_loads_in_the_other(tmp_path, saved_by):
    if saved_by == "npgpt":
        params = npmodel.init_params(CONFIG, seed=4)
        save_checkpoint(tmp_path / "ckpt", params, CONFIG)
    else:
        model = GPTModel(CONFIG, seed=4)
        save_training_checkpoint(tmp_path / "ckpt", model)
        params = to_numpy_params(model)
    config, np_params, _ = load_checkpoint(tmp_path / "ckpt")
    model, _ = load_training_checkpoint(tmp_path / "ckpt")
    assert_same_params(params, np_params)
    assert_same_params(params, to_numpy_params(model))
    np_logits, _ = npmodel.forward(np_params, IDX, config)
    with torch.no_grad():
        torch_logits = load_model(tmp_path / "ckpt")(torch.from_numpy(IDX)).numpy()
    np.testing.assert_allclose(np_logits, torch_logits, rtol=0, atol=1e-5 * np.abs(np_logits).max())


def test_a_failed_save_leaves_the_old_checkpoint_intact(tmp_path, monkeypatch):
    old_params = npmodel.init_params(CONFIG, seed=5)
    save_checkpoint(tmp_path / "ckpt", old_params, CONFIG, training_state={"step": 1})
    before = {p.name: p.read_bytes() for p in (tmp_path / "ckpt").iterdir()}

    real_write = checkpoint.write_safetensors

    def write_half_then_fail(file, tensors, metadata=None):
        real_write(file, tensors, metadata)
        data = open(file, "rb").read()
        open(file, "wb").write(data[:len(data) // 2])          # a crash half way through the file
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint, "write_safetensors", write_half_then_fail)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(tmp_path / "ckpt", npmodel.init_params(CONFIG, seed=6), CONFIG, training_state={"step": 2})
    assert {p.name: p.read_bytes() for p in (tmp_path / "ckpt").iterdir()} == before
    assert leftovers(tmp_path) == []
    _, params, state = load_checkpoint(tmp_path / "ckpt")
    assert_same_params(old_params, params)
    assert state == {"step": 1}

    # a replacing save drops files the old checkpoint had (no stale training state)
    monkeypatch.setattr(checkpoint, "write_safetensors", real_write)
    save_checkpoint(tmp_path / "ckpt", npmodel.init_params(CONFIG, seed=6), CONFIG)
    assert load_checkpoint(tmp_path / "ckpt")[2] is None
    assert leftovers(tmp_path) == []


def test_a_save_stopped_between_its_two_renames_is_recovered(tmp_path, monkeypatch):
    old_params = npmodel.init_params(CONFIG, seed=7)
    save_checkpoint(tmp_path / "ckpt", old_params, CONFIG)
    real_replace = checkpoint.os.replace

    def stop_before_moving_the_new_one_in(source, target):
        if str(target) == str(tmp_path / "ckpt") and ".ckpt.tmp-" in str(source):
            raise KeyboardInterrupt        # as if the process stopped right there
        return real_replace(source, target)

    monkeypatch.setattr(checkpoint.os, "replace", stop_before_moving_the_new_one_in)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path / "ckpt", npmodel.init_params(CONFIG, seed=8), CONFIG)
    monkeypatch.setattr(checkpoint.os, "replace", real_replace)
    # the failed second rename put the old checkpoint back at once
    _, params, _ = load_checkpoint(tmp_path / "ckpt")
    assert_same_params(old_params, params)
    assert leftovers(tmp_path) == []

    # a process killed outright between the renames leaves the old folder under .ckpt.old-*/previous:
    # the next load (or save) puts it back
    old = tmp_path / ".ckpt.old-x"
    old.mkdir()
    real_replace(tmp_path / "ckpt", old / "previous")
    assert detect_format(tmp_path / "ckpt") == "checkpoint"
    _, params = load_weights(tmp_path / "ckpt")
    assert_same_params(old_params, params)
    assert leftovers(tmp_path) == []


def test_refuses_to_replace_something_that_is_not_a_checkpoint(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    with pytest.raises(CheckpointError, match="is not a checkpoint; refusing"):
        save_checkpoint(tmp_path / "notes", npmodel.init_params(CONFIG), CONFIG)
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep me"
    assert leftovers(tmp_path) == []


def test_corrupt_checkpoints_give_clear_errors(tmp_path):
    params = npmodel.init_params(CONFIG)
    folder = save_checkpoint(tmp_path / "ckpt", params, CONFIG, training_state={"step": 3, "m": np.ones(3)})
    config_file, model_file = folder / "config.json", folder / "model.safetensors"
    good_config, good_model = config_file.read_text(), model_file.read_bytes()

    config_file.write_text(good_config[:40])
    assert detect_format(folder) == "checkpoint"          # still recognised by the model file's header
    with pytest.raises(CheckpointError, match=r"config\.json is not valid JSON"):
        load_weights(folder)
    config_file.write_text(json.dumps({**json.loads(good_config), "config": {"emb_dim": 15}}))
    with pytest.raises(CheckpointError, match="invalid or missing config"):
        load_checkpoint(folder)
    config_file.write_text(json.dumps({**json.loads(good_config), "format_version": 99}))
    with pytest.raises(CheckpointError, match="newer than this code"):
        load_checkpoint(folder)
    config_file.write_text(good_config)

    model_file.write_bytes(good_model[:len(good_model) - 64])
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(folder)
    assert str(model_file) in str(caught.value) and "truncated" in str(caught.value)
    assert "ends at data byte" in str(caught.value)
    model_file.unlink()
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors"):
        load_checkpoint(folder)
    model_file.write_bytes(good_model)

    (folder / "training_state.json").write_text("[1, 2")
    with pytest.raises(CheckpointError, match=r"training_state\.json is not a valid training state"):
        load_checkpoint(folder)
    _, _, state = load_checkpoint(folder, load_training_state=False)   # the weights alone still load
    assert state is None


def test_tensors_that_do_not_fit_the_saved_config_name_file_and_tensor(tmp_path):
    """save_checkpoint stores whatever it is given; load_checkpoint checks names and shapes against the
    saved config (a classifier's head and LoRA adapters included) and names the file and the tensor."""
    from npgpt.classifier import classifier_from_lm_params
    from gptcore.lora import LoRAConfig
    from npgpt.lora import add_lora

    params = npmodel.init_params(CONFIG, seed=2)
    save_checkpoint(tmp_path / "layers", params, CONFIG.replace(n_layers=1))
    with pytest.raises(CheckpointError, match=r"layers/model\.safetensors: its tensors do not match the config: "
                                              r"missing \[\], unexpected \['blocks\.1\."):
        load_checkpoint(tmp_path / "layers")
    save_checkpoint(tmp_path / "vocab", params, CONFIG.replace(vocab_size=38))
    with pytest.raises(CheckpointError, match=r"vocab/model\.safetensors: parameter tok_emb\.weight has shape "
                                              r"\(37, 16\), the config needs \(38, 16\)"):
        load_weights(tmp_path / "vocab")
    # what the runs really save loads: a classifier, and a model with LoRA adapters riding along
    classifier_config, classifier = classifier_from_lm_params(params, CONFIG, num_classes=3)
    save_checkpoint(tmp_path / "classifier", classifier, classifier_config, metadata={"num_classes": 3})
    assert_same_params(classifier, load_checkpoint(tmp_path / "classifier")[1])
    adapted = add_lora(params, LoRAConfig(rank=2, alpha=4.0))
    save_checkpoint(tmp_path / "lora", adapted, CONFIG)
    assert_same_params(adapted, load_checkpoint(tmp_path / "lora")[1])
    # ... but not a classifier whose head disagrees with its metadata, nor an adapter of another width
    save_checkpoint(tmp_path / "classes", classifier, classifier_config, metadata={"num_classes": 2})
    with pytest.raises(CheckpointError, match=r"classes/model\.safetensors: parameter cls_head\.weight"):
        load_checkpoint(tmp_path / "classes")
    name = next(name for name in adapted if name.endswith(".lora_A"))
    save_checkpoint(tmp_path / "bad-lora", {**adapted, name: np.zeros((2, 5), np.float32)}, CONFIG)
    with pytest.raises(CheckpointError, match=r"bad-lora/model\.safetensors: adapter for .* has lora_A \(2, 5\)"):
        load_checkpoint(tmp_path / "bad-lora")


def test_nothing_is_ever_unpickled(tmp_path, monkeypatch):
    params = npmodel.init_params(CONFIG)
    save_checkpoint(tmp_path / "ckpt", params, CONFIG, training_state={"step": 1, "m": np.ones(2)})

    def refuse(*args, **kwargs):
        raise AssertionError("unpickling attempted")

    for module, name in ((pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load"),
                         (np, "load")):
        monkeypatch.setattr(module, name, refuse)
    load_checkpoint(tmp_path / "ckpt")
    load_training_checkpoint(tmp_path / "ckpt")
    for file in (tmp_path / "ckpt").iterdir():
        assert file.suffix in (".json", ".safetensors"), file
