"""LoRA behaviour in both backends: merge/unmerge round trips, trainable-parameter counts, saving and loading
adapters alone, frozen base weights during training, and the errors for bad settings and files."""
import json
import re

import numpy as np
import pytest
import torch

import npgpt.lora as nplora
import npgpt.model as npmodel
import torchgpt.lora as tlora
from gptcore.config import GPTConfig
from npgpt.optim import AdamW
from torchgpt import GPTModel, load_numpy_params, to_numpy_params
from gptcore.lora import LoRAConfig, adapted_layers, count_trainable_params, is_adapter_name, linear_layer_names, load_lora, save_lora, select_layers, trainable_grads, trainable_params
from gptcore.arch import embedding_names, lora_target_groups, param_shapes, spec_for

CONFIG = GPTConfig(vocab_size=40, context_length=12, emb_dim=16, n_heads=2, n_layers=2, drop_rate=0.0,
                   qkv_bias=True, tie_weights=False)
ALL = ("attention", "feedforward", "head")
IDX = np.array([[1, 5, 9, 3, 7, 2], [0, 4, 8, 12, 16, 20]])


def adapted_params(dtype=np.float64, targets=ALL, rank=3, config=CONFIG, seed=0):
    """Base params + adapters whose B is random (so the adapters do change the model)."""
    base = npmodel.init_params(config, seed=seed, dtype=dtype)
    adapters = nplora.init_lora(base, LoRAConfig(rank=rank, alpha=6.0, targets=targets), seed=seed)
    rng = np.random.default_rng(seed + 7)
    for name in adapters:
        if name.endswith(".lora_B"):
            adapters[name] = (rng.standard_normal(adapters[name].shape) * 0.2).astype(dtype)
    return base, adapters


def test_target_groups_and_embeddings_come_from_the_spec():
    """The groups and the embeddings LoRA leaves alone are the architecture spec's; without a config,
    every architecture's merged, which picks the same layers of a GPT-2."""
    spec = spec_for(CONFIG)
    assert lora_target_groups(CONFIG) == spec.LORA_TARGET_GROUPS
    assert embedding_names(CONFIG) == spec.EMBEDDINGS
    base = npmodel.init_params(CONFIG, seed=0)
    layers = linear_layer_names(base, CONFIG)
    assert layers == linear_layer_names(base)
    assert not any(f"{layer}.weight" in spec.EMBEDDINGS for layer in layers)
    for group in spec.LORA_TARGET_GROUPS:
        assert select_layers(layers, (group,), CONFIG) == select_layers(layers, (group,))
    with pytest.raises(ValueError, match="matches no linear layer"):
        select_layers(layers, ("cls_head",), CONFIG)


def test_target_selection_and_naming():
    base = npmodel.init_params(CONFIG, seed=0)
    layers = linear_layer_names(base)
    assert select_layers(layers, ("attention",)) == [
        f"blocks.{i}.att.{p}" for i in range(2) for p in ("W_query", "W_key", "W_value", "out_proj")]
    assert select_layers(layers, ("feedforward", "head")) == [
        "blocks.0.ff.fc1", "blocks.0.ff.fc2", "blocks.1.ff.fc1", "blocks.1.ff.fc2", "out_head"]
    assert select_layers(layers, ("W_value", "blocks.1.ff.*")) == [
        "blocks.0.att.W_value", "blocks.1.att.W_value", "blocks.1.ff.fc1", "blocks.1.ff.fc2"]
    adapters = nplora.init_lora(base, LoRAConfig(rank=4, alpha=8, targets=("W_query",)))
    assert sorted(adapters) == sorted(f"blocks.{i}.att.W_query.lora_{s}" for i in range(2)
                                      for s in ("A", "B", "scaling"))
    assert adapters["blocks.0.att.W_query.lora_A"].shape == (4, 16)
    assert adapters["blocks.0.att.W_query.lora_B"].shape == (16, 4)
    assert float(adapters["blocks.0.att.W_query.lora_scaling"]) == 2.0
    # torch's add_lora picks the same layers and its state_dict uses the same names
    model = tlora.add_lora(GPTModel(CONFIG, seed=0), LoRAConfig(rank=4, alpha=8, targets=("W_query",)))
    assert sorted(tlora.lora_state_dict(model)) == sorted(adapters)
    assert list(tlora.lora_layers(model)) == ["blocks.0.att.W_query", "blocks.1.att.W_query"]


@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-12), (np.float32, 1e-5)])
def test_npgpt_merge_unmerge_round_trip(dtype, tol):
    base, adapters = adapted_params(dtype)
    params = {**base, **adapters}
    merged = nplora.merge_lora(params)
    assert not any(is_adapter_name(name) for name in merged)
    assert merged["blocks.0.att.W_query.weight"] is not base["blocks.0.att.W_query.weight"]   # input unchanged
    adapted_logits, _ = npmodel.forward(params, IDX, CONFIG)
    merged_logits, _ = npmodel.forward(merged, IDX, CONFIG)
    scale = np.abs(adapted_logits).max()
    assert np.abs(merged_logits - adapted_logits).max() <= tol * scale
    base_logits, _ = npmodel.forward(base, IDX, CONFIG)
    assert np.abs(base_logits - adapted_logits).max() > 100 * tol * scale     # the adapters do matter
    back = nplora.unmerge_lora(merged, adapters)
    assert sorted(back) == sorted(params)
    for name, value in base.items():
        assert back[name].dtype == dtype
        np.testing.assert_allclose(back[name], value, rtol=0, atol=tol * max(1.0, np.abs(value).max()))


def test_torch_merge_equals_npgpt_merge_and_unmerges():
    base, adapters = adapted_params(np.float64)
    params = {**base, **adapters}
    lora_config = LoRAConfig(rank=3, alpha=6.0, targets=ALL)
    model = load_numpy_params(tlora.add_lora(GPTModel(CONFIG).double(), lora_config), params).eval()
    adapted = model(torch.from_numpy(IDX)).detach()
    saved_adapters = tlora.lora_state_dict(model)
    tlora.merge_lora(model)
    assert not tlora.lora_layers(model) and not tlora.lora_state_dict(model)
    assert sorted(model.state_dict()) == sorted(param_shapes(CONFIG))      # a plain GPTModel again
    torch.testing.assert_close(model(torch.from_numpy(IDX)), adapted, rtol=0, atol=1e-12)
    merged_np = nplora.merge_lora(params)
    for name, value in to_numpy_params(model).items():
        np.testing.assert_allclose(value, merged_np[name], rtol=0, atol=1e-14)
    tlora.unmerge_lora(model, saved_adapters)
    for name, value in to_numpy_params(model).items():
        np.testing.assert_allclose(value, params[name], rtol=0, atol=1e-14)
    torch.testing.assert_close(model(torch.from_numpy(IDX)), adapted, rtol=0, atol=1e-12)


def test_layer_merge_twice_is_a_no_op_and_forward_is_unchanged():
    linear = torch.nn.Linear(6, 4).double()
    layer = tlora.LoRALinear(linear, rank=2, alpha=4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(3, 6, dtype=torch.float64)
    before = layer(x).detach()
    layer.merge()
    layer.merge()
    torch.testing.assert_close(layer(x), before)
    layer.unmerge()
    layer.unmerge()
    torch.testing.assert_close(layer(x), before)


def test_merging_a_tied_head_adapter_is_refused_in_both():
    tied = CONFIG.replace(tie_weights=True)
    base, adapters = adapted_params(targets=("head",), config=tied)
    with pytest.raises(ValueError, match="tied"):
        nplora.merge_lora({**base, **adapters})
    model = tlora.add_lora(GPTModel(tied, seed=0), LoRAConfig(rank=2, alpha=2, targets=("head",)))
    assert model.out_head.weight is model.tok_emb.weight               # the tie survives the wrapping
    with pytest.raises(ValueError, match="tied"):
        tlora.merge_lora(model)


def test_trainable_parameter_counts():
    r = 3
    base, adapters = adapted_params(rank=r)
    C, F, V = CONFIG.emb_dim, CONFIG.ff_dim, CONFIG.vocab_size
    per_block = 4 * r * (C + C) + r * (C + F) + r * (F + C)          # q, k, v, out_proj; fc1; fc2
    expected = CONFIG.n_layers * per_block + r * (C + V)            # + head
    assert count_trainable_params({**base, **adapters}) == expected
    model = tlora.add_lora(GPTModel(CONFIG, seed=0), LoRAConfig(rank=r, alpha=6, targets=ALL))
    assert tlora.count_trainable_params(model) == expected
    summary = tlora.trainable_summary(model)
    assert summary["total"] == npmodel.count_params(base) + expected
    assert summary["trainable"] == expected


def test_save_load_round_trip_across_backends(tmp_path):
    base, adapters = adapted_params(np.float32)
    lora_config = LoRAConfig(rank=3, alpha=6.0, targets=ALL)
    save_lora(tmp_path / "np", {**base, **adapters}, lora_config, metadata={"run": "test"})
    saved = json.loads((tmp_path / "np" / "adapter_config.json").read_text())
    assert saved["rank"] == 3 and saved["alpha"] == 6.0 and saved["targets"] == list(ALL)
    assert saved["layers"] == adapted_layers(adapters)
    assert saved["trainable_params"] == count_trainable_params(adapters)
    from safetensors.numpy import load_file
    stored = load_file(str(tmp_path / "np" / "adapter.safetensors"))
    assert all(name.endswith((".lora_A", ".lora_B")) for name in stored)   # adapters alone, no base weights
    loaded_config, loaded = load_lora(tmp_path / "np")
    assert loaded_config == lora_config
    assert sorted(loaded) == sorted(adapters)
    for name, value in adapters.items():
        np.testing.assert_array_equal(loaded[name], value)

    # torch reads npgpt's files and writes files npgpt reads
    model = tlora.load_lora(tmp_path / "np", load_numpy_params(GPTModel(CONFIG), base)).eval()
    expected, _ = npmodel.forward({**base, **adapters}, IDX, CONFIG)
    np.testing.assert_allclose(model(torch.from_numpy(IDX)).detach().numpy(), expected, rtol=0, atol=1e-5)
    tlora.save_lora(tmp_path / "torch", model, lora_config)
    _, again = load_lora(tmp_path / "torch")
    for name, value in adapters.items():
        np.testing.assert_array_equal(again[name], value)


def test_load_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        load_lora(tmp_path)
    base, adapters = adapted_params(np.float32)
    save_lora(tmp_path / "a", adapters, LoRAConfig(rank=3, alpha=6.0, targets=ALL))
    (tmp_path / "a" / "adapter_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a valid adapter config"):
        load_lora(tmp_path / "a")
    save_lora(tmp_path / "b", adapters, LoRAConfig(rank=3, alpha=6.0, targets=ALL))
    (tmp_path / "b" / "adapter.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        load_lora(tmp_path / "b")
    save_lora(tmp_path / "c", adapters, LoRAConfig(rank=3, alpha=6.0, targets=ALL))
    wider = npmodel.init_params(CONFIG.replace(emb_dim=24, n_heads=2), seed=0)
    _, loaded = load_lora(tmp_path / "c")
    with pytest.raises(ValueError, match="another model size"):
        nplora.attach_lora(wider, loaded)
    with pytest.raises(ValueError, match="another model size"):
        tlora.load_lora(tmp_path / "c", GPTModel(CONFIG.replace(emb_dim=24, n_heads=2)))


@pytest.mark.parametrize("settings, message", [
    (dict(rank=0), "rank must be a positive integer"),
    (dict(rank=2.5), "rank must be a positive integer"),
    (dict(alpha=-1), "alpha must be a positive number"),
    (dict(targets=()), "targets must be non-empty"),
])
def test_bad_settings(settings, message):
    with pytest.raises(ValueError, match=message):
        LoRAConfig(**settings)


def test_unknown_target_and_double_wrapping():
    base = npmodel.init_params(CONFIG, seed=0)
    with pytest.raises(ValueError, match="matches no linear layer"):
        nplora.init_lora(base, LoRAConfig(targets=("W_nothing",)))
    with pytest.raises(ValueError, match="already carry"):
        nplora.init_lora(nplora.add_lora(base, LoRAConfig()), LoRAConfig())
    model = tlora.add_lora(GPTModel(CONFIG, seed=0), LoRAConfig())
    with pytest.raises(ValueError, match="already carries"):
        tlora.add_lora(model, LoRAConfig())


def test_training_moves_only_the_adapters_in_both_backends():
    """A few AdamW steps on the adapters lower the loss; every base weight stays bit-identical."""
    lora_config = LoRAConfig(rank=2, alpha=4.0, targets=ALL)
    base = npmodel.init_params(CONFIG, seed=1)
    frozen_copy = {name: value.copy() for name, value in base.items()}
    params = nplora.add_lora(base, lora_config, seed=1)
    trainable = trainable_params(params)
    optimizer = AdamW(lr=1e-2, weight_decay=0.0)
    losses = []
    for _ in range(8):
        loss, grads = npmodel.loss_and_grads(params, IDX, np.roll(IDX, -1, axis=1), CONFIG)
        optimizer.step(trainable, trainable_grads(grads))
        losses.append(loss)
    assert losses[-1] < losses[0]
    for name, value in frozen_copy.items():
        np.testing.assert_array_equal(params[name], value)

    model = load_numpy_params(GPTModel(CONFIG), frozen_copy)
    tlora.add_lora(model, lora_config, seed=1)
    torch_optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    idx, targets = torch.from_numpy(IDX), torch.from_numpy(np.roll(IDX, -1, axis=1))
    torch_losses = []
    for _ in range(8):
        loss = torch.nn.functional.cross_entropy(model(idx).reshape(-1, CONFIG.vocab_size), targets.reshape(-1))
        torch_optimizer.zero_grad()
        loss.backward()
        torch_optimizer.step()
        torch_losses.append(loss.item())
    assert torch_losses[-1] < torch_losses[0]
    after = to_numpy_params(model)
    for name, value in frozen_copy.items():
        np.testing.assert_array_equal(after[name], value)


def test_npgpt_generation_applies_a_head_adapter():
    """Generation with adapters on every layer, the head included, chooses the merged model's tokens."""
    import npgpt.generate as npgen
    base, adapters = adapted_params(np.float64, targets=ALL)
    expected = npgen.generate(nplora.merge_lora({**base, **adapters}), CONFIG, [1, 2, 3], 6, stop_ids=())
    assert npgen.generate({**base, **adapters}, CONFIG, [1, 2, 3], 6, stop_ids=()) == expected
    head_only = {k: v for k, v in adapters.items() if k.startswith("out_head.")}
    assert npgen.generate({**base, **head_only}, CONFIG, [1, 2, 3], 6, stop_ids=()) == \
        npgen.generate(nplora.merge_lora({**base, **head_only}), CONFIG, [1, 2, 3], 6, stop_ids=())


@pytest.mark.parametrize("config_name, trained, head_dw", [
    ("untied", "adapters", False),             # LoRA on attention and feed-forward: the head is frozen
    ("tied", "adapters", False),
    ("tied", "embedding", True),               # tied: training the embedding needs the head's weight gradient
    ("untied", "embedding", False),            # untied: it does not
    ("untied", "head", True),
    ("llama", "adapters", False),
    ("untied", "head-adapters", False),        # an adapter on the head: its A, B and dx, the base still frozen
    ("tied", "head-adapters", False),
])
def test_trainable_names_give_the_same_gradients_without_the_frozen_head_gemm(config_name, trained, head_dw,
                                                                              monkeypatch):
    """loss_and_grads(trainable_names=...) returns exactly the full backward's gradients of those names, and
    computes the head's (V, C) weight gradient only when a trained name needs it."""
    from gptcore.config import get_config
    import npgpt.linear as nplinear

    config = {"untied": CONFIG, "tied": CONFIG.replace(tie_weights=True),
              "llama": get_config("tiny-llama").replace(drop_rate=0.0)}[config_name]
    targets = ALL if trained == "head-adapters" else ("attention", "feedforward")
    base, adapters = adapted_params(config=config, targets=targets)
    params = {**base, **adapters}
    adapter_names = sorted(n for n in adapters if not n.endswith("lora_scaling"))
    names = {"adapters": adapter_names, "head-adapters": adapter_names,
             "embedding": ["tok_emb.weight"], "head": ["out_head.weight"]}[trained]
    if trained == "head-adapters":
        assert "out_head.lora_A" in names
    idx = IDX % config.vocab_size
    _, full = npmodel.loss_and_grads(params, idx, np.roll(idx, -1, axis=1), config)

    head_weight_gradients = []
    real_backward = nplinear.linear_backward

    def spy(dout, cache, frozen=False):
        if cache.weight is params["out_head.weight"]:
            head_weight_gradients.append(not frozen)
        return real_backward(dout, cache, frozen=frozen)

    monkeypatch.setattr(nplinear, "linear_backward", spy)
    _, some = npmodel.loss_and_grads(params, idx, np.roll(idx, -1, axis=1), config, trainable_names=names)
    assert sorted(some) == sorted(names)
    for name in names:
        np.testing.assert_array_equal(some[name], full[name])
    assert head_weight_gradients == [head_dw]


def test_a_frozen_plain_layer_gives_dx_only_and_never_touches_its_input():
    """frozen=True: dx = dout W and no weight gradient at all (the input x, which only dW reads, is not read)."""
    import npgpt.linear as nplinear

    class Unreadable:                              # stands in for x: its shape is known, reading it fails
        shape = (2, 3, 4)

        def reshape(self, *args):
            raise AssertionError("frozen backward read the layer's input")

    weight = np.arange(20.0).reshape(5, 4)
    dout = np.ones((2, 3, 5))
    cache = nplinear.LinearCache(x=Unreadable(), weight=weight, has_bias=True)
    dx, dweight, dbias = nplinear.linear_backward(dout, cache, frozen=True)
    np.testing.assert_array_equal(dx, dout @ weight)
    assert dweight is None and dbias is None
    layer_cache = nplinear.LinearLayerCache(name="out_head", base=cache, lora=None)
    dx, grads = nplinear.linear_layer_backward(dout, layer_cache, frozen=True)
    assert grads == {} and dx.shape == (2, 3, 4)


def test_instruct_backend_asks_for_its_trainable_gradients_only(monkeypatch):
    """npgpt's instruction backend passes its trainable names to the backward (so a LoRA step skips the head's
    weight gradient) and keeps exactly those gradients."""
    import npgpt.instruct as npinstruct
    from gptcore.engine.training import TrainSettings

    base, adapters = adapted_params(targets=("attention",))
    params = {**base, **adapters}
    names = sorted(n for n in adapters if not n.endswith("lora_scaling"))
    batches = [(IDX, np.roll(IDX, -1, axis=1))]
    asked = []
    real = npmodel.loss_and_grads

    def spy(*args, **kwargs):
        asked.append(kwargs.get("trainable_names"))
        return real(*args, **kwargs)

    monkeypatch.setattr(npinstruct.model, "loss_and_grads", spy)
    backend = npinstruct.InstructionBackend(params, CONFIG, lambda epoch: iter(batches), TrainSettings(),
                                            trainable=names)
    backend.compute_gradients()
    assert asked == [names] and sorted(backend.grads) == names


@pytest.mark.parametrize("name", ["blocks.0.att.W_qery.lora_A", "blocks.0.att.W_query.weight",
                                  "blocks.0.att.W_query.lora_scaling"])
def test_trainable_names_without_a_gradient_are_an_error_that_names_them(name):
    """A misspelt name, a LoRA-adapted layer's frozen weight or the adapters' constant scaling: no gradient
    exists for it, and saying so beats returning a dict without it."""
    base, adapters = adapted_params(targets=("attention",))
    with pytest.raises(ValueError, match=re.escape(name)):
        npmodel.loss_and_grads({**base, **adapters}, IDX, np.roll(IDX, -1, axis=1), CONFIG,
                               trainable_names=["blocks.0.att.W_key.lora_A", name])
