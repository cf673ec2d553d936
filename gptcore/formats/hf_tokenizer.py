"""A Hugging Face folder's tokenizer (tokenizer.json + tokenizer_config.json), read into the project's
from-scratch byte-level BPE (gptcore.tokenizer.GPT2Tokenizer) and written back from it.

    tokenizer = load_hf_tokenizer(folder)            # tokenizer.json: vocabulary, merges, specials, pre-tokenizer
    template = load_hf_chat_template(folder)         # tokenizer_config.json's chat_template (or chat_template.jinja)
    save_hf_tokenizer(folder, tokenizer, template)   # what `gpt2 weights convert --format huggingface` writes

What tokenizer.json holds, and what is read (the `tokenizers` library's serialization):
- model: {"type": "BPE", "vocab": {token: id}, "merges": ["a b", ...] or [["a", "b"], ...], "ignore_merges"}:
  the vocabulary and the merges in rank order. ignore_merges=true (a word that is itself a token skips the
  merges) is GPT2Tokenizer's whole_word_shortcut. Dropout, an unknown token, subword prefixes/suffixes and byte
  fallback belong to other kinds of BPE and are refused by name.
- added_tokens: [{"id", "content", "special", ...}]: matched in the text before pre-tokenization, so they are
  GPT2Tokenizer's special tokens (<|endoftext|>, <|im_start|>, <|im_end|>, ...).
- pre_tokenizer: ByteLevel alone is GPT-2's pattern ("gpt2"); Sequence[Digits(individual_digits=true),
  ByteLevel] is SmolLM2's ("smollm"); both without a prefix space. Anything else (Split with another regex,
  Metaspace, ...) is refused by name: its ids would differ.
- normalizer must be null, post_processor null or ByteLevel (which only moves offsets): others change the ids.
tokenizer_config.json gives the chat template (Jinja) and eos_token, the token that ends a generation.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from gptcore.fileio import atomic_write_json, atomic_write_text
from gptcore.formats.safetensors import WeightsError
from gptcore.tokenizer import GPT2Tokenizer

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"        # where transformers >= 4.43 may save the template instead

# The tokenizer.json pre_tokenizer of each pre-tokenizer GPT2Tokenizer implements (gptcore.tokenizer.PRE_TOKENIZERS).
BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
DIGITS = {"type": "Digits", "individual_digits": True}
PRE_TOKENIZER_JSON = {"gpt2": BYTE_LEVEL, "smollm": {"type": "Sequence", "pretokenizers": [DIGITS, BYTE_LEVEL]}}
# Options of the BPE model that only another kind of BPE sets (their value here must be null / false).
OTHER_BPE_OPTIONS = ("dropout", "unk_token", "continuing_subword_prefix", "end_of_word_suffix", "byte_fallback")


def has_hf_tokenizer(folder: str | os.PathLike) -> bool:
    """True when `folder` (or the folder of a file in it) holds a tokenizer.json."""
    folder = Path(folder)
    return ((folder if folder.is_dir() else folder.parent) / TOKENIZER_FILE).is_file()


def _read_json(file: Path) -> dict:
    try:
        values = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise WeightsError(f"cannot read {file} ({error}); copy the model's file again") from error
    if not isinstance(values, dict):
        raise WeightsError(f"{file} holds a JSON {type(values).__name__}, not an object")
    return values


def _pre_tokenizer_name(spec, source) -> str:
    """"gpt2" or "smollm" for the tokenizer.json pre_tokenizer `spec`; WeightsError naming anything else."""
    def byte_level(part) -> bool:
        return (isinstance(part, dict) and part.get("type") == "ByteLevel" and not part.get("add_prefix_space")
                and part.get("use_regex", True))

    if byte_level(spec):
        return "gpt2"
    if isinstance(spec, dict) and spec.get("type") == "Sequence":
        parts = spec.get("pretokenizers") or []
        if (len(parts) == 2 and isinstance(parts[0], dict) and parts[0].get("type") == "Digits"
                and parts[0].get("individual_digits") and byte_level(parts[1])):
            return "smollm"
    described = json.dumps(spec)[:200]
    raise WeightsError(f"{source}: pre_tokenizer {described} is not implemented here; known: ByteLevel alone "
                       f"(GPT-2's pattern) and Sequence[Digits(individual_digits), ByteLevel] (SmolLM2's), both "
                       f"without add_prefix_space; give the model's GGUF file if llama.cpp supports its tokenizer")


def _merges(raw, source) -> list[tuple[str, str]]:
    """The merges in rank order, from either spelling: "left right" strings or [left, right] pairs."""
    merges = []
    for rank, merge in enumerate(raw):
        if isinstance(merge, str):
            left, space, right = merge.partition(" ")
            pair = (left, right) if space and left and right and " " not in right else None
        elif isinstance(merge, (list, tuple)) and len(merge) == 2 and all(isinstance(p, str) for p in merge):
            pair = (merge[0], merge[1])
        else:
            pair = None
        if pair is None:
            raise WeightsError(f"{source}: merge {rank} ({merge!r}) is neither 'left right' nor [left, right]")
        merges.append(pair)
    return merges


def _special_tokens(added, source) -> dict[str, int]:
    """added_tokens -> {content: id}. Tokens that strip neighbouring spaces or match whole words only are
    refused: GPT2Tokenizer matches special tokens exactly where they stand."""
    special = {}
    for token in added or []:
        if not isinstance(token, dict) or "content" not in token or "id" not in token:
            raise WeightsError(f"{source}: added token {token!r} lacks its content or id")
        for option in ("lstrip", "rstrip", "single_word"):
            if token.get(option):
                raise WeightsError(f"{source}: added token {token['content']!r} sets {option}, which the "
                                   f"tokenizer here does not implement")
        special[token["content"]] = int(token["id"])
    return special


def _eos_token(config: dict) -> str | None:
    """tokenizer_config.json's eos_token: a string, or an AddedToken object {"content": ...}."""
    eos = config.get("eos_token")
    return eos.get("content") if isinstance(eos, dict) else eos


def load_hf_tokenizer(folder: str | os.PathLike) -> GPT2Tokenizer:
    """The byte-level BPE of a Hugging Face folder's tokenizer.json as GPT2Tokenizer; eot_id is the id of
    tokenizer_config.json's eos_token (the end of a turn for a chat model), else <|endoftext|>'s."""
    folder = Path(folder)
    folder = folder if folder.is_dir() else folder.parent
    source = folder / TOKENIZER_FILE
    if not source.is_file():
        raise FileNotFoundError(f"missing {source}: the folder carries no Hugging Face tokenizer; copy the "
                                f"model's tokenizer.json (and tokenizer_config.json) next to its config.json")
    values = _read_json(source)
    model = values.get("model") or {}
    if model.get("type") != "BPE":
        raise WeightsError(f"{source}: tokenizer model {model.get('type')!r} is not supported: only byte-level "
                           f"BPE is implemented here, not WordPiece, Unigram (SentencePiece) or others")
    for option in OTHER_BPE_OPTIONS:
        if model.get(option):
            raise WeightsError(f"{source}: the BPE model sets {option}={model[option]!r}, which the byte-level BPE "
                               f"here does not implement")
    if values.get("normalizer") is not None:
        raise WeightsError(f"{source}: normalizer {json.dumps(values['normalizer'])[:120]} is not implemented here")
    post = values.get("post_processor")
    if post is not None and post.get("type") != "ByteLevel":
        raise WeightsError(f"{source}: post_processor {post.get('type')!r} (it adds tokens to every text) is not "
                           f"implemented here")
    pre = _pre_tokenizer_name(values.get("pre_tokenizer"), source)
    special = _special_tokens(values.get("added_tokens"), source)
    config_file = folder / TOKENIZER_CONFIG_FILE
    eos = _eos_token(_read_json(config_file)) if config_file.is_file() else None
    vocab = {token: int(i) for token, i in model.get("vocab", {}).items()}
    eot_id = special.get(eos, vocab.get(eos)) if eos is not None else None
    return GPT2Tokenizer(vocab, _merges(model.get("merges", []), source), special, pre, eot_id=eot_id,
                         whole_word_shortcut=bool(model.get("ignore_merges", False)))


def load_hf_chat_template(folder: str | os.PathLike) -> str | None:
    """The folder's chat template: chat_template.jinja, else tokenizer_config.json's chat_template (a string,
    or a list of {"name", "template"} whose "default" is taken); None when it has none."""
    folder = Path(folder)
    folder = folder if folder.is_dir() else folder.parent
    if (folder / CHAT_TEMPLATE_FILE).is_file():
        return (folder / CHAT_TEMPLATE_FILE).read_text(encoding="utf-8")
    config_file = folder / TOKENIZER_CONFIG_FILE
    if not config_file.is_file():
        return None
    template = _read_json(config_file).get("chat_template")
    if isinstance(template, list):
        named = {entry.get("name"): entry.get("template") for entry in template if isinstance(entry, dict)}
        template = named.get("default")
    return template if isinstance(template, str) else None


def tokenizer_json(tokenizer: GPT2Tokenizer) -> dict:
    """The tokenizer.json of `tokenizer` (the `tokenizers` library's layout; merges as [left, right] pairs)."""
    if tokenizer.pre_tokenizer_name not in PRE_TOKENIZER_JSON:
        raise WeightsError(f"the tokenizer's pre-tokenizer ({tokenizer.pre_tokenizer_name or 'a function'}) has no "
                           f"tokenizer.json form; known: {', '.join(PRE_TOKENIZER_JSON)}")
    merges = [list(pair) for pair, _ in sorted(tokenizer.merge_ranks.items(), key=lambda item: item[1])]
    added = [{"id": i, "content": token, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True}
             for token, i in sorted(tokenizer.special_tokens.items(), key=lambda item: item[1])]
    byte_level = dict(BYTE_LEVEL)
    # The vocabulary lists the special tokens too, at their ids, as the Hub's files do (transformers gives an
    # added token missing from it a new id).
    vocab = dict(sorted({**tokenizer.encoder, **tokenizer.special_tokens}.items(), key=lambda item: item[1]))
    return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
            "pre_tokenizer": PRE_TOKENIZER_JSON[tokenizer.pre_tokenizer_name],
            "post_processor": {**byte_level, "trim_offsets": False}, "decoder": byte_level,
            "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                      "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                      "ignore_merges": tokenizer.whole_word_shortcut,
                      "vocab": vocab, "merges": merges}}


def save_hf_tokenizer(folder: str | os.PathLike, tokenizer: GPT2Tokenizer, chat_template: str | None = None) -> Path:
    """Write tokenizer.json and tokenizer_config.json (eos_token, the chat template) into `folder`, each
    atomically, so load_hf_tokenizer and transformers' AutoTokenizer read them back."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = {i: token for token, i in tokenizer.special_tokens.items()}
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False,
              "model_max_length": 1_000_000_000, "add_prefix_space": False}
    if tokenizer.eot_id in names:
        config["eos_token"] = names[tokenizer.eot_id]
    if chat_template is not None:
        config["chat_template"] = chat_template
    atomic_write_text(folder / TOKENIZER_FILE, json.dumps(tokenizer_json(tokenizer), ensure_ascii=False))
    atomic_write_json(folder / TOKENIZER_CONFIG_FILE, config)
    return folder
