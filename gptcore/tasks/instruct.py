"""Instruction data: records, the Alpaca prompt, the split, tokenized examples and the padding collate.

A record is a dict with string values under "instruction", "input" (may be empty) and "output":

    {"instruction": "Rewrite the sentence in passive voice.", "input": "The cat ate the fish.",
     "output": "The fish was eaten by the cat."}

The model sees it in the Alpaca format (the "### Input:" section is left out when input is empty):

    Below is an instruction that describes a task. Write a response that appropriately completes the request.

    ### Instruction:
    Rewrite the sentence in passive voice.

    ### Input:
    The cat ate the fish.

    ### Response:
    The fish was eaten by the cat.

With `--prompt-format chat` the model's own chat template renders the record instead (InstructionFormat):
the instruction (and the input after a blank line) is one user turn, the output the assistant's turn.

collate_instructions() turns a list of tokenized examples into (inputs, targets) arrays; see its docstring
for a worked example. torchgpt/instruct.py wraps it for torch (Dataset, device transfer);
instruction_batches() gives the batch order both backends train on.

The judge-free check (exact_answer_share) is at the end: over the records whose reference output is one
word or number, the share of model responses that contain it (normalize_answer says how text is compared).
"""
from __future__ import annotations

import json
import os
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gptcore.fileio import read_jsonl
from gptcore.tasks.chat import ASSISTANT, ChatTemplateError, render_chat, user_turn

RECORD_KEYS = ("instruction", "input", "output")
RESPONSE_KEY = "model_response"
PREAMBLE = ("Below is an instruction that describes a task. "
            "Write a response that appropriately completes the request.")
RESPONSE_HEADER = "\n\n### Response:\n"
END_OF_TEXT_ID = 50256
IGNORE_INDEX = -100
DEFAULT_MAX_LENGTH = 1024


# ---------------------------------------------------------------------------------------------------
# records
# ---------------------------------------------------------------------------------------------------

def validate_records(records, required_keys=RECORD_KEYS, source: str = "the data") -> list[dict]:
    """Checks that `records` is a list of dicts holding a string under every required key.

    Raises ValueError naming the record index and the key (e.g. "record 17: key 'output' is missing").
    """
    if not isinstance(records, list):
        raise ValueError(f"{source}: expected a list of records (a JSON array, or one JSON object per line), "
                         f"got {type(records).__name__}")
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise ValueError(f"{source}: record {index} is a {type(record).__name__}, not an object with keys "
                             f"{list(required_keys)}")
        for key in required_keys:
            if key not in record:
                raise ValueError(f"{source}: record {index}: key {key!r} is missing (every record needs "
                                 f"{list(required_keys)}; use \"\" for an empty input)")
            if not isinstance(record[key], str):
                raise ValueError(f"{source}: record {index}: key {key!r} must be a string, got "
                                 f"{type(record[key]).__name__} ({record[key]!r:.40})")
    return records


def read_records(path: str | os.PathLike) -> list:
    """The records of a JSON file (one array) or a JSON-lines file (.jsonl/.ndjson, or JSON with extra lines)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file {path}: give a JSON or JSONL file of instruction records "
                                f"(or fetch the book's data with `gpt2 data fetch instruction-data`)")
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        return read_jsonl(path)
    text = path.read_text(encoding="utf-8")
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        if error.msg == "Extra data":          # several JSON values: one per line (JSONL under a .json name)
            return read_jsonl(path)
        raise ValueError(f"{path} is not valid JSON (line {error.lineno}, column {error.colno}: {error.msg}); "
                         f"give a JSON array of records or one JSON object per line") from error


def load_instruction_data(path: str | os.PathLike) -> list[dict]:
    """Validated instruction records (keys instruction, input, output) from a JSON or JSONL file."""
    return validate_records(read_records(path), RECORD_KEYS, source=str(path))


def split_records(records: list, train_fraction: int = 85, test_fraction: int = 10) -> tuple[list, list, list]:
    """(train, test, validation) in file order: the first 85%, the next 10%, the rest (5%).

    Integer arithmetic, so 1,100 records give exactly 935 / 110 / 55.
    """
    n = len(records)
    n_train = n * train_fraction // 100
    n_test = n * test_fraction // 100
    return records[:n_train], records[n_train:n_train + n_test], records[n_train + n_test:]


# ---------------------------------------------------------------------------------------------------
# the prompt
# ---------------------------------------------------------------------------------------------------

def format_input(record: dict) -> str:
    """The preamble, the instruction and (when not empty) the input: everything before "### Response:"."""
    text = f"{PREAMBLE}\n\n### Instruction:\n{record['instruction']}"
    if record["input"]:
        text += f"\n\n### Input:\n{record['input']}"
    return text


def format_prompt(record: dict) -> str:
    """What the model is given at answer time: format_input + "### Response:" and a newline."""
    return format_input(record) + RESPONSE_HEADER


def format_example(record: dict) -> str:
    """The full training text: the prompt followed by the reference output."""
    return format_prompt(record) + record["output"]


@dataclass(frozen=True)
class EncodedExample:
    """Token ids of one training text and how many of them are the prompt (masked with --mask-instruction)."""
    token_ids: tuple
    prompt_length: int


def encode_example(record: dict, tokenizer) -> EncodedExample:
    """prompt tokens + output tokens. Encoding the two parts separately makes the prompt/response boundary
    exact (the prompt ends in a newline, which GPT-2's BPE never merges with the next word anyway)."""
    prompt_ids = tokenizer.encode(format_prompt(record))
    output_ids = tokenizer.encode(record["output"])
    return EncodedExample(tuple(prompt_ids) + tuple(output_ids), len(prompt_ids))


def encode_records(records: list, tokenizer) -> list[EncodedExample]:
    return [encode_example(record, tokenizer) for record in records]


# ---------------------------------------------------------------------------------------------------
# collate
# ---------------------------------------------------------------------------------------------------

def _as_example(item) -> EncodedExample:
    if isinstance(item, EncodedExample):
        return item
    return EncodedExample(tuple(item), 0)


def collate_instructions(batch, *, pad_token_id: int = END_OF_TEXT_ID, ignore_index: int = IGNORE_INDEX,
                         max_length: int | None = DEFAULT_MAX_LENGTH, mask_instruction: bool = False):
    """Pads a batch of token sequences into (inputs, targets), both int64 arrays of shape (B, T).

    batch: EncodedExample items (or plain lists of token ids, which have no prompt to mask).
    1. Every sequence gets one end-of-text token (pad_token_id, 50256) appended, then more of it up to the
       longest sequence + 1.
    2. inputs = padded[:, :-1], targets = padded[:, 1:] (the next token at every position).
    3. The first end-of-text target of a row stays (the model learns to stop); every later one, pure
       padding, becomes ignore_index (-100) and is left out of the loss.
    4. mask_instruction: targets that predict prompt tokens become ignore_index too (the loss is over the
       response and its end-of-text only). Target j predicts token j + 1, so that is j < prompt_length - 1.
    5. max_length: rows are cut to their first max_length positions (None: no cut).

    Worked example (E = 50256), token rows [0, 1, 2, 3, 4], [5, 6], [7, 8, 9]; the first has a 3-token prompt:

        padded    [0, 1, 2, 3, 4, E]      [5, 6, E, E, E, E]        [7, 8, 9, E, E, E]
        inputs    [0, 1, 2, 3, 4]         [5, 6, E, E, E]           [7, 8, 9, E, E]
        targets   [1, 2, 3, 4, E]         [6, E, -100, -100, -100]  [8, 9, E, -100, -100]
        mask_instruction, row 0:  targets [-100, -100, 3, 4, E]
        max_length=3:             inputs [[0, 1, 2], [5, 6, E], [7, 8, 9]], targets [[1, 2, 3], [6, E, -100], [8, 9, E]]
    """
    examples = [_as_example(item) for item in batch]
    if not examples:
        raise ValueError("collate_instructions needs at least one example")
    if max_length is not None and max_length < 1:
        raise ValueError(f"max_length must be a positive number of tokens or None, got {max_length}")
    width = max(len(ex.token_ids) for ex in examples) + 1            # longest + its end-of-text
    padded = np.full((len(examples), width), pad_token_id, dtype=np.int64)
    for row, ex in enumerate(examples):
        padded[row, :len(ex.token_ids)] = ex.token_ids
    inputs = padded[:, :-1].copy()                                   # (B, width - 1)
    targets = padded[:, 1:].copy()                                   # (B, width - 1)
    for row, ex in enumerate(examples):
        n = len(ex.token_ids)
        targets[row, n:] = ignore_index                              # target n - 1 is the kept end-of-text
        if mask_instruction:
            targets[row, :max(ex.prompt_length - 1, 0)] = ignore_index
    if max_length is not None:
        inputs, targets = inputs[:, :max_length], targets[:, :max_length]
    return inputs, targets


# ---------------------------------------------------------------------------------------------------
# answers
# ---------------------------------------------------------------------------------------------------

STOP_MARKER = "###"


def extract_response(text: str) -> str:
    """The answer in generated text: everything before the next "###" (a new section), stripped."""
    return text.split(STOP_MARKER, 1)[0].strip()


def answer_from_stream(token_stream, tokenizer) -> str:
    """Reads new token ids from a generator (it stops itself at <|endoftext|>) until the decoded text holds
    "###", then stops asking for more; returns extract_response of the text."""
    ids = []
    for token in token_stream:
        ids.append(int(token))
        # A "###" that the newest token completes lies within the last 3 tokens (each holds at least one of
        # its bytes): decode that tail, not the whole answer, at every step.
        if STOP_MARKER in tokenizer.decode(ids[-3:]):
            break
    return extract_response(tokenizer.decode(ids))


# ---------------------------------------------------------------------------------------------------
# prompt formats: the book's Alpaca text, or the model's own chat template
# ---------------------------------------------------------------------------------------------------

PROMPT_FORMATS = ("alpaca", "chat")


def chat_user_message(record: dict) -> str:
    """The user's turn of a record: the instruction, and the input (when not empty) after a blank line."""
    return f"{record['instruction']}\n\n{record['input']}" if record["input"] else record["instruction"]


def chat_prompt(record: dict, template: str) -> str:
    """The record's user turn rendered by the chat template with the assistant's opening, as transformers'
    apply_chat_template(messages, add_generation_prompt=True, tokenize=False) renders it. SmolLM2:

        <|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n
        <|im_start|>user\\nRewrite the sentence in passive voice.\\n\\nThe cat ate the fish.<|im_end|>\\n
        <|im_start|>assistant\\n
    """
    return render_chat(template, user_turn(chat_user_message(record)), add_generation_prompt=True)


def chat_conversation(record: dict, template: str) -> str:
    """The whole conversation, user turn and the reference output as the assistant's turn, as transformers
    renders it for training (add_generation_prompt=False): SmolLM2 adds '...<|im_start|>assistant\\n' +
    output + '<|im_end|>\\n'."""
    messages = user_turn(chat_user_message(record)) + [{"role": ASSISTANT, "content": record["output"]}]
    return render_chat(template, messages, add_generation_prompt=False)


@dataclass(frozen=True)
class InstructionFormat:
    """How records become token ids for one model, and how its answers end.

    name: "alpaca" (the book's text) or "chat" (the model's chat template, `template`).
    end_id: the token that ends a training text (appended by the collate, and the padding): GPT-2's
        <|endoftext|>, a chat model's end of turn (SmolLM2's GGUF names <|im_end|>, id 2, as its end token).
    stop_ids: the ids that end a generated answer (end of text, end of turn).
    special_ids: the tokenizer's special tokens, left out of the printed answers.
    """
    name: str = "alpaca"
    end_id: int = END_OF_TEXT_ID
    stop_ids: tuple = (END_OF_TEXT_ID,)
    template: str | None = None
    special_ids: frozenset = frozenset()

    def __post_init__(self):
        if self.name not in PROMPT_FORMATS:
            raise ValueError(f"unknown prompt format {self.name!r}; choose one of {', '.join(PROMPT_FORMATS)}")
        if self.name == "chat" and self.template is None:
            raise ValueError("the chat prompt format needs the model's chat template (a GGUF's "
                             "tokenizer.chat_template); these weights have none: use --prompt-format alpaca")

    def prompt(self, record: dict) -> str:
        """What the model is given at answer time (it ends where the answer starts)."""
        return chat_prompt(record, self.template) if self.name == "chat" else format_prompt(record)

    def encode(self, record: dict, tokenizer) -> EncodedExample:
        """prompt ids + output ids (the collate appends end_id). The prompt is encoded with special tokens
        allowed only in the chat format, where the template writes them (<|im_start|>); record text itself is
        never read as special tokens. In the chat format the training text is transformers' rendering of the
        conversation up to and including the end-of-turn token: check_chat_rendering says so per record."""
        if self.name == "alpaca":
            return encode_example(record, tokenizer)
        prompt_ids = self.prompt_ids(record, tokenizer)
        return EncodedExample(tuple(prompt_ids) + tuple(tokenizer.encode(record["output"])), len(prompt_ids))

    def prompt_ids(self, record: dict, tokenizer) -> list[int]:
        """The ids of prompt(record): the start of encode(record)'s ids, where generation begins."""
        if self.name == "alpaca":
            return tokenizer.encode(format_prompt(record))
        return tokenizer.encode(self.prompt(record), allowed_special="all")

    def check_chat_rendering(self, record: dict, tokenizer) -> None:
        """The chat format's training text must be the template's conversation: prompt + output + the end
        token, with nothing after it but whitespace (the newline ChatML writes after <|im_end|>, which
        generation never reaches). ChatTemplateError when the template renders the assistant turn otherwise."""
        whole = chat_conversation(record, self.template)
        ours = self.prompt(record) + record["output"] + tokenizer.decode([self.end_id])
        if not (whole.startswith(ours) and not whole[len(ours):].strip()):
            raise ChatTemplateError(f"the chat template renders the assistant's turn as {whole[-80:]!r}, not as the "
                                    f"answer followed by the end token {tokenizer.decode([self.end_id])!r}; "
                                    f"use --prompt-format alpaca with this model")

    def answer(self, new_ids, tokenizer) -> str:
        """The printed answer of generated ids: special tokens left out; in the Alpaca format the text
        before the next "###" (extract_response); stripped."""
        text = tokenizer.decode([int(i) for i in new_ids if int(i) not in self.special_ids])
        return extract_response(text) if self.name == "alpaca" else text.strip()

    def answer_from_stream(self, token_stream, tokenizer) -> str:
        """Reads a generator of new ids (it stops itself at stop_ids); the Alpaca format stops asking once
        the text holds "###" (answer_from_stream)."""
        if self.name == "alpaca":
            return answer_from_stream((i for i in token_stream if int(i) not in self.special_ids), tokenizer)
        return self.answer(list(token_stream), tokenizer)


def instruction_format(name: str, tokenizer, stop_ids=(), template: str | None = None) -> InstructionFormat:
    """The format `name` for a tokenizer: its end-of-text id (eot_id) ends the texts; generation stops there
    and at `stop_ids` (a chat model's end-of-turn tokens)."""
    end_id = int(getattr(tokenizer, "eot_id", END_OF_TEXT_ID))
    special = frozenset(int(i) for i in getattr(tokenizer, "special_tokens", {}).values())
    return InstructionFormat(name=name, end_id=end_id, stop_ids=tuple(sorted({end_id, *map(int, stop_ids)})),
                             template=template, special_ids=special)


# ---------------------------------------------------------------------------------------------------
# the batch order of both backends
# ---------------------------------------------------------------------------------------------------

def instruction_batches(examples: list, batch_size: int, *, shuffle: bool, drop_last: bool, seed: int = 123,
                        epoch: int = 0, **collate_options):
    """(inputs, targets) int64 arrays (B, T) of collate_instructions, batch after batch: in order, or shuffled
    by a generator seeded with (seed, epoch) so both backends and a resumed run see the same batches."""
    order = np.arange(len(examples))
    if shuffle:
        order = np.random.default_rng([seed, epoch]).permutation(len(examples))
    stop = len(order) - len(order) % batch_size if drop_last else len(order)
    for start in range(0, stop, batch_size):
        yield collate_instructions([examples[i] for i in order[start:start + batch_size]], **collate_options)


# ---------------------------------------------------------------------------------------------------
# the judge-free check: does the response contain a one-word reference answer?
# ---------------------------------------------------------------------------------------------------

def normalize_answer(text: str) -> list[str]:
    """The words of `text` as compared: Unicode NFKC, lower case, every punctuation character (Unicode
    category P*: . , ! ? - ' " ( ) ...) deleted, split on whitespace. "Opinion-based." -> ["opinionbased"],
    "Mercury (Hg)." -> ["mercury", "hg"], "3.14" -> ["314"]."""
    text = unicodedata.normalize("NFKC", text).lower()
    return "".join(c for c in text if not unicodedata.category(c).startswith("P")).split()


def is_single_word_answer(reference: str) -> bool:
    """A reference output of one word or number once normalized ("Hg.", "Laughed.", "42")."""
    return len(normalize_answer(reference)) == 1


def contains_answer(response: str, reference: str) -> bool:
    """The one-word reference is one of the response's words (whole words: "young" is not in "younger")."""
    return normalize_answer(reference)[0] in normalize_answer(response)


def exact_answer_share(records: list[dict], key: str = RESPONSE_KEY) -> dict:
    """Over the records whose "output" is a single word or number: {"records": n, "hits": k, "share": k / n
    (None when n = 0), "indices": the records' positions}."""
    indices = [i for i, record in enumerate(records) if is_single_word_answer(record["output"])]
    hits = sum(contains_answer(records[i][key], records[i]["output"]) for i in indices)
    return {"records": len(indices), "hits": hits, "share": hits / len(indices) if indices else None,
            "indices": indices}
