"""`gpt2 demo`: the README's first command, on a few steps."""
import json

import pytest

from gpt2cli.main import main


def test_demo_trains_both_backends_in_lockstep_and_generates(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(["demo", "--steps", "4", "--print-every", "2", "--eval-interval", "2", "--batch-size", "2",
                 "--context-length", "16", "--max-new-tokens", "3", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "NumPy loss" in printed and "torch loss" in printed
    assert printed.count("identical tokens") == 2          # greedy and sampled agree across backends
    summary = json.loads((out / "demo.json").read_text())
    assert [e["step"] for e in summary["history"]] == [1, 2, 3, 4]
    assert summary["dtype"] == "float64"                     # the default: the proof, not the fast path
    assert summary["max_abs_diff"] < 1e-10
    assert summary["history"][-1]["numpy_loss"] < summary["history"][0]["numpy_loss"]
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"


def test_demo_float32_agrees_to_float32_rounding(tmp_path):
    out = tmp_path / "demo32"
    assert main(["demo", "--steps", "3", "--dtype", "float32", "--batch-size", "2", "--context-length", "8",
                 "--max-new-tokens", "0", "--out", str(out)]) == 0
    summary = json.loads((out / "demo.json").read_text())
    assert summary["dtype"] == "float32"
    assert summary["max_abs_diff"] < 1e-4                    # float32 rounding only, over 3 steps


def test_demo_rejects_a_context_longer_than_the_preset(tmp_path, capsys):
    assert main(["demo", "--context-length", "65", "--out", str(tmp_path)]) == 2
    assert "exceeds" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------
# --init-from: a pretrained model's file, trained by both twins from the same weights
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_init_from_a_file_trains_both_twins_from_its_weights_with_its_tokenizer(arch, tmp_path, capsys):
    from gptcore.formats.weights import load_weights
    from tests.tiny_models import write_tiny_gpt2, write_tiny_llama_gguf

    path = write_tiny_llama_gguf(tmp_path / "m.gguf") if arch == "llama" else write_tiny_gpt2(tmp_path / "gpt2")
    out = tmp_path / "demo"
    assert main(["demo", "--init-from", str(path), "--steps", "3", "--eval-interval", "3", "--context-length", "16",
                 "--max-new-tokens", "4", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"pretrained {path}" in printed
    assert printed.count("identical tokens") == 2
    summary = json.loads((out / "demo.json").read_text())
    assert {"history", "max_abs_diff", "max_abs_diff_step", "final_numpy_loss", "final_torch_loss", "dtype",
            "numpy_seconds", "torch_seconds", "config"} <= set(summary)
    config, _ = load_weights(path)
    assert summary["config"]["vocab_size"] == config.vocab_size and summary["config"]["arch"] == arch
    assert summary["init_from"] == str(path) and summary["context_length"] == 16
    assert [e["step"] for e in summary["history"]] == [1, 2, 3]
    assert summary["max_abs_diff"] < 1e-10                   # float64: the same math in both twins
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"
    if arch == "llama":                                      # the file's own tokenizer: 267 ids, not GPT-2's
        assert "the tokenizer of m.gguf" in printed


def test_init_from_first_step_equals_the_models_own_loss_on_its_first_batch(tmp_path):
    """The first loss is the loaded model's (before any update): npgpt's forward on the same first batch."""
    import numpy as np

    from gptcore.data import SlidingWindowDataset, split_train_val
    from gptcore.datasets import fetch
    from gptcore.engine.training import endless_batches
    from gptcore.formats.weights import load_weights, load_weights_tokenizer
    from npgpt.model import forward
    from tests.tiny_models import write_tiny_llama_gguf

    path = write_tiny_llama_gguf(tmp_path / "m.gguf", seed=4)
    out = tmp_path / "demo"
    assert main(["demo", "--init-from", str(path), "--steps", "1", "--context-length", "8", "--batch-size", "3",
                 "--max-new-tokens", "0", "--out", str(out)]) == 0
    first = json.loads((out / "demo.json").read_text())["history"][0]["numpy_loss"]
    config, params = load_weights(path)
    tokenizer = load_weights_tokenizer(path).tokenizer
    train_text, _ = split_train_val(fetch("the-verdict").read_text(encoding="utf-8"), 0.9)
    _, (X, Y) = next(endless_batches(SlidingWindowDataset(tokenizer.encode(train_text), max_length=8, stride=8),
                                     3, 0))
    logits, _ = forward({k: v.astype(np.float64) for k, v in params.items()}, X, config)
    shifted = logits - logits.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))      # log-softmax by hand
    expected = -np.take_along_axis(log_probs, Y[..., None], -1).mean()
    assert first == pytest.approx(expected, rel=1e-12)


def test_init_from_rejects_a_window_longer_than_the_model_and_a_missing_file(tmp_path, capsys):
    from tests.tiny_models import write_tiny_llama_gguf

    path = write_tiny_llama_gguf(tmp_path / "m.gguf", context_length=16)
    assert main(["demo", "--init-from", str(path), "--context-length", "17", "--out", str(tmp_path)]) == 2
    assert "exceeds the model's context length 16" in capsys.readouterr().err
    assert main(["demo", "--init-from", str(tmp_path / "none.gguf"), "--out", str(tmp_path)]) == 2
    assert "no weights at" in capsys.readouterr().err


@pytest.mark.slow          # ~3-6 min and ~10 GB: SmolLM2-135M trained in both twins in float64
def test_init_from_the_real_smollm2_agrees_in_float64_and_starts_pretrained(tmp_path, capsys):
    import math

    out = tmp_path / "demo"
    assert main(["demo", "--init-from", "smollm2-135m-instruct", "--steps", "4", "--eval-interval", "4",
                 "--max-new-tokens", "5", "--out", str(out)]) == 0
    summary = json.loads((out / "demo.json").read_text())
    assert summary["max_abs_diff"] < 1e-9
    assert summary["history"][0]["numpy_loss"] < 0.5 * math.log(summary["config"]["vocab_size"])
    assert capsys.readouterr().out.count("identical tokens") == 2
