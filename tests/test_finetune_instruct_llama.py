"""`gpt2 finetune instruct` on a Llama that carries its own tokenizer and chat template (a tiny random Llama
written to a GGUF file here, with a byte-level vocabulary: every ASCII character is one token, id 3 + its
code): the chat format's text and mask checked by hand on a known record, the one-word answer check on
hand-made responses, NumPy LoRA against torch LoRA in float64, and the command end to end in both backends
(metrics.json, answers without special tokens that `gpt2 evaluate` reads)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import npgpt.model as npmodel
from gpt2cli.main import main
from gptcore.config import get_config
from gptcore.engine.training import TrainingLoop, TrainSettings
from gptcore.formats.gguf import load_gguf_tokenizer
from gptcore.lora import LoRAConfig, split_lora
from gptcore.tasks.chat import ChatTemplateError
from gptcore.tasks.instruct import (IGNORE_INDEX, collate_instructions, contains_answer, exact_answer_share,
                                    instruction_batches, instruction_format, normalize_answer)
from gptcore.tokenizer import bytes_to_unicode
from npgpt.instruct import InstructionBackend
from npgpt.lora import add_lora
from tests.fake_ollama import ChatReply, FakeOllama
from tests.tiny_models import write_llama_gguf

# SmolLM2-135M-Instruct's tokenizer.chat_template, copied from the file (ChatML with a default system turn).
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]          # ids 0, 1, 2 as in SmolLM2
IM_START, IM_END = 1, 2
CONFIG = get_config("tiny-llama", vocab_size=len(SPECIALS) + 256, context_length=512, n_layers=1)


def byte_id(character: str) -> int:
    return len(SPECIALS) + ord(character)


def write_chat_gguf(path, config, params, template=SMOLLM2_TEMPLATE):
    """A llama GGUF in llama.cpp's layout with a byte-level BPE tokenizer: the three special tokens, then one
    token per byte, no merges; eos = <|im_end|> as SmolLM2-Instruct's file; SmolLM2's chat template."""
    byte_chars = bytes_to_unicode()
    return write_llama_gguf(path, config, params, tokens=SPECIALS + [byte_chars[b] for b in range(256)],
                            n_specials=len(SPECIALS), eos_id=IM_END, chat_template=template)


@pytest.fixture(scope="module")
def chat_gguf(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama") / "tiny-chat.gguf"
    return write_chat_gguf(path, CONFIG, npmodel.init_params(CONFIG, seed=3))


@pytest.fixture(scope="module")
def tokenizer(chat_gguf):
    return load_gguf_tokenizer(chat_gguf)


RECORD = {"instruction": "Name the element.", "input": "Hg", "output": "Mercury."}


# ---------------------------------------------------------------------------------------------------
# the chat format on a known record, by hand
# ---------------------------------------------------------------------------------------------------

def test_chat_format_text_ids_and_mask_of_a_known_record(tokenizer):
    fmt = instruction_format("chat", tokenizer, template=SMOLLM2_TEMPLATE)
    assert fmt.end_id == IM_END and fmt.stop_ids == (IM_END,)
    system = "system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    prompt = f"<|im_start|>{system}<|im_end|>\n<|im_start|>user\nName the element.\n\nHg<|im_end|>\n<|im_start|>assistant\n"
    assert fmt.prompt(RECORD) == prompt
    # by hand: a special token is one id, every other character its byte's id
    expected_prompt = ([IM_START] + [byte_id(c) for c in system] + [IM_END, byte_id("\n"), IM_START]
                       + [byte_id(c) for c in "user\nName the element.\n\nHg"] + [IM_END, byte_id("\n"), IM_START]
                       + [byte_id(c) for c in "assistant\n"])
    example = fmt.encode(RECORD, tokenizer)
    assert example.prompt_length == len(expected_prompt) == 1 + len(system) + 3 + 26 + 3 + 10
    assert list(example.token_ids) == expected_prompt + [byte_id(c) for c in "Mercury."]
    fmt.check_chat_rendering(RECORD, tokenizer)          # prompt + output + <|im_end|> is the template's text

    inputs, targets = collate_instructions([example], pad_token_id=fmt.end_id, mask_instruction=True)
    n = len(expected_prompt)
    assert inputs[0].tolist() == expected_prompt + [byte_id(c) for c in "Mercury."]
    # everything up to the assistant's turn is masked: target j predicts token j + 1, so targets 0..n-2
    assert targets[0, :n - 1].tolist() == [IGNORE_INDEX] * (n - 1)
    assert targets[0, n - 1:].tolist() == [byte_id(c) for c in "Mercury."] + [IM_END]
    _, unmasked = collate_instructions([example], pad_token_id=fmt.end_id)
    assert unmasked[0].tolist() == expected_prompt[1:] + [byte_id(c) for c in "Mercury."] + [IM_END]


def test_chat_answers_leave_special_tokens_out_and_templates_that_add_more_are_refused(tokenizer):
    fmt = instruction_format("chat", tokenizer, template=SMOLLM2_TEMPLATE)
    assert fmt.answer([byte_id("O"), byte_id("k"), IM_START, byte_id(" ")], tokenizer) == "Ok"
    odd = SMOLLM2_TEMPLATE.replace("'<|im_end|>' + '\\n'", "'<|im_end|>' + '[more]'")
    with pytest.raises(ChatTemplateError, match="--prompt-format alpaca"):
        instruction_format("chat", tokenizer, template=odd).check_chat_rendering(RECORD, tokenizer)
    with pytest.raises(ValueError, match="no.*chat template|none"):
        instruction_format("chat", tokenizer, template=None)


# ---------------------------------------------------------------------------------------------------
# the one-word answer check
# ---------------------------------------------------------------------------------------------------

def test_exact_answer_share_on_hand_made_responses():
    assert normalize_answer("Opinion-based.") == ["opinionbased"]
    assert normalize_answer("Mercury (Hg)!") == ["mercury", "hg"]
    assert normalize_answer("ÉCOLE 3.14") == ["école", "314"]
    records = [{"output": "Hg.", "model_response": "The symbol is HG."},             # hit (case, punctuation)
               {"output": "Laughed.", "model_response": "He laughs."},                # miss
               {"output": "Opinion-based.", "model_response": "It is opinion-based!"},  # hit
               {"output": "The fish was eaten.", "model_response": "The fish was eaten."},  # not one word
               {"output": "42", "model_response": "younger than 420"},               # miss: whole words only
               {"output": "young.", "model_response": "younger"}]                     # miss
    share = exact_answer_share(records)
    assert share == {"records": 5, "hits": 2, "share": 0.4, "indices": [0, 1, 2, 4, 5]}
    assert contains_answer("It is 42.", "42") and not contains_answer("", "Hg")
    assert exact_answer_share(records[3:4])["share"] is None


# ---------------------------------------------------------------------------------------------------
# NumPy LoRA = torch LoRA, float64
# ---------------------------------------------------------------------------------------------------

def test_numpy_lora_steps_equal_torch_lora_steps_in_float64(tokenizer):
    from torchgpt import build_model, load_numpy_params
    from torchgpt.lora import attach_lora, lora_state_dict
    from torchgpt.train import LoaderBatches, Trainer

    records = [{"instruction": f"Say {word}.", "input": "" if i % 2 else "now", "output": word}
               for i, word in enumerate(["one", "two", "three", "four", "five", "six", "seven", "eight"])]
    fmt = instruction_format("chat", tokenizer, template=SMOLLM2_TEMPLATE)
    examples = [fmt.encode(r, tokenizer) for r in records]
    settings = TrainSettings(max_steps=3, batch_size=4, lr=1e-2, weight_decay=0.1, grad_clip=1.0,
                             eval_interval=100, eval_batches=1, seed=7)

    def batches(epoch):
        return instruction_batches(examples, 4, shuffle=True, drop_last=True, seed=7, epoch=epoch,
                                   pad_token_id=fmt.end_id, mask_instruction=True)

    base = {k: v.astype(np.float64) for k, v in npmodel.init_params(CONFIG, seed=3).items()}
    base["out_head.weight"] = base["tok_emb.weight"]                   # astype broke the tie; put it back
    lora = LoRAConfig(rank=2, alpha=4.0)
    params = add_lora(base, lora, seed=1)
    start = {k: v.copy() for k, v in split_lora(params)[1].items()}
    # B starts at 0, so a first step moves B only; give B a start so every factor's gradient is exercised.
    for name in params:
        if name.endswith("lora_B"):
            params[name][...] = np.random.default_rng(0).normal(0, 0.05, params[name].shape)
    adapters = {k: v.copy() for k, v in split_lora(params)[1].items()}
    trainable = [k for k in params if k.endswith(("lora_A", "lora_B"))]
    numpy_losses = []
    backend = InstructionBackend(params, CONFIG, batches, settings, trainable=trainable)
    TrainingLoop(backend, settings, progress=False, on_log=lambda e: numpy_losses.append(e["train_loss"])).fit()

    model = load_numpy_params(build_model(CONFIG, seed=0), split_lora(base)[0]).double()
    attach_lora(model, adapters, lora)
    torch_losses = []
    trainer = Trainer(model, LoaderBatches(batches), settings, device=torch.device("cpu"), progress=False)
    trainer.loop.on_log = lambda e: torch_losses.append(e["train_loss"])
    trainer.fit()
    # torch's Trainer reports each step's loss as a float32 number (its running total is .float()), so the
    # logged losses agree to float32's ~6e-8; the adapters themselves are compared in float64 below.
    np.testing.assert_allclose(numpy_losses, torch_losses, rtol=1e-6)
    trained = {k: v.numpy() for k, v in lora_state_dict(model).items()}
    for name in trainable:
        assert not np.allclose(params[name], adapters[name])             # it moved
        np.testing.assert_allclose(params[name], trained[name], rtol=1e-9, atol=1e-12, err_msg=name)
    assert set(start) == set(adapters)


# ---------------------------------------------------------------------------------------------------
# the command end to end
# ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def records_file(tmp_path_factory):
    """20 short records (a 17 / 2 / 1 split); of the two test records only the first has a one-word answer."""
    words = ["red", "blue", "green", "gold", "pink", "gray", "teal", "navy", "lime", "rose"]
    records = [{"instruction": f"Name colour {i}.", "input": "" if i % 3 else "bright", "output": words[i % 10]}
               for i in range(20)]
    records[18]["output"] = "It is a long answer."
    path = tmp_path_factory.mktemp("data") / "colours.json"
    path.write_text(json.dumps(records))
    return path, records


def finetune_args(path, gguf, out, backend, *extra):
    return ["finetune", "instruct", "--data", str(path), "--init-from", str(gguf), "--out", str(out),
            "--backend", backend, "--batch-size", "4", "--max-steps", "3", "--eval-interval", "2", "--eval-batches",
            "1", "--max-new-tokens", "5", "--max-length", "256", "--lr", "1e-2", "--quiet", *extra]


@pytest.mark.parametrize("prompt_format", ["chat", "alpaca"])
def test_cli_lora_in_both_backends_writes_the_losses_and_the_one_word_check(records_file, chat_gguf, tmp_path,
                                                                              capsys, prompt_format):
    path, records = records_file
    metrics = {}
    for backend in ("numpy", "torch"):
        out = tmp_path / backend
        assert main(finetune_args(path, chat_gguf, out, backend, "--prompt-format", prompt_format,
                                  "--mask-instruction", "--lora-rank", "2")) == 0
        printed = capsys.readouterr().out
        assert f"({backend} backend, {prompt_format} prompts)" in printed and "one-word answers contained" in printed
        metrics[backend] = json.loads((out / "metrics.json").read_text())
        answered = json.loads((out / "test_responses.json").read_text())
        assert [{k: r[k] for k in records[0]} for r in answered] == records[17:19]
        assert not any(token in r["model_response"] for r in answered for token in SPECIALS)
        before = json.loads((out / "test_responses_before.json").read_text())
        assert [r["output"] for r in before] == ["navy"]                   # the one-word test record only
    for backend, values in metrics.items():
        assert values["exact_answer_records"] == 1 and values["steps"] == 3 and values["backend"] == backend
        assert values["exact_answer_share_after"] in (0.0, 1.0) and values["peak_rss_mib"] > 0
        for key in ("initial_val_loss", "final_val_loss", "initial_test_loss", "final_test_loss"):
            assert np.isfinite(values[key]), key
        assert values["final_val_loss"] != values["initial_val_loss"]
    # the same weights, the same batches: the twins agree (float32)
    for key in ("initial_val_loss", "initial_test_loss", "final_val_loss", "final_test_loss"):
        assert metrics["numpy"][key] == pytest.approx(metrics["torch"][key], rel=1e-4), key


def test_cli_full_finetuning_responses_go_to_gpt2_evaluate(records_file, chat_gguf, tmp_path, capsys):
    path, _ = records_file
    out = tmp_path / "full"
    assert main(finetune_args(path, chat_gguf, out, "torch", "--prompt-format", "chat")) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["trainable_params"] == metrics["total_params"] == npmodel.count_params(
        npmodel.init_params(CONFIG, seed=3))
    capsys.readouterr()
    with FakeOllama(models=["llama3:latest"]) as ollama:
        ollama.reply = lambda payload: ChatReply("70")
        assert main(["evaluate", "--responses", str(out / "test_responses.json"), "--judge-model", "llama3",
                     "--host", ollama.host, "--quiet"]) == 0
        assert len(ollama.chats) == 2
    scores = json.loads((out / "test_responses.scores.json").read_text())
    assert scores["mean_score"] == 70 and scores["n_scored"] == 2


def test_cli_chat_format_without_a_template_is_one_clear_error(records_file, tmp_path, capsys):
    path, _ = records_file
    gguf = write_chat_gguf(tmp_path / "plain.gguf", CONFIG, npmodel.init_params(CONFIG, seed=3), template=None)
    assert main(finetune_args(path, gguf, tmp_path / "r", "numpy", "--prompt-format", "chat")) == 2
    assert "--prompt-format alpaca" in capsys.readouterr().err


def test_cli_a_run_stopped_during_training_keeps_its_before_numbers(records_file, chat_gguf, tmp_path, monkeypatch):
    """metrics.json is written before the first step: an interrupted run keeps the losses it measured."""
    from gptcore.engine import training

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(training.TrainingLoop, "fit", interrupted)
    path, _ = records_file
    out = tmp_path / "stopped"
    assert main(finetune_args(path, chat_gguf, out, "numpy", "--prompt-format", "chat", "--lora-rank", "2")) != 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"].startswith("training") and np.isfinite(metrics["initial_val_loss"])
    assert metrics["exact_answer_records"] == 1 and "final_val_loss" not in metrics
