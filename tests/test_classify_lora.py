"""`gpt2 finetune classify --lora-rank`: LoRA adapters on the classifier in both backends (same losses from
the same start), only the adapters move, the saved model is the plain merged classifier plus the adapter
files, and the option errors."""
from __future__ import annotations

import json

import numpy as np
import pytest

import npgpt.classifier as npcls
import npgpt.lora as nplora
import npgpt.model as npmodel
from gpt2cli.main import main
from gptcore.formats.checkpoint import load_checkpoint
from gptcore.tasks.classification_data import balance_classes, encode_messages, read_sms_spam, split_frame
from gptcore.engine.classification import ClassifierSettings, train_classifier
from npgpt.classifier_train import NumpyClassifierBackend
from gptcore.config import get_config
from gptcore.tokenizer import get_tokenizer
from torchgpt.classifier_train import TorchClassifierBackend
from gptcore.lora import LoRAConfig, count_trainable_params, is_adapter_name, load_lora, trainable_params

pytestmark = pytest.mark.usefixtures("one_torch_thread")
ALL = ("attention", "feedforward", "head")


@pytest.fixture(scope="module")
def subset_file(shared_data_dir, tmp_path_factory):
    """24 spam + 24 ham messages of the real file (split 33 / 4 / 11)."""
    lines = (shared_data_dir / "sms_spam_collection" / "SMSSpamCollection").read_text(encoding="utf-8").splitlines(True)
    spam = [line for line in lines if line.startswith("spam\t")][:24]
    ham = [line for line in lines if line.startswith("ham\t")][:24]
    path = tmp_path_factory.mktemp("sms") / "subset.tsv"
    path.write_text("".join(ham + spam), encoding="utf-8")
    return path


@pytest.mark.filterwarnings("ignore:.*truncated")
def test_lora_backends_train_alike_and_move_only_adapters(subset_file):
    frame = balance_classes(read_sms_spam(subset_file), seed=1)
    tokenizer = get_tokenizer()
    data = [encode_messages(part, tokenizer, max_length=24) for part in split_frame(frame, seed=1)]
    config = get_config("tiny", context_length=24, emb_dim=16, n_heads=2, n_layers=2)
    cls_config, base = npcls.classifier_from_lm_params(npmodel.init_params(config, seed=0), config, 2)
    lora_config = LoRAConfig(rank=2, alpha=4.0, targets=ALL)
    params = nplora.add_lora(base, lora_config, seed=3)
    names = list(trainable_params(params))
    assert "cls_head.lora_A" in names and "blocks.1.ff.fc2.lora_B" in names
    settings = ClassifierSettings(epochs=1, batch_size=8, lr=1e-2, eval_interval=2, eval_batches=1, seed=4)
    histories, trained = {}, {}
    for backend in (NumpyClassifierBackend({k: v.copy() for k, v in params.items()}, cls_config, 2),
                    TorchClassifierBackend(params, cls_config, 2)):
        backend.prepare_training(names, settings)
        histories[backend.name] = train_classifier(backend, *data, settings, progress=False)
        trained[backend.name] = backend.numpy_params()
    numpy_losses = [e["train_loss"] for e in histories["numpy"]["steps"]]
    torch_losses = [e["train_loss"] for e in histories["torch"]["steps"]]
    np.testing.assert_allclose(numpy_losses[0], torch_losses[0], rtol=1e-5)
    np.testing.assert_allclose(numpy_losses, torch_losses, rtol=1e-3)
    np.testing.assert_allclose(histories["numpy"]["test_logits"], histories["torch"]["test_logits"], atol=1e-3)
    for backend_name, values in trained.items():
        assert sorted(values) == sorted(params)
        for name in base:
            np.testing.assert_array_equal(values[name], base[name], err_msg=f"{backend_name} moved {name}")
        assert not np.array_equal(values["blocks.0.att.W_query.lora_B"], params["blocks.0.att.W_query.lora_B"])


def test_cli_lora_run_saves_merged_classifier_and_adapters(subset_file, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["finetune", "classify", "--model", "tiny", "--data-file", str(subset_file), "--out", str(out),
                 "--epochs", "1", "--lr", "1e-2", "--lora-rank", "4", "--lora-alpha", "8", "--eval-interval", "2",
                 "--eval-batches", "1", "--seed", "3", "--quiet", "--threads", "1"])
    assert code == 0, capsys.readouterr().err
    assert "trains LoRA r=4 alpha=8 on attention, feedforward, head" in capsys.readouterr().out
    config = get_config("tiny")
    C, F, L = config.emb_dim, config.ff_dim, config.n_layers
    expected = L * (4 * 4 * (C + C) + 4 * (C + F) + 4 * (F + C)) + 4 * (C + 2)     # blocks + the 2-class head
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["trainable_params"] == expected
    assert metrics["lora"] == {"rank": 4, "alpha": 8.0, "targets": list(ALL)}
    lora_config, adapters = load_lora(out / "lora_adapter")
    assert lora_config.rank == 4 and count_trainable_params(adapters) == expected
    cls_config, merged, _ = load_checkpoint(out / "model", load_training_state=False)
    assert not any(is_adapter_name(name) for name in merged)                 # a plain classifier
    start_config, start = npcls.classifier_from_lm_params(npmodel.init_params(config, seed=3), config, 2, seed=3)
    np.testing.assert_array_equal(merged["tok_emb.weight"], start["tok_emb.weight"])  # never adapted, frozen
    np.testing.assert_array_equal(merged["blocks.0.norm1.scale"], start["blocks.0.norm1.scale"])
    unmerged = nplora.unmerge_lora(merged, adapters)                                 # merged = start + s B A
    for name in ("blocks.0.att.W_query.weight", "cls_head.weight"):
        np.testing.assert_allclose(unmerged[name], start[name], rtol=0, atol=1e-6)
        assert not np.allclose(merged[name], start[name], rtol=0, atol=1e-6)


@pytest.mark.parametrize("extra, message", [
    (["--lora-rank", "4", "--trainable", "all"], "--lora-rank trains the LoRA adapters only"),
    (["--lora-alpha", "8"], "--lora-alpha needs --lora-rank"),
    (["--lora-rank", "0"], "rank must be a positive integer"),
    (["--lora-rank", "2", "--lora-targets", "nothing"], "matches no linear layer"),
])
def test_cli_lora_option_errors(subset_file, tmp_path, capsys, extra, message):
    code = main(["finetune", "classify", "--model", "tiny", "--data-file", str(subset_file), "--out",
                 str(tmp_path / "r"), "--quiet", *extra])
    assert code == 2
    assert message in capsys.readouterr().err
