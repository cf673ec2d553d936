"""How text goes in and out of a model: the tokenizer its weights carry, the ids that end a generation and its
chat template (`gpt2 generate`, `gpt2 finetune instruct`).

    text = model_text("smollm2-135m-instruct")     # the GGUF's own BPE, stop ids {<|im_end|>, <|endoftext|>}
    text = model_text("runs/verdict")              # GPT-2's tokenizer, stop id 50256, no template

A GGUF file carries its tokenizer and chat template, a Hugging Face folder its tokenizer.json and
tokenizer_config.json; every other weights format here is read with GPT-2's tokenizer.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from gptcore.engine.decoding import EOT_ID
from gptcore.formats.weights import load_weights_tokenizer
from gptcore.tokenizer import get_tokenizer

# Special tokens that end an assistant's turn in the chat formats of the models people have (ChatML:
# SmolLM2, Qwen; Llama 3; Gemma); a tokenizer's own end-of-text id and <|endoftext|> stop decoding too.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>")
ENDOFTEXT = "<|endoftext|>"


@dataclass(frozen=True)
class ModelText:
    """How text goes in and out of a model: its tokenizer, the ids that end a generation, its chat template."""
    tokenizer: object
    stop_ids: frozenset
    chat_template: str | None
    source: str                     # whose tokenizer, for messages


def stop_ids_of(tokenizer) -> frozenset:
    """The ids that end a generation: the tokenizer's end-of-text id (a chat model's GGUF names the end of a
    turn there), <|endoftext|>, and the end-of-turn tokens of END_OF_TURN_TOKENS that the vocabulary has."""
    special = tokenizer.special_tokens
    return frozenset({tokenizer.eot_id} | {special[token] for token in END_OF_TURN_TOKENS + (ENDOFTEXT,)
                                           if token in special})


def model_text(path: str | os.PathLike | None) -> ModelText:
    """The tokenizer the weights at `path` carry (gptcore.formats.weights.load_weights_tokenizer: a GGUF file's
    own BPE and chat template, a Hugging Face folder's tokenizer.json and tokenizer_config.json), else GPT-2's
    (no template); None (random weights of a preset) is GPT-2's too."""
    if path:
        found = load_weights_tokenizer(path)
        if found.carried:
            return ModelText(found.tokenizer, stop_ids_of(found.tokenizer), found.chat_template, found.source)
    return ModelText(get_tokenizer(), frozenset({EOT_ID}), None, "GPT-2's tokenizer")
