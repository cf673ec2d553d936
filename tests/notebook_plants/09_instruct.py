# Planted bug for notebooks/09_instruct.ipynb: the instruction mask hides one target too many. Target j predicts
# token j + 1, so only j < prompt_length - 1 predict prompt tokens; this version also hides j = prompt_length - 1,
# the target of the response's first token. The notebook must fail: its brute-force oracle rebuilds every target
# of a real batch from the rules. The notebook imports collate_instructions after this cell, so patching the
# module attribute is enough (torchgpt.instruct calls it through the module too).
import gptcore.tasks.instruct as instruct

_collate_without_the_bug = instruct.collate_instructions


def collate_masking_one_too_many(batch, *, mask_instruction=False, **options):
    inputs, targets = _collate_without_the_bug(batch, mask_instruction=False, **options)
    if mask_instruction:
        for row, example in enumerate(batch):
            targets[row, :example.prompt_length] = instruct.IGNORE_INDEX
    return inputs, targets


instruct.collate_instructions = collate_masking_one_too_many
