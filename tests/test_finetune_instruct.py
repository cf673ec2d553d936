"""`gpt2 finetune instruct` end to end on a tiny model and a few records (full finetuning and LoRA from a
checkpoint), the answer extraction that stops at the next "###", and the command's errors."""
import json

import numpy as np
import pytest
import torch

import npgpt.model as npmodel
from gpt2cli.main import main
from gptcore.formats.checkpoint import load_checkpoint, save_checkpoint
from gptcore.config import get_config
from gptcore.fileio import read_jsonl
from gptcore.tasks.instruct import answer_from_stream, extract_response, load_instruction_data
from gptcore.tokenizer import get_tokenizer

CONFIG = get_config("tiny", context_length=96, n_layers=1)


@pytest.fixture(scope="module")
def records_file(shared_data_dir, tmp_path_factory):
    """20 book records as JSONL: a 17 / 2 / 1 split."""
    records = load_instruction_data(shared_data_dir / "instruction-data.json")[:20]
    path = tmp_path_factory.mktemp("data") / "twenty.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path, records


@pytest.fixture(scope="module")
def start_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("start") / "ckpt"
    params = npmodel.init_params(CONFIG, seed=5)
    save_checkpoint(path, params, CONFIG)
    return path, params


def common(path, out):
    return ["finetune", "instruct", "--data", str(path), "--out", str(out), "--batch-size", "4", "--epochs", "1",
            "--eval-interval", "2", "--eval-batches", "1", "--max-new-tokens", "4", "--max-length", "48", "--lr", "1e-3", "--device", "cpu",
            "--quiet"]


def test_full_finetuning_run(records_file, start_checkpoint, tmp_path, capsys):
    path, records = records_file
    out = tmp_path / "run"
    assert main(common(path, out) + ["--init-from", str(start_checkpoint[0])]) == 0
    assert "4 steps on cpu" in capsys.readouterr().out
    metrics = read_jsonl(out / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]                     # 17 // 4 = 4 steps per epoch
    assert all("val_loss" in metrics[i] and "eval_train_loss" in metrics[i] for i in (1, 3))
    assert (out / "loss.png").stat().st_size > 0
    answered = json.loads((out / "test_responses.json").read_text())
    assert len(answered) == 2
    for record, original in zip(answered, records[17:19]):                 # the test split, in file order
        assert {k: record[k] for k in original} == original
        assert isinstance(record["model_response"], str)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["trainable_params"] == summary["total_params"] == npmodel.count_params(start_checkpoint[1])
    config = json.loads((out / "config.json").read_text())
    assert config["data"] == {"file": str(path), "records": 20, "train": 17, "test": 2, "val": 1}
    # The saved answers are the trained model's greedy answers.
    from torchgpt.checkpoint import load_model
    from torchgpt.instruct import answer_records
    model = load_model(summary["checkpoint"])
    again = answer_records(model, records[17:19], get_tokenizer(), max_new_tokens=4, progress=False)
    assert [r["model_response"] for r in again] == [r["model_response"] for r in answered]


def test_lora_run_trains_only_adapters(records_file, start_checkpoint, tmp_path, capsys):
    path, _ = records_file
    ckpt, start = start_checkpoint
    out = tmp_path / "lora"
    assert main(common(path, out) + ["--init-from", str(ckpt), "--lora-rank", "2", "--lora-alpha", "4",
                                     "--mask-instruction", "--save-merged"]) == 0
    assert "(LoRA r=2)" in capsys.readouterr().out
    C, F = CONFIG.emb_dim, CONFIG.ff_dim
    expected = CONFIG.n_layers * (4 * 2 * (C + C) + 2 * (C + F) + 2 * (F + C))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["trainable_params"] == expected and summary["lora"]["alpha"] == 4.0
    adapter_config = json.loads((out / "lora_adapter" / "adapter_config.json").read_text())
    assert adapter_config["rank"] == 2 and adapter_config["trainable_params"] == expected
    _, trained, _ = load_checkpoint(summary["checkpoint"], load_training_state=False)
    for name, value in start.items():                                        # the base did not move
        np.testing.assert_array_equal(trained[name], value)
    assert np.abs(trained["blocks.0.att.W_query.lora_B"]).max() > 0           # the adapters did
    _, merged, _ = load_checkpoint(out / "merged", load_training_state=False)
    assert set(merged) == set(start)
    assert not np.array_equal(merged["blocks.0.att.W_query.weight"], start["blocks.0.att.W_query.weight"])


def test_errors_are_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"instruction": "a", "input": "", "output": "b"}, {"instruction": "a", "input": ""}]))
    assert main(["finetune", "instruct", "--data", str(bad), "--out", str(tmp_path / "r")]) == 2
    assert "record 1: key 'output' is missing" in capsys.readouterr().err
    assert main(["finetune", "instruct", "--data", str(bad), "--lora-alpha", "8"]) == 2
    assert "--lora-rank" in capsys.readouterr().err
    assert main(["finetune", "instruct", "--data", str(tmp_path / "missing.json")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_answer_stops_at_the_next_section():
    tokenizer = get_tokenizer()
    ids = tokenizer.encode(" Paris is the capital.\n\n### Instruction:\nMore text that should never be read")
    consumed = []

    def stream():
        for token in ids:
            consumed.append(token)
            yield token

    assert answer_from_stream(stream(), tokenizer) == "Paris is the capital."
    assert len(consumed) < len(ids)                                          # stopped asking at "###"
    assert extract_response("  The answer.  ") == "The answer."
    assert answer_from_stream(iter(tokenizer.encode("Just this.")), tokenizer) == "Just this."
