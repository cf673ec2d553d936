"""LoRA and the classification head on Llama models: npgpt's hand-written backward against torchgpt (add_lora
on build_model's LlamaModel; LlamaClassifier) on the same parameter dict; gradients only for what trains."""
import numpy as np
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import npgpt.classifier as npcls
import npgpt.model as npmodel
import torchgpt.classifier as tcls
import torchgpt.lora as tlora
from gptcore.config import get_config
from gptcore.lora import LoRAConfig, trainable_grads, trainable_params
from gptcore.tasks.classification import first_trained_block, trainable_param_names
from npgpt.loss import cross_entropy_backward, cross_entropy_forward
from parity_tests.conftest import (assert_close, assert_grads_close, budget, dtypes, nudged_params, record_example,
                                   torch_with_reference, weights)
from parity_tests.test_classifier import draw_lengths
from parity_tests.test_llama_model import random_llama_params, small_llama_configs
from parity_tests.test_lora import random_adapters
from torchgpt.model import build_model, load_numpy_params

LLAMA_TARGETS = [("attention",), ("feedforward",), ("head",), ("attention", "feedforward", "head"),
                 ("W_key", "gate", "down")]


@budget(10)
@given(config=small_llama_configs(), B=st.integers(1, 3), targets=st.sampled_from(LLAMA_TARGETS),
       rank=st.integers(1, 4), seed=st.integers(0, 2**16), dtype=dtypes)
def test_llama_model_with_lora(config, B, targets, rank, seed, dtype):
    """npgpt.model with adapters in the params = torch LlamaModel after add_lora: same loss and logits, the same
    adapter gradients, and gradients ONLY for the adapters in both."""
    record_example()
    lora_config = LoRAConfig(rank=rank, alpha=2.0 * rank, targets=targets)
    base = random_llama_params(config, seed, dtype)
    params = {**base, **random_adapters(base, lora_config, seed, dtype)}
    rng = np.random.default_rng(seed)
    T = config.context_length
    idx, target_ids = rng.integers(0, config.vocab_size, (B, T)), rng.integers(0, config.vocab_size, (B, T))
    logits, cache = npmodel.forward(params, idx, config)
    loss, loss_cache = cross_entropy_forward(logits, target_ids)
    logits = logits.copy()
    grads = trainable_grads(npmodel.backward(cross_entropy_backward(loss_cache), cache))

    def run(tdtype):
        model = build_model(config).to(tdtype)
        tlora.add_lora(model, lora_config)
        load_numpy_params(model, nudged_params(params))
        logits_t = model(torch.from_numpy(idx))
        loss_t = F.cross_entropy(logits_t.reshape(-1, config.vocab_size), torch.from_numpy(target_ids).reshape(-1))
        loss_t.backward()
        assert [n for n, p in model.named_parameters() if not p.requires_grad and p.grad is not None] == []
        return {"loss": loss_t, "logits": logits_t}, {n: p.grad for n, p in model.named_parameters() if p.requires_grad}

    (expected, expected_grads), reference = torch_with_reference(run, dtype)
    reference_values, reference_grads = reference or ({"loss": None, "logits": None}, None)
    assert sorted(grads) == sorted(expected_grads) == sorted(trainable_params(params))
    assert any(".ff." in name for name in grads) == ("feedforward" in targets or "gate" in targets)
    assert_close(np.asarray(loss, dtype), expected["loss"], name="llama lora loss", reference=reference_values["loss"])
    assert_close(logits, expected["logits"], name="llama lora logits", reference=reference_values["logits"])
    assert_grads_close(grads, expected_grads, references=reference_grads, prefix="llama lora ")


@budget(10)
@given(config=small_llama_configs(), B=st.integers(1, 3), K=st.integers(2, 4),
       trainable=st.sampled_from(["head", "last-k", "all"]), seed=st.integers(0, 2**16), dtype=dtypes)
def test_llama_classifier(config, B, K, trainable, seed, dtype):
    """npgpt.classifier on a Llama trunk = torchgpt's LlamaClassifier (build_classifier) + autograd: the same
    logits and loss, gradients for exactly the trainable parameters."""
    record_example()
    lm = random_llama_params(config, seed, dtype)
    classifier_config, params = npcls.classifier_from_lm_params(lm, config, K, seed)
    params["cls_head.weight"] += weights(np.random.default_rng(seed), (K, config.emb_dim), dtype, std=0.3)
    rng = np.random.default_rng(seed + 1)
    T = config.context_length
    idx, lengths, labels = rng.integers(0, config.vocab_size, (B, T)), draw_lengths(rng, B, T), rng.integers(0, K, B)
    names = trainable_param_names(classifier_config, trainable, int(rng.integers(1, config.n_layers + 1)))
    loss, grads = npcls.loss_and_grads(params, idx, lengths, labels, classifier_config, trainable_names=names)
    logits, _ = npcls.forward(params, idx, lengths, classifier_config)
    assert list(grads) == names

    def run(tdtype):
        model = tcls.build_classifier(config, K).to(tdtype)
        assert type(model) is tcls.LlamaClassifier
        load_numpy_params(model, nudged_params(params))
        tcls.set_trainable(model, names)
        logits_t = model(torch.from_numpy(idx), torch.from_numpy(lengths))
        loss_t = tcls.class_weighted_cross_entropy(logits_t, torch.from_numpy(labels))
        loss_t.backward()
        return {"logits": logits_t, "loss": loss_t}, {n: p.grad for n, p in model.named_parameters() if p.requires_grad}

    (expected, grads_t), reference = torch_with_reference(run, dtype)
    reference_values, reference_grads = reference or ({"logits": None, "loss": None}, None)
    assert_close(logits, expected["logits"], name="llama classifier logits", reference=reference_values["logits"])
    assert_close(np.array(loss, dtype=dtype), expected["loss"], name="llama classifier loss",
                 reference=reference_values["loss"])
    assert_grads_close(grads, grads_t, references=reference_grads, prefix="llama classifier ")


def test_first_trained_block_knows_llama_names():
    """Llama has one embedding (no position table) and a shift-less final norm: both still reach the right block."""
    record_example()
    config = get_config("tiny-llama")
    assert first_trained_block(config, ["tok_emb.weight"]) == 0
    assert first_trained_block(config, ["blocks.1.ff.down.weight", "final_norm.scale"]) == 1
    assert first_trained_block(config, ["final_norm.scale", "cls_head.weight"]) == config.n_layers
    assert first_trained_block(config, ["cls_head.weight"]) is None
