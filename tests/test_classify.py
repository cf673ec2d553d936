"""SMS spam classification: the data pipeline (QUOTE_NONE row count, balancing, split, padding, errors),
the last-real-token property, metrics, trainable parts, both backends, and `gpt2 finetune classify` /
`gpt2 classify` end to end on a small subset of the real data (from scratch and --init-from a Hugging Face
checkpoint in the released layout)."""
from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import npgpt.classifier as npcls
import npgpt.model as npmodel
from gpt2cli.main import main
from gptcore.formats.checkpoint import load_checkpoint, read_checkpoint_metadata
from gptcore.tasks.classification_data import (PAD_TOKEN_ID, ClassificationDataError, EncodedMessages,
    balance_classes, classification_batches, encode_messages, pad_token_ids, read_sms_spam, split_frame)
from gptcore.engine.classification import ClassifierSettings, train_classifier
from npgpt.classifier_train import NumpyClassifierBackend
from gptcore.config import GPTConfig, get_config
from gptcore.tokenizer import get_tokenizer
from torchgpt.classifier import GPTClassifier, set_trainable
from torchgpt.classifier_train import TorchClassifierBackend
from torchgpt.model import load_numpy_params
from gptcore.tasks.classification import balanced_class_weights, classification_metrics, classifier_param_shapes, trainable_param_names

METRIC_KEYS = ("train_accuracy", "val_accuracy", "test_accuracy", "precision", "recall", "f1", "confusion_matrix")

pytestmark = pytest.mark.usefixtures("one_torch_thread")   # the CLI runs below also pass --threads 1


@pytest.fixture(scope="module")
def sms_file(shared_data_dir):
    return shared_data_dir / "sms_spam_collection" / "SMSSpamCollection"


@pytest.fixture(scope="module")
def subset_file(sms_file, tmp_path_factory):
    """40 spam + 48 ham lines of the real file, as they are there (balanced: 40 + 40, split 56 / 8 / 16)."""
    lines = sms_file.read_text(encoding="utf-8").splitlines(keepends=True)
    spam = [line for line in lines if line.startswith("spam\t")][:40]
    ham = [line for line in lines if line.startswith("ham\t")][:48]
    path = tmp_path_factory.mktemp("sms") / "subset.tsv"
    path.write_text("".join(ham[:24] + spam + ham[24:]), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------------------

def test_quote_none_reads_all_5574_messages(sms_file):
    frame = read_sms_spam(sms_file)
    assert len(frame) == 5574
    assert frame["label"].value_counts().to_dict() == {"ham": 4827, "spam": 747}
    # pandas' default quoting lets a stray `"` swallow the lines up to the next one: 2 messages disappear
    default = pd.read_csv(sms_file, sep="\t", header=None, names=["label", "text"])
    assert len(default) == 5572
    # a message with a quote in it comes back exactly as written in the file
    raw = sms_file.read_text(encoding="utf-8").splitlines()
    quoted = next(i for i, line in enumerate(raw) if line.split("\t", 1)[1].startswith('"'))
    assert frame["text"][quoted] == raw[quoted].split("\t", 1)[1]


def test_balanced_split_is_the_books_and_seeded(sms_file):
    frame = read_sms_spam(sms_file)
    balanced = balance_classes(frame, seed=123)
    assert balanced["label"].value_counts().to_dict() == {"ham": 747, "spam": 747}
    train, val, test = split_frame(balanced, seed=123)
    assert (len(train), len(val), len(test)) == (1045, 149, 300)
    lines = [set(part["line"]) for part in (train, val, test)]
    assert not (lines[0] & lines[1] or lines[0] & lines[2] or lines[1] & lines[2])
    again = split_frame(balance_classes(frame, seed=123), seed=123)
    assert list(again[0]["line"]) == list(train["line"])
    other = split_frame(balance_classes(frame, seed=7), seed=7)
    assert list(other[0]["line"]) != list(train["line"])


@pytest.mark.parametrize("content, error", [
    ("ham\tfine\nspam\tWIN now\nhma\ttypo in the label\n", r"line 3: label 'hma' is not one of ham, spam"),
    ("ham\tfine\nspam\t   \n", r"line 2: empty message"),
    # pandas skips blank lines by default, which would shift every later line number: they are rows here,
    # and a blank line between messages is itself reported as an empty message at its own line
    ("ham\tfine\n\n\nhma\ttypo in the label\n", r"line 4: label 'hma'"),
    ("ham\tfine\n\nspam\tWIN now\n", r"line 2: empty message"),
], ids=["bad-label", "empty-message", "line-numbers-count-blank-lines", "blank-line-between-messages"])
def test_bad_rows_name_file_and_line(tmp_path, content, error):
    path = tmp_path / "messages.tsv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ClassificationDataError, match=r"messages\.tsv, " + error):
        read_sms_spam(path)


def test_missing_data_file_says_how_to_fetch_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="gpt2 data fetch sms-spam"):
        read_sms_spam(tmp_path / "missing.tsv")


def test_blank_lines_at_the_end_of_a_file_are_ignored(tmp_path):
    trailing = tmp_path / "trailing.tsv"
    trailing.write_text("ham\tfine\nspam\tWIN now\n\n\n", encoding="utf-8")
    frame = read_sms_spam(trailing)
    assert frame["text"].tolist() == ["fine", "WIN now"] and frame["line"].tolist() == [1, 2]


def test_extra_tab_error_fits_a_users_data_file(tmp_path):
    """A parser error (here a tab inside a message) says what a line must look like and how to fix a file
    the user wrote, not only how to re-download the SMS collection."""
    tabbed = tmp_path / "mine.tsv"
    tabbed.write_text("ham\tfine\nspam\tWIN\tnow\n", encoding="utf-8")
    with pytest.raises(ClassificationDataError, match=r"mine\.tsv is not a UTF-8 `label<TAB>text` file "
                                                     r"\(.*line 2.*\); .*a tab inside a message.*fix the file"):
        read_sms_spam(tabbed)


def test_padding_and_truncation():
    ids, lengths, truncated = pad_token_ids([[5, 6, 7], [8]])
    assert ids.tolist() == [[5, 6, 7], [8, PAD_TOKEN_ID, PAD_TOKEN_ID]] and lengths.tolist() == [3, 1] and truncated == 0
    with pytest.warns(UserWarning, match="1 of 2 messages are longer than max_length=2 tokens"):
        ids, lengths, truncated = pad_token_ids([[5, 6, 7], [8]], max_length=2)
    assert ids.tolist() == [[5, 6], [8, PAD_TOKEN_ID]] and lengths.tolist() == [2, 1] and truncated == 1
    with pytest.warns(UserWarning, match="truncated"):                       # the context length caps the default
        assert pad_token_ids([[1] * 10], length_cap=4)[0].shape == (1, 4)
    with pytest.raises(ValueError, match="exceeds the model's context length 4"):
        pad_token_ids([[1]], max_length=5, length_cap=4)


def test_batches_are_cut_to_their_longest_message():
    data = EncodedMessages(ids=np.array([[1, 2, 9, 9], [3, 9, 9, 9], [4, 5, 6, 7]]), lengths=np.array([2, 1, 4]),
                           labels=np.array([0, 1, 1]))
    batches = list(classification_batches(data, 2))
    assert [b[0].tolist() for b in batches] == [[[1, 2], [3, 9]], [[4, 5, 6, 7]]]
    assert len(list(classification_batches(data, 2, drop_last=True))) == 1
    shuffled = [b[2].tolist() for b in classification_batches(data, 1, shuffle=True, seed=0, epoch=1)]
    assert sorted(sum(shuffled, [])) == [0, 1, 1]
    with pytest.raises(ValueError, match="fewer than batch_size=8"):
        list(classification_batches(data, 8, drop_last=True))


# ---------------------------------------------------------------------------------------------------------
# the model: last real token, trainable parts
# ---------------------------------------------------------------------------------------------------------

PROPERTY_CONFIG = GPTConfig(vocab_size=40, context_length=24, emb_dim=16, n_heads=2, n_layers=2, drop_rate=0.0,
                            qkv_bias=True, tie_weights=False)


@pytest.fixture(scope="module")
def property_models():
    _, params = npcls.classifier_from_lm_params(npmodel.init_params(PROPERTY_CONFIG, seed=1, dtype=np.float64),
                                                PROPERTY_CONFIG, 2, seed=1)
    for value in params.values():
        value *= 5.0   # larger weights: attention far from uniform, so a padding leak would show
    model = load_numpy_params(GPTClassifier(PROPERTY_CONFIG, 2).double(), params).eval()
    return params, model


@settings(max_examples=25, deadline=None, derandomize=True)
@given(message=st.lists(st.integers(0, 38), min_size=1, max_size=10), extra=st.integers(1, 14),
       other=st.integers(1, 24))
def test_logits_do_not_depend_on_trailing_padding(property_models, message, extra, other):
    """A message's logits are the same alone, followed by `extra` padding tokens, and in a batch padded to
    a longer neighbour, in both backends; reading position -1 instead would change them."""
    params, model = property_models
    pad = PROPERTY_CONFIG.vocab_size - 1
    n = len(message)
    alone = np.array([message])
    padded = np.array([message + [pad] * extra])
    width = max(n, other)
    batch = np.full((2, width), pad)
    batch[0, :n] = message
    batch[1, :other] = np.arange(other) % pad
    reference, _ = npcls.forward(params, alone, [n], PROPERTY_CONFIG)
    for ids, lengths in ((padded, [n]), (batch, [n, other])):
        logits, _ = npcls.forward(params, ids, lengths, PROPERTY_CONFIG)
        np.testing.assert_allclose(logits[0], reference[0], rtol=1e-12, atol=1e-12)
        with torch.no_grad():
            logits_t = model(torch.from_numpy(ids), torch.tensor(lengths)).numpy()
        np.testing.assert_allclose(logits_t[0], reference[0], rtol=1e-10, atol=1e-10)
    # The check can fail: the hidden state at the last position (a padding token) differs from the
    # last real token's, so a head reading position -1 would not be padding-invariant.
    x_padded, _ = npmodel.trunk_forward(params, padded, PROPERTY_CONFIG)
    x_alone, _ = npmodel.trunk_forward(params, alone, PROPERTY_CONFIG)
    assert not np.allclose(x_padded[0, -1], x_alone[0, -1], rtol=1e-6, atol=1e-6)


def test_trainable_parts_and_counts_for_gpt2_small():
    """The spam-task numbers LoRA is compared against (GPT-2 124M, 2 classes)."""
    config = get_config("gpt2-small").replace(tie_weights=False)
    shapes = classifier_param_shapes(config, 2)
    count = lambda names: sum(int(np.prod(shapes[name])) for name in names)
    head = trainable_param_names(config, "head")
    last = trainable_param_names(config, "last-k", 1)
    everything = trainable_param_names(config, "all")
    assert head == ["cls_head.weight", "cls_head.bias"]
    assert last[0] == "blocks.11.norm1.scale" and last[-3:] == ["final_norm.shift", "cls_head.weight", "cls_head.bias"]
    assert (count(head), count(last), count(everything)) == (1_538, 7_090_946, 124_441_346)
    assert count(trainable_param_names(config, "last-k", 2)) == 7_090_946 + 7_087_872
    with pytest.raises(ValueError, match="last_k must be between 1 and the number of blocks"):
        trainable_param_names(config, "last-k", 13)
    with pytest.raises(ValueError, match="trainable must be one of head, last-k, all"):
        trainable_param_names(config, "everything")


def test_state_dict_is_the_same_in_both_backends():
    config = get_config("tiny", vocab_size=50, context_length=8, emb_dim=8, n_heads=2, n_layers=2)
    classifier_config, params = npcls.classifier_from_lm_params(npmodel.init_params(config, seed=0), config, 3)
    assert classifier_config.tie_weights is False and "out_head.weight" not in params
    model = GPTClassifier(config, 3, seed=0)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == classifier_param_shapes(config, 3)
    load_numpy_params(model, params)
    assert set_trainable(model, trainable_param_names(classifier_config, "last-k")) == sum(
        params[name].size for name in trainable_param_names(classifier_config, "last-k"))
    with pytest.raises(ValueError, match="no parameters named"):
        set_trainable(model, ["out_head.weight"])
    with pytest.raises(ValueError, match="empty messages cannot be classified"):
        model(torch.tensor([[1, 2]]), torch.tensor([0]))


def test_metrics_on_a_known_example():
    true = [0, 0, 0, 1, 1, 1, 1]
    predicted = [0, 1, 0, 1, 1, 0, 1]
    metrics = classification_metrics(true, predicted)
    assert metrics["confusion_matrix"] == [[2, 1], [1, 3]]
    assert metrics["accuracy"] == pytest.approx(5 / 7)
    assert metrics["precision"] == pytest.approx(3 / 4) and metrics["recall"] == pytest.approx(3 / 4)
    assert metrics["f1"] == pytest.approx(3 / 4)
    nothing = classification_metrics([0, 0], [0, 0])
    assert (nothing["precision"], nothing["recall"], nothing["f1"]) == (0.0, 0.0, 0.0)
    weights = balanced_class_weights(np.array([0, 0, 0, 1]), 2)
    np.testing.assert_allclose(weights, [4 / 6, 4 / 2])
    with pytest.raises(ValueError, match="every class needs at least one training example"):
        balanced_class_weights(np.array([0, 0]), 2)


@pytest.mark.filterwarnings("ignore:.*truncated to their first")
def test_backends_train_alike(subset_file):
    """Same start, same batches: the NumPy and torch backends follow the same losses (float32)."""
    frame = balance_classes(read_sms_spam(subset_file), seed=1)
    train, val, test = split_frame(frame, seed=1)
    tokenizer = get_tokenizer()
    data = [encode_messages(part, tokenizer, max_length=32) for part in (train, val, test)]
    config = get_config("tiny", context_length=32, emb_dim=16, n_heads=2, n_layers=2)
    classifier_config, params = npcls.classifier_from_lm_params(npmodel.init_params(config, seed=0), config, 2)
    names = trainable_param_names(classifier_config, "last-k")
    train_settings = ClassifierSettings(epochs=1, batch_size=8, lr=1e-3, eval_interval=3, eval_batches=1, seed=4)
    weights = np.array([0.8, 1.3])
    histories, trained = {}, {}
    for backend in (NumpyClassifierBackend({k: v.copy() for k, v in params.items()}, classifier_config, 2),
                    TorchClassifierBackend(params, classifier_config, 2)):
        backend.prepare_training(names, train_settings, weights)
        histories[backend.name] = train_classifier(backend, *data, train_settings, class_weights=weights,
                                                   progress=False)
        trained[backend.name] = backend.numpy_params()
    numpy_losses = [entry["train_loss"] for entry in histories["numpy"]["steps"]]
    torch_losses = [entry["train_loss"] for entry in histories["torch"]["steps"]]
    assert len(numpy_losses) == 56 // 8
    np.testing.assert_allclose(numpy_losses[0], torch_losses[0], rtol=1e-5)
    np.testing.assert_allclose(numpy_losses, torch_losses, rtol=1e-3)
    assert histories["numpy"]["steps"][2]["val_loss"] == pytest.approx(histories["torch"]["steps"][2]["val_loss"], rel=1e-3)
    np.testing.assert_allclose(histories["numpy"]["test_logits"], histories["torch"]["test_logits"], atol=1e-3)
    for name in params:   # frozen parameters stayed put, trained ones moved, in both
        for backend_name, backend_params in trained.items():
            assert np.array_equal(backend_params[name], params[name]) == (name not in names), (backend_name, name)


# ---------------------------------------------------------------------------------------------------------
# the commands, end to end
# ---------------------------------------------------------------------------------------------------------

def finetune(capsys, out, *extra):
    code = main(["finetune", "classify", "--out", str(out), "--quiet", "--threads", "1", *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def classify(capsys, monkeypatch, *args, stdin=None):
    if stdin is not None:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    code = main(["classify", "--threads", "1", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def scratch_run(subset_file, tmp_path_factory):
    """A tiny model trained from scratch on the subset for one short epoch (torch backend)."""
    out = tmp_path_factory.mktemp("run") / "spam"
    code = main(["finetune", "classify", "--model", "tiny", "--data-file", str(subset_file), "--out", str(out),
                 "--epochs", "2", "--lr", "1e-3", "--trainable", "all", "--eval-interval", "3", "--eval-batches", "1",
                 "--seed", "3", "--quiet", "--threads", "1"])
    assert code == 0
    return out


def test_finetune_writes_checkpoint_metrics_plots_and_log(scratch_run):
    metrics = json.loads((scratch_run / "metrics.json").read_text())
    for key in METRIC_KEYS:
        assert key in metrics
    for key in ("train_accuracy", "val_accuracy", "test_accuracy", "precision", "recall", "f1"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["split_sizes"] == {"train": 56, "val": 8, "test": 16}
    matrix = np.array(metrics["confusion_matrix"])
    assert matrix.shape == (2, 2) and matrix.sum() == 16
    assert metrics["test_accuracy"] == pytest.approx(np.trace(matrix) / 16)
    assert metrics["trainable_params"] == metrics["total_params"]
    assert [e["epoch"] for e in metrics["history"]["epochs"]] == [1, 2]
    assert [e["step"] for e in metrics["history"]["steps"] if "val_loss" in e] == [3, 6, 9, 12]
    log = [json.loads(line) for line in (scratch_run / "metrics.jsonl").read_text().splitlines()]   # gptcore.formats.runs.RunLog
    assert [entry["step"] for entry in log] == list(range(1, 15))
    assert [entry["step"] for entry in log if "test_accuracy" in entry] == [7, 14]
    assert log[-1]["test_accuracy"] == metrics["test_accuracy"]
    assert "test_accuracy" in (scratch_run / "metrics.csv").read_text().splitlines()[0]
    assert json.loads((scratch_run / "config.json").read_text())["task"] == "classification"
    for plot in ("loss.png", "accuracy.png"):
        assert (scratch_run / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    config, params, state = load_checkpoint(scratch_run / "model")
    meta = read_checkpoint_metadata(scratch_run / "model" / "model.safetensors")   # the file alone suffices
    assert meta["task"] == "classification" and meta["labels"] == ["ham", "spam"]
    assert meta["max_length"] == metrics["max_length"] <= config.context_length
    assert state is None and "out_head.weight" not in params and params["cls_head.weight"].shape == (2, 64)
    model = GPTClassifier(config, 2)
    load_numpy_params(model, params)   # the saved state dict loads into torch as it is


def test_classify_prints_label_and_probability(scratch_run, capsys, monkeypatch):
    message = "WINNER!! You have won a free prize. Text CLAIM to 80082 now"
    code, out, _ = classify(capsys, monkeypatch, "--checkpoint", str(scratch_run), message)
    assert code == 0
    label, probability = out.strip().split("\t")
    assert label in ("ham", "spam") and 0.5 <= float(probability) <= 1.0
    # the model file, the numpy backend: the same answer
    code, out_numpy, _ = classify(capsys, monkeypatch, "--checkpoint", str(scratch_run / "model" / "model.safetensors"),
                                  "--backend", "numpy", message)
    assert out_numpy.split("\t")[0] == label
    assert float(out_numpy.split("\t")[1]) == pytest.approx(float(probability), abs=2e-4)
    # stdin: one line out per line in, starting with the label
    lines = ["See you at 6 at the usual place?", message, "Ok lor"]
    code, out, _ = classify(capsys, monkeypatch, "--checkpoint", str(scratch_run / "model"), stdin="\n".join(lines) + "\n")
    rows = out.splitlines()
    assert code == 0 and len(rows) == 3
    assert rows[1].split("\t")[0] == label and rows[1].endswith(message)
    assert all(row.split("\t")[0] in ("ham", "spam") and row.split("\t")[2] == text for row, text in zip(rows, lines))


def test_classify_errors(scratch_run, tmp_path, capsys, monkeypatch):
    code, _, err = classify(capsys, monkeypatch, "--checkpoint", str(scratch_run), "   ")
    assert code == 2 and "the message is empty" in err
    code, _, err = classify(capsys, monkeypatch, "--checkpoint", str(scratch_run), stdin="hello\n\nthere\n")
    assert code == 2 and "stdin line 2 is empty" in err and len(err.strip().splitlines()) == 1
    code, _, err = classify(capsys, monkeypatch, "--checkpoint", str(tmp_path / "nothing"), "hi")
    assert code == 2 and "no checkpoint at" in err
    from gptcore.formats.checkpoint import save_checkpoint
    config = get_config("tiny", vocab_size=50, context_length=8, emb_dim=8, n_heads=2, n_layers=1)
    save_checkpoint(tmp_path / "lm", npmodel.init_params(config), config)
    code, _, err = classify(capsys, monkeypatch, "--checkpoint", str(tmp_path / "lm"), "hi")
    assert code == 2 and "is not a classifier checkpoint" in err


def test_finetune_numpy_backend_last_block_class_weighted(subset_file, tmp_path, capsys):
    """--backend numpy finetunes the last block + final norm + head of a small model; --no-balance keeps
    every message and weights the loss by class."""
    code, out, err = finetune(capsys, tmp_path / "np", "--backend", "numpy", "--model", "tiny", "--data-file",
                              str(subset_file), "--no-balance", "--epochs", "1", "--lr", "1e-3",
                              "--max-length", "24", "--eval-interval", "2", "--eval-batches", "1")
    assert code == 0, err
    assert "truncated to their first 24 tokens" in err and "Traceback" not in err
    metrics = json.loads((tmp_path / "np" / "metrics.json").read_text())
    assert metrics["backend"] == "numpy" and metrics["balanced"] is False and metrics["max_length"] == 24
    assert metrics["split_sizes"] == {"train": 61, "val": 8, "test": 19}            # 88 messages, 70/10/20
    train_frame, _, _ = split_frame(read_sms_spam(subset_file), seed=123)
    n_spam = int((train_frame["label"] == "spam").sum())
    assert metrics["class_weights"] == pytest.approx([61 / (2 * (61 - n_spam)), 61 / (2 * n_spam)])
    block = sum(int(np.prod(s)) for name, s in classifier_param_shapes(get_config("tiny"), 2).items()
                if name.startswith("blocks.1."))
    assert metrics["trainable_params"] == block + 2 * 64 + (2 * 64 + 2)
    for key in METRIC_KEYS:
        assert key in metrics


def test_finetune_init_from_hugging_face_checkpoint(subset_file, tmp_path, capsys, monkeypatch):
    """--init-from a GPT-2 in the released Hugging Face layout (config.json + model.safetensors, Conv1D
    weights, fused c_attn): the classifier starts from exactly those weights; with --trainable head the
    trunk is saved unchanged and only the head moved."""
    from gptcore.formats.weights import load_weights
    from tests.fake_checkpoints import openai_hparams, openai_to_hf_tensors, random_openai_tensors, write_hf_checkpoint

    hparams = openai_hparams(n_vocab=50257, n_ctx=48, n_embd=16, n_head=2, n_layer=2)
    folder = write_hf_checkpoint(tmp_path / "hf-gpt2", hparams, openai_to_hf_tensors(random_openai_tensors(hparams, 0), hparams))
    code, out, err = finetune(capsys, tmp_path / "run", "--init-from", str(folder), "--data-file", str(subset_file),
                              "--trainable", "head", "--epochs", "1", "--lr", "1e-2", "--eval-interval", "5")
    assert code == 0, err
    assert f"--init-from {folder}" in out
    _, pretrained = load_weights(folder)
    config, params, _ = load_checkpoint(tmp_path / "run" / "model")
    assert config.emb_dim == 16 and config.n_layers == 2 and config.context_length == 48 and config.qkv_bias
    for name, value in pretrained.items():
        if name != "out_head.weight":
            np.testing.assert_array_equal(params[name], value, err_msg=name)
    assert np.abs(params["cls_head.bias"]).max() > 0   # the head trained (it starts at 0)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["trainable_params"] == 2 * 16 + 2 and metrics["init"] == f"--init-from {folder}"
    # a classifier run folder is itself a valid --init-from (continue training): the head is kept
    code, _, err = finetune(capsys, tmp_path / "again", "--init-from", str(tmp_path / "run"), "--data-file",
                            str(subset_file), "--trainable", "head", "--epochs", "1", "--lr", "1e-9")
    assert code == 0, err
    _, again, _ = load_checkpoint(tmp_path / "again" / "model")
    np.testing.assert_allclose(again["cls_head.weight"], params["cls_head.weight"], atol=1e-6)
    code, _, err = finetune(capsys, tmp_path / "bad", "--init-from", str(folder), "--model", "gpt2-small",
                            "--data-file", str(subset_file))
    assert code == 2 and "does not match the weights" in err
    small_vocab = openai_hparams(n_vocab=61, n_ctx=16, n_embd=8, n_head=2, n_layer=1)
    folder = write_hf_checkpoint(tmp_path / "hf-61", small_vocab,
                                 openai_to_hf_tensors(random_openai_tensors(small_vocab, 0), small_vocab))
    code, _, err = finetune(capsys, tmp_path / "bad", "--init-from", str(folder), "--data-file", str(subset_file))
    assert code == 2 and "vocabulary has 61 tokens" in err


def test_finetune_init_from_a_train_run_folder(subset_file, tmp_path, capsys):
    """--init-from the --out folder of `gpt2 train`: its config.json holds the run's settings (not a Hugging
    Face config) and its weights are in checkpoints/step-*; the classifier starts from the newest one."""
    from gptcore.formats.runs import RUN_CONFIG_FILE, list_checkpoints

    pretrain = tmp_path / "pretrain"
    assert main(["train", "--model", "tiny", "--max-steps", "2", "--checkpoint-interval", "1", "--batch-size", "2",
                 "--eval-batches", "1", "--device", "cpu", "--quiet", "--token-cache", str(tmp_path / "tokens"),
                 "--out", str(pretrain)]) == 0
    steps = [step for step, _ in list_checkpoints(pretrain)]
    assert steps == [1, 2]
    code, out, err = finetune(capsys, tmp_path / "run", "--init-from", str(pretrain), "--data-file", str(subset_file),
                              "--trainable", "head", "--epochs", "1", "--batch-size", "28", "--lr", "1e-2")
    assert code == 0, err
    _, newest, _ = load_checkpoint(list_checkpoints(pretrain)[-1][1], load_training_state=False)
    _, oldest, _ = load_checkpoint(list_checkpoints(pretrain)[0][1], load_training_state=False)
    _, params, _ = load_checkpoint(tmp_path / "run" / "model")
    for name, value in newest.items():
        if name != "out_head.weight":
            np.testing.assert_array_equal(params[name], value, err_msg=name)
    assert not np.array_equal(params["tok_emb.weight"], oldest["tok_emb.weight"])   # step 2 moved it
    # a run folder that has not saved a checkpoint yet says so
    empty_run = tmp_path / "empty-run"
    empty_run.mkdir()
    (empty_run / RUN_CONFIG_FILE).write_bytes((pretrain / RUN_CONFIG_FILE).read_bytes())
    code, _, err = finetune(capsys, tmp_path / "bad", "--init-from", str(empty_run), "--data-file", str(subset_file))
    assert code == 2 and "run folder without a checkpoint yet" in err, err


def test_finetune_input_errors(subset_file, tmp_path, capsys, monkeypatch, http_server):
    bad = tmp_path / "bad.tsv"
    bad.write_text(subset_file.read_text(encoding="utf-8") + "spamm\tFREE entry\n", encoding="utf-8")
    code, _, err = finetune(capsys, tmp_path / "a", "--data-file", str(bad), "--model", "tiny")
    assert code == 2 and "bad.tsv, line 89: label 'spamm'" in err and len(err.strip().splitlines()) == 1
    code, _, err = finetune(capsys, tmp_path / "b", "--data-file", str(subset_file), "--model", "tiny",
                            "--max-length", "65")
    assert code == 2 and "exceeds the model's context length 64" in err
    code, _, err = finetune(capsys, tmp_path / "c", "--data-file", str(subset_file), "--model", "tiny", "--epochs", "0")
    assert code == 2 and "epochs must be a positive integer" in err
    code, _, err = finetune(capsys, tmp_path / "d", "--data-file", str(subset_file), "--model", "tiny",
                            "--backend", "numpy", "--device", "cuda")
    assert code == 2 and "--backend numpy runs on the CPU" in err
    # a corrupt download of the SMS zip (its member is not the published file): one line, exit 2
    import zipfile
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("SMSSpamCollection", "ham\tnot the real data\n")
    http_server.add("/sms+spam+collection.zip", buffer.getvalue())
    monkeypatch.setenv("GPT2_DATA_BASE_URL", http_server.base_url)
    code, _, err = finetune(capsys, tmp_path / "e", "--data-dir", str(tmp_path / "data"), "--model", "tiny")
    assert code == 2 and "is not the published file" in err and len(err.strip().splitlines()) == 1
    # a local copy with the wrong hash
    (tmp_path / "data2" / "sms_spam_collection").mkdir(parents=True)
    (tmp_path / "data2" / "sms_spam_collection" / "SMSSpamCollection").write_text("ham\thello\n")
    code, _, err = finetune(capsys, tmp_path / "f", "--data-dir", str(tmp_path / "data2"), "--model", "tiny")
    assert code == 2 and "is not the published" in err and "gpt2 data fetch sms-spam" in err


# ---------------------------------------------------------------------------------------------------------
# slow: the OpenAI TensorFlow layout (TensorFlow's import alone takes seconds) and the >= 95% evidence run
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_finetune_init_from_openai_checkpoint(subset_file, tmp_path, capsys):
    """--init-from an OpenAI TF checkpoint folder (hparams.json + model.ckpt.*), as `gpt2 weights download`
    leaves it: the trunk the classifier starts from is exactly the checkpoint's."""
    from gptcore.formats.weights import load_weights
    from tests.fake_checkpoints import openai_hparams, random_openai_tensors, write_openai_checkpoint

    hparams = openai_hparams(n_vocab=50257, n_ctx=48, n_embd=16, n_head=2, n_layer=2)
    folder = write_openai_checkpoint(tmp_path / "124M", hparams, random_openai_tensors(hparams, 1))
    code, _, err = finetune(capsys, tmp_path / "run", "--init-from", str(folder), "--data-file", str(subset_file),
                            "--trainable", "head", "--epochs", "1", "--lr", "1e-2")
    assert code == 0, err
    _, pretrained = load_weights(folder)
    _, params, _ = load_checkpoint(tmp_path / "run" / "model")
    for name, value in pretrained.items():
        if name != "out_head.weight":
            np.testing.assert_array_equal(params[name], value, err_msg=name)


@pytest.mark.slow
def test_from_scratch_reaches_95_percent(tmp_path, capsys):
    """The documented evidence run (docs/classification.md): a tiny GPT trained from scratch, all layers,
    on the balanced split reaches >= 95% test accuracy (measured: 96.33% at seed 123; seeds 1 and 2 and the
    NumPy backend 95.67-96.33%). lr 5e-4 for 8 epochs: at 1e-3 for 5 epochs the result swung between
    epochs (89.7-95.0%) and ended at 94.67%."""
    code, _, err = finetune(capsys, tmp_path / "run", "--model", "tiny", "--trainable", "all", "--lr", "5e-4",
                            "--epochs", "8")
    assert code == 0, err
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["test_accuracy"] >= 0.95
