"""Generation behaviour: settings errors, prompt cropping, stop ids, greedy equivalences, the inverse-CDF rule
by hand, beam search against exhaustive search, batches, streaming, and the `gpt2 generate` command."""
from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
import torch

import npgpt.generate as npgen
import torchgpt.generate as tgen
from gpt2cli.commands.generate import TextStream
from gpt2cli.main import main as cli_main
from gptcore.formats.checkpoint import save_checkpoint
from gptcore.config import GPTConfig
from gptcore.engine.decoding import EOT_ID, PromptCroppedWarning, inverse_cdf
from npgpt.generate import sampling_probs
from npgpt.model import forward
from parity_tests.conftest import random_gpt_params, torch_twin
from gptcore.engine.decoding import GREEDY_BELOW, check_settings

CONFIG = GPTConfig(vocab_size=30, context_length=10, emb_dim=12, n_heads=3, n_layers=2, drop_rate=0.0)


@pytest.fixture(scope="module")
def params():
    return random_gpt_params(CONFIG, seed=3, dtype=np.float64)


@pytest.fixture(scope="module")
def model(params):
    return torch_twin(params, CONFIG)


def both_backends(params, model):
    """(name, generate, stream_generate, generate_batch) for NumPy and torch with the same signature."""
    return [("numpy", lambda *a, **k: npgen.generate(params, CONFIG, *a, **k),
             lambda *a, **k: npgen.stream_generate(params, CONFIG, *a, **k),
             lambda *a, **k: npgen.generate_batch(params, CONFIG, *a, **k)),
            ("torch", lambda *a, **k: tgen.generate(model, *a, **k), lambda *a, **k: tgen.stream_generate(model, *a, **k),
             lambda *a, **k: tgen.generate_batch(model, *a, **k))]


# --------------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("options, message", [
    ({"temperature": -0.1}, "temperature must be"),
    ({"temperature": float("nan")}, "temperature must be"),
    ({"top_p": 0.0}, "top_p must be in"),
    ({"top_p": 1.5}, "top_p must be in"),
    ({"top_k": 0}, "top_k must be"),
    ({"num_beams": 0}, "num_beams must be"),
    ({"num_beams": 2, "temperature": 1.0}, "beam search is deterministic"),
    ({"length_penalty": float("inf"), "num_beams": 2}, "length_penalty must be"),
    ({"stop_ids": ("x",)}, "stop_ids must be"),
])
def test_invalid_settings_raise_clear_errors(params, model, options, message):
    for name, generate, stream, _ in both_backends(params, model):
        with pytest.raises(ValueError, match=message):
            generate([1, 2], 3, **options)
        with pytest.raises(ValueError, match=message):
            stream([1, 2], 3, **options)     # raised at the call, not at the first next()


@pytest.mark.parametrize("prompt, max_new_tokens, message", [
    ([1, 2], -1, "max_new_tokens must be"),
    ([], 3, "the prompt is empty"),
    ([1, 30], 3, r"must be in \[0, 30\)"),
    ([[1, 2]], 3, "1-D"),
    ([1.0, 2.0], 3, "integer token ids"),
])
def test_invalid_prompts_raise_clear_errors(params, model, prompt, max_new_tokens, message):
    for name, generate, _, _ in both_backends(params, model):
        with pytest.raises(ValueError, match=message):
            generate(prompt, max_new_tokens)


def test_stream_refuses_beams_and_torch_refuses_training_mode(params, model):
    with pytest.raises(ValueError, match="beam search needs generate"):
        npgen.stream_generate(params, CONFIG, [1], 3, num_beams=2)
    training = torch_twin(params, CONFIG).train()
    with pytest.raises(ValueError, match="model.eval"):
        tgen.generate(training, [1], 3)


# --------------------------------------------------------------------------------------------------------
# Prompts, stopping, greedy equivalences
# --------------------------------------------------------------------------------------------------------
def test_long_prompt_is_left_cropped_with_a_warning(params, model):
    prompt = list(np.random.default_rng(0).integers(0, CONFIG.vocab_size, CONFIG.context_length + 5))
    for name, generate, _, _ in both_backends(params, model):
        with pytest.warns(PromptCroppedWarning, match="keeping only its last 10 tokens"):
            cropped_run = generate(prompt, 4, stop_ids=())
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert cropped_run == generate(prompt[-CONFIG.context_length:], 4, stop_ids=())


def test_greedy_is_argmax_of_the_full_forward(params, model):
    """Greedy tokens, checked step by step against argmax of npgpt.model.forward on the growing sequence,
    past the context length (the window slides)."""
    prompt = [3, 1, 4, 1, 5]
    tokens = npgen.generate(params, CONFIG, prompt, 12, stop_ids=())
    sequence = list(prompt)
    for token in tokens:
        logits, _ = forward(params, np.array([sequence[-CONFIG.context_length:]]), CONFIG)
        assert token == int(np.argmax(logits[0, -1]))
        sequence.append(token)
    assert tgen.generate(model, prompt, 12, stop_ids=()) == tokens


def test_temperature_zero_and_top_k_one_are_greedy(params, model):
    for name, generate, _, _ in both_backends(params, model):
        greedy = generate([7, 8, 9], 8, stop_ids=())
        assert generate([7, 8, 9], 8, temperature=0.0, top_k=3, top_p=0.5, seed=1, stop_ids=()) == greedy
        for seed, temperature in [(0, 1.0), (5, 2.5), (9, 0.2)]:
            assert generate([7, 8, 9], 8, temperature=temperature, top_k=1, seed=seed, stop_ids=()) == greedy


def test_temperatures_below_the_floor_are_greedy_in_both_backends(params, model):
    """1e-320 is 0 in float32 and logits / 1e-320 overflows float64 too: the draw would read inf and nan.
    Both backends decode greedily below GREEDY_BELOW (beam search accepts it as 0), still sample at it, and
    refuse to turn such a temperature into probabilities."""
    for name, generate, _, generate_batch in both_backends(params, model):
        greedy = generate([7, 8, 9], 8, stop_ids=())
        for temperature in (1e-320, 1e-30, 0.99 * GREEDY_BELOW):
            assert generate([7, 8, 9], 8, temperature=temperature, top_k=5, seed=1, stop_ids=()) == greedy, name
            assert generate_batch([[7, 8, 9]], 8, temperature=temperature, seed=1, stop_ids=()) == [greedy], name
        assert generate([7, 8, 9], 8, num_beams=2, temperature=1e-320, stop_ids=()) == \
            generate([7, 8, 9], 8, num_beams=2, stop_ids=())
    assert not check_settings(8, temperature=GREEDY_BELOW).greedy
    logits = np.array([[1.0, 1.0 + 1e-6, -3.0]], dtype=np.float32)
    for probs in (npgen.sampling_probs(logits, GREEDY_BELOW),
                  tgen.sampling_probs(torch.from_numpy(logits), GREEDY_BELOW).numpy()):
        assert np.all(np.isfinite(probs)) and probs.sum() == pytest.approx(1.0) and probs[0, 2] == 0
    for sampling_probs, values in ((npgen.sampling_probs, logits), (tgen.sampling_probs, torch.from_numpy(logits))):
        with pytest.raises(ValueError, match=r"sampling needs a temperature >= 1e-06.*use greedy"):
            sampling_probs(values, 1e-320)


def test_same_seed_same_tokens_other_seed_other_tokens(params):
    run = lambda seed: npgen.generate(params, CONFIG, [1, 2], 10, temperature=1.5, seed=seed, stop_ids=())
    assert run(11) == run(11)
    assert run(11) != run(12)


def test_stop_ids_end_generation_and_are_not_returned(params, model):
    for name, generate, stream, _ in both_backends(params, model):
        free = generate([2, 3], 10, temperature=1.0, seed=4, stop_ids=())
        stop = free[4]
        first = free.index(stop)
        assert generate([2, 3], 10, temperature=1.0, seed=4, stop_ids=(stop,)) == free[:first]
        cut = min(free.index(s) if s in free else len(free) for s in (29, stop))     # either one stops
        assert list(stream([2, 3], 10, temperature=1.0, seed=4, stop_ids=[29, stop])) == free[:cut]
        assert generate([2, 3], 0) == [] and list(stream([2, 3], 0)) == []


def test_default_stop_is_endoftext():
    """A model that always prefers <|endoftext|> (50256) stops at once by default."""
    config = GPTConfig(vocab_size=50257, context_length=8, emb_dim=4, n_heads=1, n_layers=1, drop_rate=0.0,
                       tie_weights=False)
    params = random_gpt_params(config, seed=0, dtype=np.float32)
    params["final_norm.scale"][:] = 0.0                  # the final hidden state is the shift: (1, 0, 0, 0)
    params["final_norm.shift"][:] = [1.0, 0.0, 0.0, 0.0]
    params["out_head.weight"][:] = 0.0
    params["out_head.weight"][EOT_ID, 0] = 5.0           # logit 5 for <|endoftext|>, 0 for the rest
    assert npgen.generate(params, config, [1, 2], 5) == []
    assert npgen.generate(params, config, [1, 2], 3, stop_ids=()) == [EOT_ID] * 3
    assert tgen.generate(torch_twin(params, config), [1, 2], 5) == []


def test_stream_yields_generate_tokens_and_can_be_stopped_early(params, model):
    for name, generate, stream, _ in both_backends(params, model):
        expected = generate([5, 6], 9, temperature=0.9, top_p=0.8, seed=2, stop_ids=())
        assert list(stream([5, 6], 9, temperature=0.9, top_p=0.8, seed=2, stop_ids=())) == expected
        taken = list(itertools.islice(stream([5, 6], 9, temperature=0.9, top_p=0.8, seed=2, stop_ids=()), 3))
        assert taken == expected[:3]


def test_batch_greedy_rows_equal_single_prompts(params, model):
    prompts = [[1, 2, 3, 4, 5, 6], [7], [8, 9, 10]]
    for name, generate, _, generate_batch in both_backends(params, model):
        assert generate_batch(prompts, 7, stop_ids=(3,)) == [generate(p, 7, stop_ids=(3,)) for p in prompts]


def test_lora_adapted_params_generate_like_the_merged_model(params):
    from gptcore.lora import LoRAConfig
    from npgpt.lora import add_lora, merge_lora

    untied = random_gpt_params(CONFIG.replace(tie_weights=False), seed=3, dtype=np.float64)
    adapted = add_lora(untied, LoRAConfig(rank=2, alpha=4.0), seed=1)
    for name in adapted:
        if name.endswith(".lora_B"):
            adapted[name] = np.random.default_rng(0).standard_normal(adapted[name].shape) * 0.5   # B = 0 at init
    config = CONFIG.replace(tie_weights=False)
    expected = npgen.generate(merge_lora(adapted), config, [1, 2, 3], 8, stop_ids=())
    assert npgen.generate(adapted, config, [1, 2, 3], 8, stop_ids=()) == expected
    assert expected != npgen.generate(untied, config, [1, 2, 3], 8, stop_ids=())


def test_the_cache_feeds_one_token_per_step_until_the_window_slides(params, monkeypatch):
    fed = []
    real_forward_last = npgen.NumpyDecoder.forward_last

    def recording(self, ids, attention_mask, cache):
        fed.append((ids.shape[1], cache is not None))
        return real_forward_last(self, ids, attention_mask, cache)

    monkeypatch.setattr(npgen.NumpyDecoder, "forward_last", recording)
    npgen.generate(params, CONFIG, [1, 2, 3, 4, 5, 6], 7, stop_ids=())
    # prompt 6, then single tokens up to length 10 = the context, then the whole sliding window each step
    assert fed == [(6, True), (1, True), (1, True), (1, True), (1, True), (10, True), (10, True)]
    fed.clear()
    npgen.generate(params, CONFIG, [1, 2, 3], 3, stop_ids=(), use_cache=False)
    assert fed == [(3, False), (4, False), (5, False)]


def test_kv_cache_errors_name_the_problem(params):
    from npgpt.kvcache import KVCache
    from npgpt.model import trunk_forward

    cache = KVCache(CONFIG, batch_size=1, capacity=4, dtype=np.float64)
    trunk_forward(params, np.array([[1, 2, 3]]), CONFIG, kv_cache=cache)
    with pytest.raises(ValueError, match="KV cache full: 3 cached"):
        trunk_forward(params, np.array([[1, 2]]), CONFIG, kv_cache=cache)
    with pytest.raises(ValueError, match="capacity must be in"):
        KVCache(CONFIG, batch_size=1, capacity=CONFIG.context_length + 1)
    with pytest.raises(ValueError, match="needs a kv_cache"):
        trunk_forward(params, np.array([[1, 2]]), CONFIG, attention_mask=np.ones((1, 2)))


# --------------------------------------------------------------------------------------------------------
# The sampling rule by hand
# --------------------------------------------------------------------------------------------------------
def test_inverse_cdf_by_hand():
    probs = np.array([0.1, 0.2, 0.3, 0.4])               # cdf 0.1, 0.3, 0.6, 1.0
    assert [inverse_cdf(probs, u) for u in (0.0, 0.05, 0.25, 0.5, 0.65, 0.999)] == [0, 0, 1, 2, 3, 3]
    assert inverse_cdf(np.array([0.0, 0.5, 0.0, 0.5]), 0.0) == 1          # zero-probability ids never chosen
    assert inverse_cdf(np.array([0.0, 0.5, 0.0, 0.5]), 0.6) == 3
    assert inverse_cdf(np.array([2.0, 0.0, 6.0]), 0.3) == 2              # mass 8: 0.3 * 8 = 2.4 > cdf[0] = 2
    assert inverse_cdf(np.array([0.25, 0.75, 0.0]), np.nextafter(1.0, 0.0)) == 1


def test_top_k_top_p_and_ties_by_hand():
    logits = np.log(np.array([[0.1, 0.2, 0.3, 0.4]]))
    # top_p 0.5: ranked 3 (0.4), 2 (0.3): mass before 2 is 0.4 < 0.5, before 1 is 0.7 -> keep {2, 3}
    probs = sampling_probs(logits, 1.0, top_p=0.5)[0]
    np.testing.assert_allclose(probs, [0, 0, 0.3, 0.4], rtol=1e-12)
    assert inverse_cdf(probs, 0.4) == 2 and inverse_cdf(probs, 0.5) == 3   # 0.4 * 0.7 = 0.28 < 0.3 < 0.35
    # top_k 2 with a three-way tie for second place keeps the lowest id among the tied
    tied = np.array([[1.0, 3.0, 1.0, 1.0, 0.0]])
    np.testing.assert_array_equal(sampling_probs(tied, 1.0, top_k=2)[0] > 0, [True, True, False, False, False])
    for backend_probs in (sampling_probs(tied, 1.0, top_k=3, top_p=0.99)[0],
                          tgen.sampling_probs(torch.from_numpy(tied), 1.0, top_k=3, top_p=0.99)[0].numpy()):
        np.testing.assert_array_equal(backend_probs > 0, [True, True, True, False, False])
    # greedy ties: the lowest id
    assert npgen.NumpyDecoder.greedy(None, np.array([[0.0, 2.0, 2.0]]))[0] == 1


# --------------------------------------------------------------------------------------------------------
# Beam search
# --------------------------------------------------------------------------------------------------------
def sequence_log_prob(params, config, prompt, continuation):
    logits, _ = forward(params, np.array([prompt + continuation]), config)
    shifted = logits[0] - logits[0].max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    return sum(log_probs[len(prompt) - 1 + i, token] for i, token in enumerate(continuation))


def test_beam_search_with_enough_beams_is_exhaustive_search():
    """With num_beams >= V^(n-1) no prefix is ever dropped: beam search must find the most likely sequence."""
    config = GPTConfig(vocab_size=5, context_length=8, emb_dim=6, n_heads=2, n_layers=1, drop_rate=0.0)
    params = random_gpt_params(config, seed=1, dtype=np.float64, std=0.8)
    prompt, n = [1, 4], 3
    best = max(itertools.product(range(5), repeat=n), key=lambda s: sequence_log_prob(params, config, prompt, list(s)))
    found = npgen.generate(params, config, prompt, n, num_beams=25, length_penalty=0.0, stop_ids=())
    assert found == list(best)
    assert tgen.generate(torch_twin(params, config), prompt, n, num_beams=25, length_penalty=0.0, stop_ids=()) == found
    greedy = npgen.generate(params, config, prompt, n, stop_ids=())
    assert sequence_log_prob(params, config, prompt, found) >= sequence_log_prob(params, config, prompt, greedy)


def test_beam_search_stops_at_the_stop_token_and_length_penalty_prefers_longer(params):
    free = npgen.generate(params, CONFIG, [4, 5], 6, num_beams=3, stop_ids=())
    assert len(free) == 6
    for stop in set(range(CONFIG.vocab_size)):
        with_stop = npgen.generate(params, CONFIG, [4, 5], 6, num_beams=3, stop_ids=(stop,))
        assert stop not in with_stop and len(with_stop) <= 6
    # length penalty 0 compares raw sums (shorter wins more often) and a large one favours long hypotheses
    lengths = {lp: [len(npgen.generate(params, CONFIG, [s], 6, num_beams=3, length_penalty=lp, stop_ids=(s + 1,)))
                    for s in range(0, 28, 3)] for lp in (0.0, 3.0)}
    assert sum(lengths[3.0]) >= sum(lengths[0.0])


# --------------------------------------------------------------------------------------------------------
# The command line
# --------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny model with GPT-2's vocabulary (so the tokenizer's ids fit), saved with save_checkpoint."""
    config = GPTConfig(vocab_size=50257, context_length=16, emb_dim=8, n_heads=2, n_layers=1, drop_rate=0.0)
    params = random_gpt_params(config, seed=0, dtype=np.float32)
    path = save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", params, config)
    return path, config, params


def test_cli_streams_the_same_text_in_both_backends(checkpoint, capsys):
    from gptcore.tokenizer import get_tokenizer

    path, config, params = checkpoint
    tokenizer = get_tokenizer()
    args = ["generate", "--checkpoint", str(path), "--prompt", "Every effort moves", "--max-new-tokens", "6",
            "--temperature", "1.0", "--top-k", "50", "--seed", "7", "--no-stop"]
    expected_ids = npgen.generate(params, config, tokenizer.encode("Every effort moves"), 6, temperature=1.0,
                                  top_k=50, seed=7, stop_ids=())
    expected = "Every effort moves" + tokenizer.decode(expected_ids) + "\n"
    for backend in ("numpy", "torch"):
        assert cli_main(args + ["--backend", backend, "--verbose"]) == 0
        captured = capsys.readouterr()
        assert captured.out == expected
        assert "tokens/s" in captured.err and f"{backend} backend" in captured.err


def test_cli_warns_about_cropping_and_runs_beam_search(checkpoint, capsys):
    path, _, _ = checkpoint
    assert cli_main(["generate", "--weights", str(path), "--prompt", "word " * 40, "--max-new-tokens", "3",
                     "--num-beams", "2", "--no-stop"]) == 0
    assert "keeping only its last 16 tokens" in capsys.readouterr().err


def test_cli_errors_are_one_line(checkpoint, capsys):
    path, _, _ = checkpoint
    assert cli_main(["generate", "--checkpoint", str(path), "--prompt", "x", "--temperature", "-1"]) == 2
    err = capsys.readouterr().err
    assert "temperature must be" in err and err.count("\n") == 1
    assert cli_main(["generate", "--checkpoint", str(path), "--prompt", "x", "--device", "cuda"]) == 2
    assert "needs --backend torch" in capsys.readouterr().err
    assert cli_main(["generate", "--checkpoint", str(path / "missing"), "--prompt", "x"]) == 2


def test_cli_random_model_preset(capsys):
    assert cli_main(["generate", "--model", "tiny", "--seed", "0", "--prompt", "Hi", "--max-new-tokens", "3",
                     "--no-stop"]) == 0
    assert capsys.readouterr().out.startswith("Hi")


def test_text_stream_holds_back_partial_utf8_characters():
    from gptcore.tokenizer import get_tokenizer

    tokenizer = get_tokenizer()
    text = "naïve café 🙂 über 漢字"
    ids = tokenizer.encode(text)
    stream = TextStream(tokenizer)
    pieces = [stream.push(token) for token in ids]
    assert "".join(pieces) + stream.flush() == text
    assert not any("\ufffd" in piece for piece in pieces)
    assert any(piece == "" for piece in pieces)          # some token ended inside a character


def test_decode_benchmark_quick_run_writes_its_tables(tmp_path):
    """The benchmark script runs end to end (a tiny model, no transformers): a smoke test, not a timing."""
    import json

    from benchmarks.bench_decode import main as bench_main

    assert bench_main(["--model", "tiny", "--quick", "--no-hf", "--new-tokens", "4", "--prompt-tokens", "4",
                       "--threads", "1", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "decode_quick_tiny_1threads.json").read_text())
    assert set(result["median_tokens_per_s"]) == {"numpy", "torchgpt", "torchgpt_eager"}
    assert result["same_tokens_as_numpy"] == {"numpy": True, "torchgpt": True, "torchgpt_eager": True}
    assert "| numpy |" in (tmp_path / "decode_quick_tiny_1threads.md").read_text()
