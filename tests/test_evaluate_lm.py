"""`gpt2 evaluate-lm`: a model's loss and perplexity on a text (gptcore/engine/lm_evaluation.py).

Oracle: Hugging Face transformers' own models (GPT2LMHeadModel, LlamaForCausalLM) loading the same weights
from the Hugging Face folders our writer makes, each window's loss computed by transformers from labels (it
shifts them itself), summed over the windows: an independent forward, loss and windowing.

Tolerances: the two backends run float32 and sum in different orders; each token's log-probability differs by
~1e-7 relative, and a mean over hundreds of tokens keeps that size, so 1e-5 of the loss is generous without
hiding a real difference (a wrong window, a dropped token or a shifted target moves the loss by >1e-3).
"""
from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from gpt2cli.main import main
from gptcore.datasets import fetch
from gptcore.engine.lm_evaluation import evaluate_language_model, evaluation_windows, window_batches
from gptcore.formats.weights import load_weights, load_weights_tokenizer, save_weights
from tests.tiny_models import write_tiny_gpt2, write_tiny_llama_gguf

BACKEND_TOLERANCE = 1e-5        # relative, float32 against float32 (see the module docstring)
ORACLE_TOLERANCE = 1e-5         # relative, ours (float32) against transformers (float32)


def cli_loss(capsys, *args) -> tuple[float, float, int]:
    assert main(["evaluate-lm", *map(str, args)]) == 0
    out = capsys.readouterr().out
    match = re.search(r"loss (\S+)  perplexity (\S+)  \(([\d,]+) predicted tokens", out)
    assert match, out
    return float(match[1]), float(match[2]), int(match[3].replace(",", ""))


def test_windows_predict_every_token_after_the_first_exactly_once():
    ids = np.arange(11)
    windows = evaluation_windows(ids, 4)
    assert [(list(X), list(Y)) for X, Y in windows] == [([0, 1, 2, 3], [1, 2, 3, 4]), ([4, 5, 6, 7], [5, 6, 7, 8]),
                                                         ([8, 9], [9, 10])]
    batches = list(window_batches(windows, 2))
    assert [X.shape for X, _ in batches] == [(2, 4), (1, 2)]


def test_the_mean_weighs_each_token_once_whatever_the_batching():
    # A fake backend whose loss per token is the target id: the mean must be the mean of ids[1:].
    ids = np.arange(2, 40)
    fake = lambda X, Y: float(Y.sum())    # noqa: E731
    for context, batch in ((5, 1), (5, 3), (37, 2), (100, 4)):
        result = evaluate_language_model(fake, ids, context, batch)
        assert result.loss == pytest.approx(ids[1:].mean(), rel=1e-15)
        assert result.tokens == len(ids) - 1


def transformers_loss(folder, ids, context, model_class) -> float:
    """Mean next-token loss of `ids` by transformers: each window fed with its next token, labels = inputs."""
    model = model_class.from_pretrained(str(folder), torch_dtype=torch.float32).eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(ids) - 1, context):
            chunk = torch.tensor([ids[start:start + context + 1]])
            loss = model(input_ids=chunk, labels=chunk).loss            # mean over chunk.shape[1] - 1 predictions
            total += float(loss) * (chunk.shape[1] - 1)
            count += chunk.shape[1] - 1
    return total / count


@pytest.fixture(scope="module")
def verdict_start():
    return fetch("the-verdict").read_text(encoding="utf-8")[:3000]


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_loss_equals_transformers_on_the_same_tokens_in_both_backends(arch, tmp_path, capsys, verdict_start):
    from transformers import GPT2LMHeadModel, LlamaForCausalLM

    path = (write_tiny_gpt2(tmp_path / "gpt2") if arch == "gpt2" else write_tiny_llama_gguf(tmp_path / "m.gguf"))
    text_file = tmp_path / "text.txt"
    text_file.write_text(verdict_start, encoding="utf-8")
    context, max_tokens = 48, 400
    numpy_loss, perplexity, tokens = cli_loss(capsys, "--weights", path, "--data", text_file, "--context", context,
                                              "--batch-size", 3, "--max-tokens", max_tokens)
    torch_loss, _, _ = cli_loss(capsys, "--weights", path, "--data", text_file, "--context", context,
                                "--max-tokens", max_tokens, "--backend", "torch")
    assert tokens == max_tokens - 1
    assert perplexity == pytest.approx(math.exp(numpy_loss), rel=1e-5)
    assert torch_loss == pytest.approx(numpy_loss, rel=BACKEND_TOLERANCE)

    ids = load_weights_tokenizer(path).tokenizer.encode_ordinary(verdict_start)[:max_tokens]
    folder = save_weights(tmp_path / "hf", *load_weights(path), format="huggingface")
    model_class = GPT2LMHeadModel if arch == "gpt2" else LlamaForCausalLM
    assert numpy_loss == pytest.approx(transformers_loss(folder, ids, context, model_class), rel=ORACLE_TOLERANCE)


def test_bad_input_is_one_clear_error_each(tmp_path, capsys):
    model = write_tiny_gpt2(tmp_path / "gpt2")
    one_token = tmp_path / "one.txt"
    one_token.write_text("a", encoding="utf-8")
    cases = [(["--weights", tmp_path / "missing"], "no weights at"),
             (["--weights", model, "--data", one_token], "the text has 1 token(s); the loss needs at least 2"),
             (["--weights", model, "--data", tmp_path / "nothing.txt"], "no such file, nor a data set"),
             (["--weights", model, "--context", 65], "--context 65 is longer than the model's context length (64)"),
             (["--weights", model, "--max-tokens", 1], "--max-tokens must be at least 2"),
             (["--weights", model, "--device", "cuda"], "needs --backend torch")]
    for args, message in cases:
        assert main(["evaluate-lm", *map(str, args)]) == 2, args
        assert message in capsys.readouterr().err, args


@pytest.mark.slow          # ~1-2 min: the 135M model over the-verdict's ~4,700 tokens in each backend
def test_real_smollm2_perplexity_on_the_verdict_agrees_in_both_backends(capsys):
    numpy_loss, perplexity, tokens = cli_loss(capsys, "--weights", "smollm2-135m-instruct")
    torch_loss, _, _ = cli_loss(capsys, "--weights", "smollm2-135m-instruct", "--backend", "torch")
    assert torch_loss == pytest.approx(numpy_loss, rel=BACKEND_TOLERANCE)
    assert numpy_loss < 0.5 * math.log(49152)          # pretrained: far below a uniform guess over the vocabulary
