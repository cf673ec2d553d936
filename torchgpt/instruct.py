"""Instruction data for torch (the torch side of gptcore.tasks.instruct): a Dataset of tokenized examples and
the padding collate as torch tensors moved to a device. The padding and masking rules, with a worked example,
are in gptcore.tasks.instruct.collate_instructions, which this wraps."""
from __future__ import annotations

from functools import partial

import torch
from torch.utils.data import DataLoader, Dataset

from gptcore.tasks import instruct as core_instruct
from gptcore.tasks.instruct import DEFAULT_MAX_LENGTH, END_OF_TEXT_ID, IGNORE_INDEX, EncodedExample


class InstructionDataset(Dataset):
    """Records encoded once, up front: item i is an EncodedExample (token ids, prompt length)."""

    def __init__(self, records: list[dict], tokenizer):
        self.examples = core_instruct.encode_records(records, tokenizer)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> EncodedExample:
        return self.examples[index]


def collate_instructions(batch, *, device="cpu", pad_token_id: int = END_OF_TEXT_ID, ignore_index: int = IGNORE_INDEX,
                         max_length: int | None = DEFAULT_MAX_LENGTH, mask_instruction: bool = False):
    """(inputs, targets): int64 tensors (B, T) on `device`; the rules of gptcore.tasks.instruct.collate_instructions."""
    inputs, targets = core_instruct.collate_instructions(batch, pad_token_id=pad_token_id, ignore_index=ignore_index,
                                                         max_length=max_length, mask_instruction=mask_instruction)
    return torch.from_numpy(inputs).to(device), torch.from_numpy(targets).to(device)


def instruction_loader(dataset: InstructionDataset, batch_size: int, *, shuffle: bool, drop_last: bool,
                       seed: int = 123, device="cpu", max_length: int | None = DEFAULT_MAX_LENGTH,
                       mask_instruction: bool = False, num_workers: int = 0) -> DataLoader:
    """A DataLoader of padded (inputs, targets) batches; shuffling from a seeded generator (reproducible)."""
    collate = partial(collate_instructions, device=device, max_length=max_length, mask_instruction=mask_instruction)
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last, collate_fn=collate,
                      generator=generator, num_workers=num_workers)


@torch.no_grad()
def answer_records(model, records: list[dict], tokenizer, *, max_new_tokens: int = 256, progress: bool = True,
                   key: str = core_instruct.RESPONSE_KEY,
                   instruction_format: core_instruct.InstructionFormat = core_instruct.InstructionFormat()) -> list[dict]:
    """Copies of `records`, each with the model's greedy answer under "model_response" (the book's format).

    The prompt is instruction_format.prompt(record) (Alpaca: ending in "### Response:\\n"; chat: the assistant's
    opening); generation stops at instruction_format.stop_ids, and in the Alpaca format once the text holds the
    next "###"; the answer is printed without special tokens, stripped (InstructionFormat.answer_from_stream).
    """
    from tqdm.auto import tqdm

    from torchgpt.generate import stream_generate

    was_training = model.training
    model.eval()
    answered = []
    try:
        for record in tqdm(records, desc="answering", unit="record", disable=not progress):
            prompt_ids = instruction_format.prompt_ids(record, tokenizer)
            stream = stream_generate(model, prompt_ids, max_new_tokens, temperature=0.0,
                                     stop_ids=instruction_format.stop_ids)
            answered.append({**record, key: instruction_format.answer_from_stream(stream, tokenizer)})
    finally:
        model.train(was_training)
    return answered


@torch.no_grad()
def mean_loss(model, batches, device="cpu") -> float:
    """The mean cross-entropy over every target token of `batches` ((inputs, targets) NumPy arrays; -100
    left out): the token-weighted mean over the whole split, the same number npgpt.instruct.mean_loss gives."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for inputs, targets in batches:
            kept = int((targets != IGNORE_INDEX).sum())
            if kept:
                logits = model(torch.from_numpy(inputs).to(device))
                total += float(torch.nn.functional.cross_entropy(
                    logits.flatten(0, 1).float(), torch.from_numpy(targets).to(device).flatten(),
                    ignore_index=IGNORE_INDEX, reduction="sum"))
                count += kept
    finally:
        model.train(was_training)
    return total / count if count else float("nan")
