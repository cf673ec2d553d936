"""torchgpt/checkpoint.py: our checkpoint format from PyTorch, and resuming AdamW across backends."""
import numpy as np
import pytest
import torch

import npgpt.model as npmodel
from gptcore.formats.checkpoint import load_checkpoint, save_checkpoint
from gptcore.config import GPTConfig
from npgpt.optim import AdamW
from gptcore.params import unique_arrays
from torchgpt import GPTModel, load_numpy_params, to_numpy_params
from torchgpt.checkpoint import (load_canonical_optimizer_state, load_model, load_training_checkpoint,
                                 optimizer_state_to_canonical, save_training_checkpoint)
from torchgpt.loss import cross_entropy
from torchgpt.optim import make_adamw

CONFIG = GPTConfig(vocab_size=29, context_length=8, emb_dim=16, n_heads=2, n_layers=2, drop_rate=0.0, qkv_bias=True)
HYPER = dict(lr=3e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)


def batches(count, seed=0, B=2, T=6):
    rng = np.random.default_rng(seed)
    return [(rng.integers(0, CONFIG.vocab_size, (B, T)), rng.integers(0, CONFIG.vocab_size, (B, T)))
            for _ in range(count)]


def numpy_steps(params, optimizer, data):
    for idx, targets in data:
        _, grads = npmodel.loss_and_grads(params, idx, targets, CONFIG)
        optimizer.step(params, grads)


def torch_steps(model, optimizer, data):
    for idx, targets in data:
        optimizer.zero_grad()
        cross_entropy(model(torch.from_numpy(idx)), torch.from_numpy(targets)).backward()
        optimizer.step()


def assert_params_equal(expected, actual, rtol=0.0, atol=0.0):
    assert list(expected) == list(actual)
    for name in expected:
        np.testing.assert_allclose(actual[name], expected[name], rtol=rtol, atol=atol, err_msg=name)


def trained_torch_model(steps=2, dtype=torch.float32):
    model = GPTModel(CONFIG, seed=1).to(dtype)
    optimizer = make_adamw(model, **HYPER)
    torch_steps(model, optimizer, batches(steps, seed=5))
    return model, optimizer


def test_model_and_optimizer_round_trip_bitwise(tmp_path):
    model, optimizer = trained_torch_model()
    rng_state = torch.get_rng_state()
    save_training_checkpoint(tmp_path / "ckpt", model, optimizer,
                             training_state={"step": 2, "scheduler": {"kind": "cosine"}, "rng": {"torch_cpu": rng_state}},
                             metadata={"run": "test"})

    fresh = GPTModel(CONFIG, seed=7)
    fresh_optimizer = make_adamw(fresh, **HYPER)
    loaded, state = load_training_checkpoint(tmp_path / "ckpt", fresh, fresh_optimizer)
    assert loaded is fresh
    assert_params_equal(to_numpy_params(model), to_numpy_params(fresh))
    assert fresh.out_head.weight is fresh.tok_emb.weight
    assert state["step"] == 2 and state["scheduler"] == {"kind": "cosine"}
    assert torch.equal(torch.from_numpy(state["rng"]["torch_cpu"]), rng_state)
    # torch's own optimizer state (moments and step of every parameter) is restored exactly
    before, after = optimizer.state_dict(), fresh_optimizer.state_dict()
    assert before["param_groups"] == after["param_groups"]
    assert before["state"].keys() == after["state"].keys()
    for index, entry in before["state"].items():
        for key, value in entry.items():
            assert torch.equal(value, after["state"][index][key]), (index, key)
            assert value.dtype == after["state"][index][key].dtype

    # and both go on identically
    data = batches(2, seed=9)
    torch_steps(model, optimizer, data)
    torch_steps(fresh, fresh_optimizer, data)
    assert_params_equal(to_numpy_params(model), to_numpy_params(fresh))


def test_canonical_optimizer_entry_names_tied_weight_once():
    model, optimizer = trained_torch_model()
    entry = optimizer_state_to_canonical(optimizer, model)
    assert entry["t"] == 2
    names = [name for name, _ in unique_arrays(npmodel.init_params(CONFIG))]
    assert list(entry["m"]) == names == list(entry["v"])      # same names and order as npgpt's AdamW
    assert "out_head.weight" not in entry["m"]
    assert entry["lr"] == HYPER["lr"] and entry["betas"] == list(HYPER["betas"])
    assert entry["eps"] == HYPER["eps"] and entry["weight_decay"] == HYPER["weight_decay"]


def test_load_builds_model_when_none_given(tmp_path):
    model, _ = trained_torch_model()
    save_training_checkpoint(tmp_path / "ckpt", model)
    loaded, state = load_training_checkpoint(tmp_path / "ckpt")
    assert state is None
    assert loaded.config == CONFIG
    assert_params_equal(to_numpy_params(model), to_numpy_params(loaded))
    same = load_model(tmp_path / "ckpt")
    assert not same.training
    idx = torch.from_numpy(batches(1)[0][0])
    assert torch.equal(same(idx), model.eval()(idx))


@pytest.mark.parametrize("direction", ["numpy_to_torch", "torch_to_numpy"])
def test_adamw_resumes_across_backends_float64(tmp_path, direction):
    """k steps in one backend, checkpoint, k more in the other == 2k steps in the first (float64)."""
    first, second = batches(3, seed=1), batches(3, seed=2)
    start = npmodel.init_params(CONFIG, seed=3, dtype=np.float64)

    if direction == "numpy_to_torch":
        params, optimizer = start, AdamW(**HYPER)
        numpy_steps(params, optimizer, first)
        save_checkpoint(tmp_path / "ckpt", params, CONFIG, training_state={"step": 3, "optimizer": optimizer.state_dict()})
        numpy_steps(params, optimizer, second)
        expected = params

        model = GPTModel(CONFIG).double()
        torch_optimizer = make_adamw(model, **HYPER)
        _, state = load_training_checkpoint(tmp_path / "ckpt", model, torch_optimizer)
        assert state["step"] == 3
        torch_steps(model, torch_optimizer, second)
        resumed = to_numpy_params(model)
    else:
        model = load_numpy_params(GPTModel(CONFIG).double(), start)
        torch_optimizer = make_adamw(model, **HYPER)
        torch_steps(model, torch_optimizer, first)
        save_training_checkpoint(tmp_path / "ckpt", model, torch_optimizer, training_state={"step": 3})
        torch_steps(model, torch_optimizer, second)
        expected = to_numpy_params(model)

        _, params, state = load_checkpoint(tmp_path / "ckpt")
        assert params["tok_emb.weight"].dtype == np.float64
        optimizer = AdamW(**HYPER)
        optimizer.load_state_dict(state["optimizer"])
        assert optimizer.t == 3
        numpy_steps(params, optimizer, second)
        resumed = params

    # The two backends agree to float64 rounding (different summation orders), not bitwise. atol: the
    # key biases have a gradient that is exactly zero in exact math (softmax ignores a per-query constant),
    # so each backend updates them from its own ~1e-13 rounding noise; they stay below 1e-10 in both.
    assert_params_equal(expected, resumed, rtol=1e-10, atol=1e-10)
    # ... and the check can fail: resuming without the moments (a fresh optimizer) lands elsewhere.
    fresh_model = GPTModel(CONFIG).double()
    load_training_checkpoint(tmp_path / "ckpt", fresh_model)
    torch_steps(fresh_model, make_adamw(fresh_model, **HYPER), second)
    with pytest.raises(AssertionError):
        assert_params_equal(expected, to_numpy_params(fresh_model), rtol=1e-6)


def test_bfloat16_model_saves_as_float32(tmp_path):
    model = GPTModel(CONFIG, seed=0).to(torch.bfloat16)
    save_training_checkpoint(tmp_path / "ckpt", model)
    _, params, _ = load_checkpoint(tmp_path / "ckpt")
    assert params["tok_emb.weight"].dtype == np.float32
    assert torch.equal(torch.from_numpy(params["tok_emb.weight"]).bfloat16(), model.tok_emb.weight.detach())


def test_errors(tmp_path):
    model, optimizer = trained_torch_model()
    with pytest.raises(ValueError, match="pass one or the other"):
        save_training_checkpoint(tmp_path / "a", model, optimizer, training_state={"optimizer": {}})
    save_training_checkpoint(tmp_path / "plain", model)
    with pytest.raises(ValueError, match="holds no optimizer state"):
        load_training_checkpoint(tmp_path / "plain", GPTModel(CONFIG), make_adamw(GPTModel(CONFIG)))
    with pytest.raises(ValueError, match="without its model"):
        load_training_checkpoint(tmp_path / "plain", None, optimizer)
    other = GPTModel(CONFIG.replace(emb_dim=8))
    with pytest.raises(ValueError, match="has shape"):
        load_training_checkpoint(tmp_path / "plain", other)
    with pytest.raises(ValueError, match="amsgrad"):
        optimizer_state_to_canonical(torch.optim.AdamW(model.parameters(), amsgrad=True), model)
    with pytest.raises(TypeError, match="AdamW"):
        optimizer_state_to_canonical(torch.optim.SGD(model.parameters(), lr=0.1), model)
    entry = optimizer_state_to_canonical(optimizer, model)
    entry["m"]["nonexistent.weight"] = entry["v"]["nonexistent.weight"] = np.zeros(3)
    with pytest.raises(ValueError, match="unknown parameters"):
        load_canonical_optimizer_state(make_adamw(model), model, entry)


def test_no_pickle_anywhere(tmp_path, monkeypatch):
    """The checkpoint holds only JSON and safetensors, and loading never calls torch.load or pickle."""
    import pickle
    model, optimizer = trained_torch_model()
    save_training_checkpoint(tmp_path / "ckpt", model, optimizer, training_state={"step": 1})
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "config.json", "model.safetensors", "training_state.json", "training_state.safetensors"]

    def refuse(*args, **kwargs):
        raise AssertionError("unpickling attempted")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    fresh = GPTModel(CONFIG)
    load_training_checkpoint(tmp_path / "ckpt", fresh, make_adamw(fresh))


@pytest.mark.parametrize("use_sdpa", [False, True])
def test_built_model_is_a_complete_ordinary_model(tmp_path, use_sdpa):
    """load_model builds without a random init and adopts the loaded arrays: the tie must be one Parameter,
    the causal masks real, the init functions restored, and it must train like a GPTModel built as usual."""
    import torchgpt.gpt2
    from torchgpt.attention import causal_mask
    originals = (torch.nn.init.normal_, torch.nn.init.kaiming_uniform_, torchgpt.gpt2.init_weights)
    source = GPTModel(CONFIG, use_sdpa=use_sdpa, seed=3)
    save_training_checkpoint(tmp_path / "ckpt", source)
    model = load_model(tmp_path / "ckpt", use_sdpa=use_sdpa)
    assert (torch.nn.init.normal_, torch.nn.init.kaiming_uniform_, torchgpt.gpt2.init_weights) == originals
    assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])
    assert model.out_head.weight is model.tok_emb.weight
    assert len(list(model.parameters())) == len(list(source.parameters()))
    for block in model.blocks:
        assert torch.equal(block.att.mask, causal_mask(CONFIG.context_length))
    model.train()
    source.train()
    for m in (model, source):
        idx, targets = batches(1, seed=4)[0]
        cross_entropy(m(torch.from_numpy(idx)), torch.from_numpy(targets)).backward()
    for (name, p), (_, q) in zip(model.named_parameters(), source.named_parameters()):
        assert torch.equal(p.grad, q.grad), name
