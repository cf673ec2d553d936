"""The tokenizer a classifier reads its messages with: the model's own, kept in the classifier's checkpoint.

    text = tokenizer_for_weights("smollm2-135m-instruct")      # the GGUF's byte-level BPE, padding <|endoftext|>
    save_checkpoint(folder, params, config, metadata={**text.metadata(), ...}, extra_json=text.files())
    text = tokenizer_of_classifier(folder, metadata)           # `gpt2 classify`: the same tokenizer back

GPT-2 models (OpenAI, Hugging Face GPT-2, our presets and runs) read GPT-2's BPE (tiktoken) and pad with
<|endoftext|> = 50256, as the book does: their metadata says "tokenizer": "gpt2" and no file is written. A
Llama GGUF carries its own tokenizer; its tokenizer.ggml.* metadata is copied as JSON into the checkpoint
(TOKENIZER_FILE) so that the run classifies new messages without the original file.

Which id pads does not change a prediction (it is read at the last real token, and attention is causal: no
real token sees the padding after it); <|endoftext|> when the vocabulary has it, else the end-of-text id.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from gptcore.formats.checkpoint import is_checkpoint, read_checkpoint_metadata
from gptcore.formats.gguf import open_gguf, read_gguf_metadata, tokenizer_from_metadata, tokenizer_metadata
from gptcore.formats.llama_release import is_hf_llama
from gptcore.formats.safetensors import WeightsError
from gptcore.formats.weights import detect_format, resolve_weights_path
from gptcore.tokenizer import ENDOFTEXT, get_tokenizer

GPT2_TOKENIZER = "gpt2"                  # metadata "tokenizer": GPT-2's BPE (tiktoken)
GPT2_PAD_TOKEN_ID = 50256                # GPT-2's <|endoftext|>, the book's padding token
TOKENIZER_FILE = "tokenizer.ggml.json"   # a GGUF's tokenizer.ggml.* metadata, in the classifier's checkpoint


@dataclass
class ClassifierText:
    """A tokenizer and its padding id; `ggml` holds the GGUF tokenizer metadata to save (None: GPT-2's)."""
    tokenizer: object
    pad_token_id: int
    source: str                          # whose tokenizer, for messages
    ggml: dict | None = None

    @property
    def name(self) -> str:
        return GPT2_TOKENIZER if self.ggml is None else TOKENIZER_FILE

    def metadata(self) -> dict:
        """The checkpoint metadata that names this tokenizer."""
        return {"tokenizer": self.name, "pad_token_id": self.pad_token_id, "tokenizer_source": self.source}

    def files(self) -> dict:
        """The checkpoint's extra files (save_checkpoint's extra_json): the GGUF tokenizer, if any."""
        return {} if self.ggml is None else {TOKENIZER_FILE: self.ggml}


def gpt2_text() -> ClassifierText:
    return ClassifierText(get_tokenizer(), GPT2_PAD_TOKEN_ID, "GPT-2's tokenizer")


def text_from_ggml(ggml: dict, source: str) -> ClassifierText:
    """A ClassifierText from a GGUF's tokenizer metadata (the file's, or a checkpoint's saved copy)."""
    tokenizer = tokenizer_from_metadata(ggml, source)
    pad = tokenizer.special_tokens.get(ENDOFTEXT, tokenizer.eot_id)
    if pad is None:
        raise WeightsError(f"{source}: the tokenizer has neither {ENDOFTEXT} nor an end-of-text id to pad with")
    return ClassifierText(tokenizer, int(pad), source, ggml)


def tokenizer_for_weights(path: str | os.PathLike | None) -> ClassifierText:
    """The tokenizer of the weights --init-from names (None: a model trained from scratch, GPT-2's)."""
    if path is None:
        return gpt2_text()
    resolved = resolve_weights_path(path)
    kind = detect_format(resolved)
    if kind == "gguf":
        ggml = tokenizer_metadata(read_gguf_metadata(open_gguf(resolved)))
        return text_from_ggml(ggml, f"the tokenizer of {resolved.name}")
    if kind == "checkpoint":
        return tokenizer_of_classifier(resolved, read_checkpoint_metadata(resolved))
    if kind == "huggingface" and is_hf_llama(resolved):
        raise WeightsError(f"{path} is a Hugging Face Llama folder: a classifier keeps its tokenizer in the "
                           f"GGUF metadata form, which such a folder does not carry; --init-from the model's GGUF "
                           f"file (e.g. smollm2-135m-instruct) instead")
    return gpt2_text()


def tokenizer_of_classifier(path: str | os.PathLike, metadata: dict) -> ClassifierText:
    """The tokenizer a checkpoint's metadata names: GPT-2's (also for checkpoints older than this field), or
    TOKENIZER_FILE in the checkpoint folder (path: the folder or its model.safetensors)."""
    name = metadata.get("tokenizer", GPT2_TOKENIZER)
    if name == GPT2_TOKENIZER:
        return ClassifierText(get_tokenizer(), int(metadata.get("pad_token_id", GPT2_PAD_TOKEN_ID)),
                              "GPT-2's tokenizer")
    folder = Path(path) if Path(path).is_dir() else Path(path).parent
    file = folder / name
    if name != TOKENIZER_FILE or not file.is_file():
        raise WeightsError(f"{folder}: the checkpoint's tokenizer {name!r} is missing (expected {file}); copy the "
                           f"whole checkpoint folder, or finetune again")
    if not is_checkpoint(folder):
        raise WeightsError(f"{folder} is not a checkpoint folder")
    text = text_from_ggml(json.loads(file.read_text(encoding="utf-8")),
                          metadata.get("tokenizer_source", str(file)))
    text.pad_token_id = int(metadata.get("pad_token_id", text.pad_token_id))
    return text
