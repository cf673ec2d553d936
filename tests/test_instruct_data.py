"""Instruction data (npgpt/instruct.py, torchgpt/instruct.py): validation naming record and key, JSON and
JSONL files, the 935/110/55 split in file order, the Alpaca prompt, tokenization, and the collate checked
against hand-computed tensors."""
import json

import numpy as np
import pytest
import torch

from gptcore.tasks.instruct import (EncodedExample, collate_instructions, encode_example, format_example,
    format_input, format_prompt, load_instruction_data, split_records, validate_records)
from gptcore.tokenizer import get_tokenizer
from torchgpt import instruct as tinstruct

E = 50256
RECORD = {"instruction": "Rewrite the sentence in passive voice.", "input": "The cat ate the fish.",
          "output": "The fish was eaten by the cat."}


@pytest.fixture(scope="module")
def book_records(shared_data_dir):
    return load_instruction_data(shared_data_dir / "instruction-data.json")


def test_book_split_is_935_110_55_in_file_order(book_records):
    assert len(book_records) == 1100
    train, test, val = split_records(book_records)
    assert (len(train), len(test), len(val)) == (935, 110, 55)
    assert train[0] is book_records[0] and test[0] is book_records[935] and val[0] is book_records[1045]
    assert val[-1] is book_records[-1]


@pytest.mark.parametrize("n, sizes", [(0, (0, 0, 0)), (1, (0, 0, 1)), (20, (17, 2, 1)), (101, (85, 10, 6))])
def test_split_sizes(n, sizes):
    records = list(range(n))
    parts = split_records(records)
    assert tuple(map(len, parts)) == sizes and sum(parts, []) == records


def test_alpaca_prompt_with_and_without_input():
    preamble = ("Below is an instruction that describes a task. "
                "Write a response that appropriately completes the request.")
    assert format_input(RECORD) == (f"{preamble}\n\n### Instruction:\nRewrite the sentence in passive voice."
                                    f"\n\n### Input:\nThe cat ate the fish.")
    no_input = {**RECORD, "input": ""}
    assert format_input(no_input) == f"{preamble}\n\n### Instruction:\nRewrite the sentence in passive voice."
    assert "### Input:" not in format_prompt(no_input)
    assert format_prompt(RECORD) == format_input(RECORD) + "\n\n### Response:\n"
    assert format_example(RECORD) == format_prompt(RECORD) + "The fish was eaten by the cat."


@pytest.mark.parametrize("records, message", [
    ({"not": "a list"}, "expected a list of records"),
    ([RECORD, "text"], "record 1 is a str"),
    ([RECORD, {k: v for k, v in RECORD.items() if k != "input"}], "record 1: key 'input' is missing"),
    ([RECORD, RECORD, {**RECORD, "output": None}], "record 2: key 'output' must be a string"),
    ([{**RECORD, "instruction": ["a"]}], "record 0: key 'instruction' must be a string"),
])
def test_validation_names_record_and_key(records, message):
    with pytest.raises(ValueError, match=message):
        validate_records(records)


def test_json_and_jsonl_files(tmp_path):
    records = [RECORD, {**RECORD, "input": ""}]
    (tmp_path / "a.json").write_text(json.dumps(records))
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    (tmp_path / "c.json").write_text("\n".join(json.dumps(r) for r in records))     # JSONL under a .json name
    for name in ("a.json", "b.jsonl", "c.json"):
        assert load_instruction_data(tmp_path / name) == records
    (tmp_path / "bad.json").write_text('[{"instruction": "x",')
    with pytest.raises(ValueError, match="bad.json is not valid JSON"):
        load_instruction_data(tmp_path / "bad.json")
    (tmp_path / "bad.jsonl").write_text(json.dumps(RECORD) + "\n{oops\n")
    with pytest.raises(ValueError, match="line 2"):
        load_instruction_data(tmp_path / "bad.jsonl")
    (tmp_path / "d.jsonl").write_text(json.dumps(RECORD) + "\n" + json.dumps({"instruction": "x"}) + "\n")
    with pytest.raises(ValueError, match="record 1: key 'input' is missing"):
        load_instruction_data(tmp_path / "d.jsonl")
    with pytest.raises(FileNotFoundError, match="gpt2 data fetch instruction-data"):
        load_instruction_data(tmp_path / "missing.json")


def test_encoding_splits_prompt_and_response_exactly(book_records):
    """prompt ids + output ids == the ids of the whole text for every book record (the boundary is clean)."""
    tokenizer = get_tokenizer()
    for record in book_records[:200]:
        example = encode_example(record, tokenizer)
        assert list(example.token_ids) == tokenizer.encode(format_example(record))
        assert list(example.token_ids[:example.prompt_length]) == tokenizer.encode(format_prompt(record))


BATCH = [EncodedExample((0, 1, 2, 3, 4), 3), EncodedExample((5, 6), 1), EncodedExample((7, 8, 9), 2)]


def test_collate_worked_example():
    inputs, targets = collate_instructions(BATCH)
    assert inputs.dtype == targets.dtype == np.int64
    np.testing.assert_array_equal(inputs, [[0, 1, 2, 3, 4], [5, 6, E, E, E], [7, 8, 9, E, E]])
    np.testing.assert_array_equal(targets, [[1, 2, 3, 4, E], [6, E, -100, -100, -100], [8, 9, E, -100, -100]])


def test_collate_mask_instruction():
    _, targets = collate_instructions(BATCH, mask_instruction=True)
    # row 0: prompt of 3 tokens, so the targets predicting tokens 1 and 2 are masked; row 1: a 1-token
    # prompt masks nothing; row 2: a 2-token prompt masks the target predicting token 8.
    np.testing.assert_array_equal(targets, [[-100, -100, 3, 4, E], [6, E, -100, -100, -100], [-100, 9, E, -100, -100]])


def test_collate_max_length_and_plain_lists():
    inputs, targets = collate_instructions([[0, 1, 2, 3, 4], [5, 6], [7, 8, 9]], max_length=3)
    np.testing.assert_array_equal(inputs, [[0, 1, 2], [5, 6, E], [7, 8, 9]])
    np.testing.assert_array_equal(targets, [[1, 2, 3], [6, E, -100], [8, 9, E]])
    inputs, targets = collate_instructions([[3, 4]], max_length=None)
    np.testing.assert_array_equal(inputs, [[3, 4]])
    np.testing.assert_array_equal(targets, [[4, E]])
    with pytest.raises(ValueError, match="max_length"):
        collate_instructions([[1]], max_length=0)
    with pytest.raises(ValueError, match="at least one"):
        collate_instructions([])


def test_collate_keeps_real_end_of_text_ids_in_the_text():
    """Masking is by position, so an end-of-text id inside a sequence (not padding) is never masked."""
    _, targets = collate_instructions([[1, E, 2], [3]])
    np.testing.assert_array_equal(targets, [[E, 2, E], [E, -100, -100]])


def test_torch_collate_and_loader(book_records):
    inputs, targets = tinstruct.collate_instructions(BATCH, device="cpu", mask_instruction=True, max_length=4)
    assert inputs.dtype == targets.dtype == torch.int64 and inputs.device.type == "cpu"
    assert inputs.tolist() == [[0, 1, 2, 3], [5, 6, E, E], [7, 8, 9, E]]
    assert targets.tolist() == [[-100, -100, 3, 4], [6, E, -100, -100], [-100, 9, E, -100]]
    dataset = tinstruct.InstructionDataset(book_records[:10], get_tokenizer())
    loader = tinstruct.instruction_loader(dataset, batch_size=4, shuffle=True, drop_last=True, seed=1)
    batches = list(loader)
    assert len(batches) == 2 and batches[0][0].shape[0] == 4
    again = list(tinstruct.instruction_loader(dataset, batch_size=4, shuffle=True, drop_last=True, seed=1))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again))          # seeded order
    first = dataset[0]
    x, y = next(iter(tinstruct.instruction_loader(dataset, batch_size=1, shuffle=False, drop_last=False)))
    assert x[0].tolist() == list(first.token_ids) and y[0, -1] == E
