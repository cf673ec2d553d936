"""The real SmolLM2-135M-Instruct (the shared GGUF, Q4_1 dequantized to float32, through GPT2_DATA_DIR) in both
backends: NumPy and torch logits agree, greedy tokens are identical, converted copies (our checkpoint, a Hugging
Face Llama folder) give the same logits, and `gpt2 generate` continues a prompt and answers a chat message.

The oracle for "the twins agree" is the NumPy model in float64 on the same weights: both float32 backends are
measured against it, and against each other. Measured on "Every effort moves you" (4 tokens, 30 layers):
max |logit| 29.6, NumPy float32 2.1e-6, torch float32 3.1e-6 and NumPy vs torch 1.9e-6 of it. The tolerance is
2e-5 of the largest logit: float32's ~6e-8 rounding grown through 30 blocks, with room for other BLAS
kernels (the float32 budget of the standards, 1e-5..1e-4 of the magnitude, at its tight end).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import npgpt.generate as npgen
import npgpt.model as npmodel
import torchgpt.generate as tgen
from gpt2cli.main import main
from gptcore.config import get_config
from gptcore.formats.gguf import load_gguf_tokenizer
from gptcore.formats.weights import load_weights, resolve_weights_path, save_weights
from torchgpt.model import build_model, load_numpy_params

NAME = "smollm2-135m-instruct"
PROMPT = "Every effort moves you"
LOGIT_TOLERANCE = 2e-5           # of the largest |logit|; see the module docstring
GREEDY_TOKENS = 20


@pytest.fixture(scope="module")
def smollm2():
    """(config, float32 params, the file's tokenizer), loaded once for the module."""
    config, params = load_weights(NAME)
    return config, params, load_gguf_tokenizer(resolve_weights_path(NAME))


@pytest.fixture(scope="module")
def prompt_ids(smollm2):
    return np.array([smollm2[2].encode(PROMPT)])


@pytest.fixture(scope="module")
def reference_logits(smollm2, prompt_ids):
    """NumPy in float64 on the same (float32-valued) weights: the oracle of both float32 backends."""
    config, params, _ = smollm2
    logits, _ = npmodel.forward({name: value.astype(np.float64) for name, value in params.items()}, prompt_ids,
                                config)
    return logits


def torch_logits(config, params, idx):
    model = load_numpy_params(build_model(config), params).eval()
    with torch.no_grad():
        return model(torch.as_tensor(idx)).numpy()


def assert_logits_close(actual, expected, what):
    scale = np.abs(expected).max()
    error = np.abs(actual - expected).max() / scale
    assert error <= LOGIT_TOLERANCE, f"{what}: max error {error:.2e} of the largest logit ({scale:.1f})"


def test_numpy_and_torch_logits_agree_on_the_real_weights(smollm2, prompt_ids, reference_logits):
    config, params, _ = smollm2
    assert config == get_config("smollm2-135m")
    numpy_logits, _ = npmodel.forward(params, prompt_ids, config)
    assert numpy_logits.dtype == np.float32
    torch_out = torch_logits(config, params, prompt_ids)
    assert_logits_close(numpy_logits, reference_logits, "numpy float32 vs float64")
    assert_logits_close(torch_out, reference_logits, "torch float32 vs numpy float64")
    assert_logits_close(numpy_logits, torch_out, "numpy vs torch")
    # the tolerance is well below what a real difference moves: one block's weights off by 1% is far outside
    nudged = dict(params, **{"blocks.29.ff.down.weight": params["blocks.29.ff.down.weight"] * 1.01})
    with pytest.raises(AssertionError):
        assert_logits_close(npmodel.forward(nudged, prompt_ids, config)[0], reference_logits, "nudged")


@pytest.mark.slow           # ~15-30 s: 20 decoding steps in each backend and a float64 forward of 24 tokens
def test_greedy_tokens_are_identical_in_both_backends_and_follow_the_full_forward(smollm2, prompt_ids):
    """KV-cached greedy decoding in both backends (in gpt2 generate's decoding layout) gives the same 20
    tokens, and each is the argmax of a full float64 forward over everything before it (no cache)."""
    config, params, tokenizer = smollm2
    prompt = prompt_ids[0].tolist()
    numpy_tokens = npgen.generate(npgen.decoding_layout(params, config), config, prompt, GREEDY_TOKENS, stop_ids=())
    model = tgen.decoding_layout(load_numpy_params(build_model(config, use_sdpa=True), params).eval())
    torch_tokens = tgen.generate(model, prompt, GREEDY_TOKENS, stop_ids=())
    assert numpy_tokens == torch_tokens
    assert len(numpy_tokens) == GREEDY_TOKENS
    params64 = {name: value.astype(np.float64) for name, value in params.items()}
    logits, _ = npmodel.forward(params64, np.array([prompt + numpy_tokens[:-1]]), config)
    np.testing.assert_array_equal(logits[0, len(prompt) - 1:].argmax(-1), numpy_tokens)
    text = tokenizer.decode(numpy_tokens)
    assert text.isascii() and len(text.split()) >= 10, text        # words, not bytes or special tokens


@pytest.mark.slow           # ~25 s: writes and reads two float32 copies of the model (540 MB each)
def test_converted_copies_give_the_same_logits(smollm2, prompt_ids, tmp_path, capsys):
    """`gpt2 weights convert` (GGUF -> our checkpoint) and save_weights(format="huggingface") (-> a Hugging Face
    Llama folder) keep every float32 value: the logits are bit for bit the GGUF's."""
    config, params, _ = smollm2
    expected, _ = npmodel.forward(params, prompt_ids, config)
    assert main(["weights", "convert", NAME, str(tmp_path / "checkpoint")]) == 0
    hf_folder = save_weights(tmp_path / "hf", config, params, format="huggingface")
    for copy in (tmp_path / "checkpoint", hf_folder):
        copy_config, copy_params = load_weights(copy)
        assert copy_config == config, copy
        np.testing.assert_array_equal(npmodel.forward(copy_params, prompt_ids, config)[0], expected, err_msg=str(copy))


def test_the_chat_stops_at_the_end_of_the_turn_and_at_the_end_of_text(smollm2):
    from gptcore.model_text import stop_ids_of

    tokenizer = smollm2[2]
    assert stop_ids_of(tokenizer) == {tokenizer.special_tokens["<|im_end|>"], tokenizer.special_tokens["<|endoftext|>"]}
    assert tokenizer.eot_id == tokenizer.special_tokens["<|im_end|>"]      # the file's EOS ends a turn


# numpy in the default suite (~10 s: the GGUF loads and 7 tokens); torch too with -m slow
@pytest.mark.parametrize("backend", ["numpy", pytest.param("torch", marks=pytest.mark.slow)])
def test_cli_chat_answers_paris(backend, capsys):
    assert main(["generate", "--weights", NAME, "--chat", "What is the capital of France?",
                 "--backend", backend]) == 0
    answer = capsys.readouterr().out
    assert "Paris" in answer
    # the answer only: no prompt echoed, no special tokens, and it ends with the turn (one line, no next turn)
    assert "<|" not in answer and "capital of France?" not in answer
    assert len(answer.strip().splitlines()) == 1 and "user" not in answer, answer


def test_cli_chat_without_a_chat_template_is_one_clear_error(capsys):
    assert main(["generate", "--model", "tiny", "--chat", "Hi"]) == 2
    error = capsys.readouterr().err
    assert "no chat template" in error and "--weights smollm2-135m-instruct" in error and "--prompt" in error
    assert error.count("\n") == 1


@pytest.mark.slow           # ~20-30 s: the GGUF loads twice
def test_cli_prompt_continues_the_same_in_both_backends(capsys):
    texts = []
    for backend in ("numpy", "torch"):
        assert main(["generate", "--weights", NAME, "--prompt", PROMPT, "--max-new-tokens", "20",
                     "--backend", backend]) == 0
        texts.append(capsys.readouterr().out)
    assert texts[0] == texts[1]
    assert texts[0].startswith(PROMPT) and len(texts[0].split()) >= 12
