"""Spam classification from a pretrained Llama (issue 16): `gpt2 finetune classify --init-from GGUF` reads the
messages with the file's own tokenizer and keeps it in the run, so `gpt2 classify --checkpoint RUN` labels new
messages with the same ids; and the frozen bottom blocks run once per message (ClassifierFeed), giving the
losses and accuracies of the uncached loop.

The Llama here is random and tiny, written to a GGUF in tmp with llama.cpp's layout (tests/test_gguf.py's
permutation) and a small byte-level BPE (256 byte symbols, three merges, three special tokens); one @slow test
runs the real SmolLM2 file on a small subset."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch

import npgpt.classifier as npcls
from gpt2cli.main import main
from gptcore.config import GPTConfig, get_config
from gptcore.engine.classification import ClassifierSettings, train_classifier
from gptcore.formats.checkpoint import CheckpointError, load_checkpoint, read_checkpoint_metadata, save_checkpoint
from gptcore.formats.gguf import load_gguf_tokenizer
from gptcore.formats.llama_release import save_hf_llama
from gptcore.formats.weights import load_weights
from gptcore.lora import LoRAConfig, trainable_params
from gptcore.tasks.classification import frozen_block_count, softmax_probabilities, trainable_param_names
from gptcore.tasks.classification_data import EncodedMessages
from gptcore.tasks.classification_tokenizer import TOKENIZER_FILE
from gptcore.tokenizer import bytes_to_unicode
from npgpt.classifier import classifier_from_lm_params
from npgpt.classifier_train import NumpyClassifierBackend
from npgpt.lora import add_lora
from npgpt.model import init_params
from tests.test_gguf import random_params
from tests.tiny_models import write_llama_gguf
from torchgpt.classifier_train import TorchClassifierBackend

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]      # ids 0, 1, 2 as in SmolLM2
MERGES = [("Ġ", "t"), ("h", "e"), ("Ġt", "he")]
TOKENS = SPECIALS + list(bytes_to_unicode().values()) + ["".join(pair) for pair in MERGES]
LLAMA = GPTConfig(arch="llama", vocab_size=len(TOKENS), context_length=96, emb_dim=32, n_heads=4, n_kv_heads=2,
                  n_layers=3, ff_dim=48, rope_theta=10000.0, norm_eps=1e-5, drop_rate=0.0, tie_weights=True)


@pytest.fixture(scope="module")
def llama_gguf(tmp_path_factory):
    params = {name: value * np.float32(0.2) for name, value in random_params(LLAMA, seed=5).items()}
    return write_llama_gguf(tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf", LLAMA, params, tokens=TOKENS,
                            merges=MERGES, n_specials=len(SPECIALS), eos_id=2)


@pytest.fixture(scope="module")
def small_sms_file(shared_data_dir, tmp_path_factory):
    """16 spam + 16 ham lines of the real file (balanced 16 + 16, split 22 / 3 / 7)."""
    lines = (shared_data_dir / "sms_spam_collection" / "SMSSpamCollection").read_text(encoding="utf-8").splitlines(
        keepends=True)
    spam = [line for line in lines if line.startswith("spam\t")][:16]
    ham = [line for line in lines if line.startswith("ham\t")][:16]
    path = tmp_path_factory.mktemp("sms") / "small.tsv"
    path.write_text("".join(ham[:8] + spam + ham[8:]), encoding="utf-8")
    return path


def run_cli(capsys, *argv, stdin=None, monkeypatch=None):
    if stdin is not None:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    code = main([*argv, "--threads", "1"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ---------------------------------------------------------------------------------------------------------
# the model's tokenizer, in the run
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["torch", "numpy"])
def test_finetune_from_a_gguf_reads_and_keeps_its_tokenizer(capsys, monkeypatch, tmp_path, llama_gguf,
                                                             small_sms_file, backend):
    out = tmp_path / "run"
    code, printed, err = run_cli(capsys, "finetune", "classify", "--init-from", str(llama_gguf), "--data",
                                 str(small_sms_file), "--out", str(out), "--epochs", "2", "--batch-size", "4",
                                 "--lr", "1e-3", "--backend", backend, "--quiet")
    assert code == 0, err
    assert f"the tokenizer of {llama_gguf.name}" in printed and "frozen blocks 0-1 ran once per message" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["test_accuracy"] <= 1.0 and metrics["frozen_blocks_cached"] == 2
    assert (out / "accuracy.png").is_file() and (out / "loss.png").is_file()
    # what trained: the last block, the final norm and the new head (the book's recipe), nothing else
    config, params, _ = load_checkpoint(out / "model", load_training_state=False)
    start = classifier_from_lm_params(load_weights(llama_gguf)[1], LLAMA, 2, seed=123)[1]
    changed = {name for name in params if not np.array_equal(params[name], start[name])}
    assert changed == set(trainable_param_names(config, "last-k", 1))

    # the run keeps the file's tokenizer: `gpt2 classify` gives the probability of the GGUF tokenizer's ids
    metadata = read_checkpoint_metadata(out / "model")
    assert metadata["tokenizer"] == TOKENIZER_FILE and metadata["pad_token_id"] == 0
    assert (out / "model" / TOKENIZER_FILE).is_file()
    message = "the prize is yours, text the word WIN to 80086"
    tokenizer = load_gguf_tokenizer(llama_gguf)
    ids = np.array([tokenizer.encode(message)])
    assert ids.max() >= 256    # a merge of this vocabulary: GPT-2's ids would differ (and overflow it)
    expected = softmax_probabilities(npcls.forward(params, ids, np.array([ids.shape[1]]), config)[0].astype(np.float64))[0]
    code, printed, err = run_cli(capsys, "classify", "--checkpoint", str(out), message, "--backend", backend)
    assert code == 0, err
    label, probability = printed.split()
    assert label == ("ham", "spam")[int(expected.argmax())]
    assert float(probability) == pytest.approx(expected.max(), abs=1e-4)
    # stdin, and the model.safetensors file alone (its folder holds the tokenizer)
    code, printed, err = run_cli(capsys, "classify", "--checkpoint", str(out / "model" / "model.safetensors"),
                                 stdin=f"{message}\nsee you at 5\n", monkeypatch=monkeypatch)
    assert code == 0, err
    assert printed.splitlines()[0].split("\t")[:2] == [label, probability]


@pytest.mark.parametrize("backend", ["torch", "numpy"])
@pytest.mark.parametrize("what", [("--trainable", "all"), ("--lora-rank", "2")])
def test_full_and_lora_finetuning_of_a_gguf_llama(capsys, tmp_path, llama_gguf, small_sms_file, backend, what):
    out = tmp_path / "run"
    code, printed, err = run_cli(capsys, "finetune", "classify", "--init-from", str(llama_gguf), "--data",
                                 str(small_sms_file), "--out", str(out), "--epochs", "1", "--batch-size", "4",
                                 "--lr", "1e-3", "--backend", backend, "--quiet", *what)
    assert code == 0, err
    assert "ran once per message" not in printed          # block 0 trains: nothing to cache
    config, params, _ = load_checkpoint(out / "model", load_training_state=False)
    start = classifier_from_lm_params(load_weights(llama_gguf)[1], LLAMA, 2, seed=123)[1]
    changed = {name for name in params if not np.array_equal(params[name], start[name])}
    if what[0] == "--trainable":
        assert changed == set(params)
    else:   # LoRA merged into attention and feed-forward of every block, and the head; norms and embedding kept
        assert "blocks.0.att.W_query.weight" in changed and "blocks.2.ff.down.weight" in changed
        assert not changed & {"tok_emb.weight", "final_norm.scale", "blocks.0.norm1.scale"}
        assert (out / "lora_adapter").is_dir()
    assert read_checkpoint_metadata(out / "model")["tokenizer"] == TOKENIZER_FILE


def test_a_run_without_its_tokenizer_file_is_refused_by_name(capsys, tmp_path, llama_gguf, small_sms_file):
    out = tmp_path / "run"
    assert run_cli(capsys, "finetune", "classify", "--init-from", str(llama_gguf), "--data", str(small_sms_file),
                   "--out", str(out), "--epochs", "1", "--batch-size", "4", "--trainable", "head", "--quiet")[0] == 0
    (out / "model" / TOKENIZER_FILE).unlink()
    code, _, err = run_cli(capsys, "classify", "--checkpoint", str(out), "hello")
    assert code == 2 and f"the checkpoint's tokenizer {TOKENIZER_FILE!r} is missing" in err


def test_gpt2_tokenizer_on_a_small_vocabulary_names_the_fix(capsys, tmp_path, small_sms_file):
    """A model without a tokenizer of its own reads GPT-2's ids: a vocabulary smaller than GPT-2's is refused."""
    folder = tmp_path / "ckpt"
    config = get_config("tiny-llama").replace(vocab_size=300)
    save_checkpoint(folder, init_params(config, seed=0), config)
    code, _, err = run_cli(capsys, "finetune", "classify", "--init-from", str(folder), "--data", str(small_sms_file),
                           "--out", str(tmp_path / "run"), "--quiet")
    assert code == 2 and "vocabulary has 300 tokens" in err and "GPT-2's tokenizer" in err


def test_checkpoint_extra_files_cannot_replace_its_own():
    with pytest.raises(CheckpointError, match="plain file name"):
        save_checkpoint("/nonexistent/x", {}, LLAMA, extra_json={"config.json": {}})


# ---------------------------------------------------------------------------------------------------------
# the frozen bottom, computed once per message
# ---------------------------------------------------------------------------------------------------------

def test_frozen_block_count_follows_what_trains():
    config = get_config("tiny-llama").replace(n_layers=4)
    assert frozen_block_count(config, trainable_param_names(config, "last-k", 1)) == 3
    assert frozen_block_count(config, trainable_param_names(config, "last-k", 3)) == 1
    assert frozen_block_count(config, trainable_param_names(config, "head")) == 4
    assert frozen_block_count(config, trainable_param_names(config, "all")) == 0
    gpt2 = get_config("tiny").replace(n_layers=4)
    assert frozen_block_count(gpt2, trainable_param_names(gpt2, "last-k", 2)) == 2
    assert frozen_block_count(gpt2.replace(drop_rate=0.1), trainable_param_names(gpt2, "last-k", 2)) == 0
    params = add_lora(classifier_from_lm_params(init_params(config, seed=0), config, 2)[1],
                      LoRAConfig(rank=2, alpha=2.0, targets=("attention",)))
    assert frozen_block_count(config, list(trainable_params(params))) == 0


def random_split(rng, n, config, width=10):
    lengths = rng.integers(1, width + 1, n).astype(np.int64)
    ids = rng.integers(0, config.vocab_size, (n, width)).astype(np.int64)
    ids[np.arange(width)[None, :] >= lengths[:, None]] = 0          # padding after each message
    return EncodedMessages(ids, lengths, rng.integers(0, 2, n).astype(np.int64))


class CountingBackend:
    """Wraps a classifier backend: counts the messages its frozen bottom sees and the whole-model calls."""

    def __init__(self, backend):
        self.inner, self.frozen_messages, self.whole_model_calls = backend, 0, 0
        self.name, self.num_classes, self.frozen_blocks = backend.name, backend.num_classes, backend.frozen_blocks

    def frozen_hidden(self, ids, lengths):
        self.frozen_messages += len(lengths)
        return self.inner.frozen_hidden(ids, lengths)

    def train_step(self, *args):
        self.whole_model_calls += 1
        return self.inner.train_step(*args)

    def logits(self, *args):
        self.whole_model_calls += 1
        return self.inner.logits(*args)

    def train_step_from_hidden(self, *args):
        return self.inner.train_step_from_hidden(*args)

    def logits_from_hidden(self, *args):
        return self.inner.logits_from_hidden(*args)


@pytest.mark.parametrize("backend_class", [NumpyClassifierBackend, TorchClassifierBackend])
@pytest.mark.parametrize("preset,trainable", [("tiny-llama", "last-k"), ("tiny", "last-k"), ("tiny-llama", "head")])
def test_cached_frozen_blocks_give_the_uncached_losses_and_run_once_per_message(backend_class, preset, trainable):
    config = get_config(preset).replace(n_layers=3)
    classifier_config, params = classifier_from_lm_params(init_params(config, seed=1, dtype=np.float64), config, 2,
                                                          seed=1)
    rng = np.random.default_rng(0)
    splits = [random_split(rng, n, config) for n in (12, 5, 7)]
    settings = ClassifierSettings(epochs=3, batch_size=4, lr=3e-3, eval_interval=2, eval_batches=2, seed=2)
    names = trainable_param_names(classifier_config, trainable, 1)
    weights = np.array([0.7, 1.6])
    histories, backends = [], []
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        for cache in (False, True):
            backend = backend_class({k: v.copy() for k, v in params.items()}, classifier_config, 2)
            backend.prepare_training(names, settings, weights)
            backend = CountingBackend(backend)
            histories.append(train_classifier(backend, *splits, settings, class_weights=weights, progress=False,
                                              cache_frozen=cache))
            backends.append(backend)
    finally:
        torch.set_default_dtype(previous)
    uncached, cached = histories
    assert (uncached["frozen_blocks"], cached["frozen_blocks"]) == (0, 3 if trainable == "head" else 2)
    # the frozen part ran exactly once per message, and the whole model never ran once it was cached
    assert backends[1].frozen_messages == sum(len(split) for split in splits) and backends[1].whole_model_calls == 0
    assert backends[0].frozen_messages == 0 and backends[0].whole_model_calls > 0
    # float64: the same losses, evaluation losses, accuracies and final logits (rounding apart)
    for key in ("train_loss", "eval_train_loss", "val_loss"):
        a = [step[key] for step in uncached["steps"] if key in step]
        b = [step[key] for step in cached["steps"] if key in step]
        assert len(a) == len(b) > 0 and np.allclose(a, b, rtol=1e-10, atol=0)
    for key in ("train_accuracy", "val_accuracy", "test_accuracy"):
        assert [e[key] for e in uncached["epochs"]] == [e[key] for e in cached["epochs"]]
    np.testing.assert_allclose(cached["test_logits"], uncached["test_logits"], rtol=1e-10, atol=1e-12)
    assert uncached["steps"][-1]["train_loss"] != uncached["steps"][0]["train_loss"]   # it did train


def test_dropout_turns_the_cache_off():
    config = get_config("tiny").replace(n_layers=2, drop_rate=0.1)
    classifier_config, params = classifier_from_lm_params(init_params(config, seed=1), config, 2)
    backend = NumpyClassifierBackend(params, classifier_config, 2)
    settings = ClassifierSettings(epochs=1, batch_size=4)
    backend.prepare_training(trainable_param_names(classifier_config, "last-k", 1), settings)
    rng = np.random.default_rng(0)
    history = train_classifier(backend, *(random_split(rng, n, config) for n in (4, 2, 2)), settings, progress=False)
    assert history["frozen_blocks"] == 0


@pytest.mark.parametrize("preset", ["tiny", "tiny-llama"])
def test_bottom_then_top_is_the_whole_trunk_in_both_twins(preset):
    from npgpt import model as npmodel
    from torchgpt import build_model, load_numpy_params
    config = get_config(preset).replace(n_layers=3)
    params = init_params(config, seed=4, dtype=np.float64)
    idx = np.random.default_rng(1).integers(0, config.vocab_size, (2, 9))
    whole = npmodel.trunk_forward(params, idx, config)[0]
    for cut in (0, 1, 3):
        top = npmodel.trunk_top_forward(params, npmodel.trunk_bottom_infer(params, idx, config, cut), config, cut)[0]
        np.testing.assert_allclose(top, whole, rtol=1e-12, atol=1e-12)
    model = load_numpy_params(build_model(config).double(), params).eval()
    with torch.no_grad():
        for cut in (0, 2, 3):
            top = model.trunk_top(model.trunk_bottom(torch.from_numpy(idx), cut), cut).numpy()
            np.testing.assert_allclose(top, whole, rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="first_block must be an integer in"):
        npmodel.trunk_bottom_infer(params, idx, config, 4)


# ---------------------------------------------------------------------------------------------------------
# the real SmolLM2 file, end to end on a small subset
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_real_smollm2_classifier_end_to_end(capsys, tmp_path, small_sms_file):
    out = tmp_path / "smollm2"
    code, printed, err = run_cli(capsys, "finetune", "classify", "--init-from", "smollm2-135m-instruct", "--data",
                                 str(small_sms_file), "--out", str(out), "--epochs", "1", "--batch-size", "4",
                                 "--quiet")
    assert code == 0, err
    assert "the tokenizer of SmolLM2-135M-Instruct.Q4_1.gguf" in printed
    assert "frozen blocks 0-28 ran once per message" in printed
    metadata = read_checkpoint_metadata(out / "model")
    assert metadata["pad_token_id"] == 0 and metadata["tokenizer"] == TOKENIZER_FILE
    code, printed, err = run_cli(capsys, "classify", "--checkpoint", str(out), "Free entry! Text WIN to 80086 now")
    assert code == 0, err
    assert printed.split()[0] in ("ham", "spam")


def test_a_hugging_face_llama_folder_is_refused_with_the_gguf_as_the_fix(capsys, tmp_path, small_sms_file):
    """A classifier keeps its tokenizer in the GGUF metadata form: a Hugging Face Llama folder cannot give one."""
    folder = save_hf_llama(tmp_path / "hf-llama", LLAMA, random_params(LLAMA, seed=6))
    code, _, err = run_cli(capsys, "finetune", "classify", "--init-from", str(folder), "--data", str(small_sms_file),
                           "--out", str(tmp_path / "run"), "--quiet")
    assert code == 2 and "is a Hugging Face Llama folder" in err and "--init-from the model's GGUF file" in err
    assert not (tmp_path / "run" / "metrics.json").exists()
