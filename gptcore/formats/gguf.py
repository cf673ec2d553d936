"""GGUF, llama.cpp's single-file format: a Llama's config, float32 weights and tokenizer out of one .gguf file.

    config, params = load_gguf("SmolLM2-135M-Instruct.Q4_1.gguf")   # load_weights dispatches here
    metadata = read_gguf_metadata(path)                               # {key: value}, tokenizer arrays included

The file is read with the `gguf` package (llama.cpp's own Python reader, a memory map): the metadata gives the
config (llama.block_count, llama.embedding_length, ...), and each tensor is dequantized to float32 by
gguf.quants.dequantize, one tensor at a time, so the peak is the float32 params plus one tensor's temporaries
(about twice the float32 model at most). Every type the package dequantizes loads (F32, F16, BF16, Q8_0,
Q4_0, Q4_1, Q5_0, Q5_1, the K-quants Q2_K..Q6_K, the IQ types); another type is refused by name.

The tensor names are one table, GGUF_NAMES (canonical name -> GGUF name). Two things differ from Hugging Face:
- GGUF lists dimensions fastest-first (ne0 = the input width); the arrays the reader gives are already in
  NumPy's (out, in) order, the canonical one.
- llama.cpp's convert_hf_to_gguf.py permutes the rows of every query and key weight, per head, from Hugging
  Face's rotate-half order (first half of a head's dims paired with the second half) to the interleaved
  order of GGML's RoPE (dims 2j and 2j+1 paired):
      permute(w, n) = w.reshape(n, 2, D // 2, C).swapaxes(1, 2).reshape(n * D, C)     n = H for q, Hkv for k
  unpermute_rows below is its inverse (transformers' GGUF integration does the same), so the loaded weights
  fit the rotate-half RoPE both twins implement.
The head is tied to the embedding when the file has no output.weight (SmolLM2's has none).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader
from gguf.quants import dequantize

from gptcore.config import GPTConfig
from gptcore.formats.llama_release import (EMBEDDING, HEAD, check_shape, expand_names, llama_config,
                                           llama_param_shapes)
from gptcore.formats.safetensors import WeightsError
from gptcore.tokenizer import PRE_TOKENIZERS, GPT2Tokenizer

GGUF_SUFFIX = ".gguf"
GGUF_MAGIC = b"GGUF"
SUPPORTED_ARCHITECTURES = ("llama",)

# THE name table: canonical parameter name -> GGUF tensor name; "{i}" is the layer.
GGUF_NAMES = {
    "tok_emb.weight": "token_embd.weight",
    "blocks.{i}.norm1.scale": "blk.{i}.attn_norm.weight",
    "blocks.{i}.att.W_query.weight": "blk.{i}.attn_q.weight",
    "blocks.{i}.att.W_key.weight": "blk.{i}.attn_k.weight",
    "blocks.{i}.att.W_value.weight": "blk.{i}.attn_v.weight",
    "blocks.{i}.att.out_proj.weight": "blk.{i}.attn_output.weight",
    "blocks.{i}.norm2.scale": "blk.{i}.ffn_norm.weight",
    "blocks.{i}.ff.gate.weight": "blk.{i}.ffn_gate.weight",
    "blocks.{i}.ff.up.weight": "blk.{i}.ffn_up.weight",
    "blocks.{i}.ff.down.weight": "blk.{i}.ffn_down.weight",
    "final_norm.scale": "output_norm.weight",
    "out_head.weight": "output.weight",
}
# The canonical names whose rows llama.cpp permuted, and which head count it permuted them with.
PERMUTED_ROWS = {"att.W_query.weight": "n_heads", "att.W_key.weight": "n_kv_heads"}


def is_gguf(path: str | os.PathLike) -> bool:
    """A file whose name ends in .gguf or whose first bytes are GGUF's magic."""
    path = Path(path)
    if not path.is_file():
        return False
    if path.suffix == GGUF_SUFFIX:
        return True
    with open(path, "rb") as handle:
        return handle.read(4) == GGUF_MAGIC


def open_gguf(path: str | os.PathLike):
    """A gguf.GGUFReader over `path` (read-only memory map); WeightsError for a file it cannot parse."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no GGUF file at {path}")
    try:
        return GGUFReader(path, "r")
    except Exception as error:  # the reader raises ValueError/struct errors/IndexError on damaged files
        raise WeightsError(f"{path} is not a readable GGUF file ({type(error).__name__}: {error}); it is truncated "
                           f"or corrupt: download it again") from error


def read_gguf_metadata(reader) -> dict:
    """Every key-value pair of the file as Python values (strings, numbers, lists)."""
    return {name: field.contents() for name, field in reader.fields.items() if not name.startswith("GGUF.")}


def _required(metadata: dict, key: str, source):
    if key not in metadata:
        raise WeightsError(f"{source}: metadata {key} is missing; the file is not a complete llama GGUF")
    return metadata[key]


def config_from_metadata(metadata: dict, tie_weights: bool, n_vocab_rows: int | None, source) -> GPTConfig:
    """The GPTConfig of a llama GGUF's metadata ({arch}.block_count, .embedding_length, ...)."""
    arch = metadata.get("general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise WeightsError(f"{source}: GGUF architecture {arch!r} is not supported (only "
                           f"{', '.join(SUPPORTED_ARCHITECTURES)}); this file holds another model family")
    key = lambda name: f"{arch}.{name}"   # noqa: E731  (the keys are prefixed by the architecture)
    C = _required(metadata, key("embedding_length"), source)
    H = _required(metadata, key("attention.head_count"), source)
    rope_dims = metadata.get(key("rope.dimension_count"), C // H)
    if rope_dims != C // H:
        raise WeightsError(f"{source}: RoPE on {rope_dims} of {C // H} head dims (partial rotary) is not supported")
    scaling = metadata.get(key("rope.scaling.type"), "none")
    if scaling not in ("none", None):
        raise WeightsError(f"{source}: rope scaling {scaling!r} in a GGUF is not supported; load the model's "
                           f"Hugging Face folder instead")
    vocab = metadata.get(key("vocab_size"))
    if vocab is None:
        tokens = metadata.get("tokenizer.ggml.tokens")
        vocab = len(tokens) if tokens is not None else n_vocab_rows
    return llama_config(vocab_size=vocab, context_length=_required(metadata, key("context_length"), source),
                        emb_dim=C, n_heads=H, n_kv_heads=metadata.get(key("attention.head_count_kv"), H),
                        n_layers=_required(metadata, key("block_count"), source),
                        ff_dim=_required(metadata, key("feed_forward_length"), source),
                        rope_theta=_decimal(metadata.get(key("rope.freq_base"), 10000.0)),
                        norm_eps=_decimal(_required(metadata, key("attention.layer_norm_rms_epsilon"), source)),
                        tie_weights=tie_weights, source=source)


def _decimal(value: float) -> float:
    """A float32 metadata value as the decimal it was written from: 1e-5 is stored as 9.99999975e-06, whose
    shortest float32 spelling is '1e-05' again."""
    return float(str(np.float32(value)))


def unpermute_rows(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's per-head row permutation of a query/key weight (n_heads * D, C).

    llama.cpp wrote row j of head h's half s (s = 0 first half, 1 second) at position 2j + s: the halves
    interleaved. Reading each head's rows as (D // 2, 2) and transposing to (2, D // 2) puts them back.
    """
    rows, cols = weight.shape
    D = rows // n_heads
    return weight.reshape(n_heads, D // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


def dequantize_tensor(tensor, source) -> np.ndarray:
    """One GGUF tensor as float32 in NumPy (out, in) order; WeightsError naming an unsupported type."""
    kind = tensor.tensor_type
    shape = tuple(int(n) for n in reversed(tensor.shape))   # GGUF lists ne0 (the fastest axis) first
    try:
        if kind in (GGMLQuantizationType.F64, GGMLQuantizationType.I8, GGMLQuantizationType.I16,
                    GGMLQuantizationType.I32, GGMLQuantizationType.I64):
            values = np.asarray(tensor.data)             # plain numbers: the reader typed them already
        else:
            values = dequantize(tensor.data, kind)
    except NotImplementedError as error:
        raise WeightsError(f"{source}: tensor {tensor.name} has GGML type {kind.name}, which the gguf package "
                           f"cannot dequantize ({error}); use a file quantized as F16, Q8_0, Q4_K, ...") from error
    out = np.empty(shape, dtype=np.float32)
    out[...] = np.asarray(values).reshape(shape)
    return out


def load_gguf(path: str | os.PathLike, reader=None) -> tuple[GPTConfig, dict[str, np.ndarray]]:
    """(config, params) of a llama GGUF: float32, C-contiguous, canonical names and order, query/key rows in
    Hugging Face's rotate-half order, out_head.weight the same array as tok_emb.weight when the file has no
    output.weight. reader: an open gguf.GGUFReader of `path` to reuse (parsing the metadata costs seconds)."""
    path = Path(path)
    reader = reader if reader is not None else open_gguf(path)
    metadata = read_gguf_metadata(reader)
    tensors = {tensor.name: tensor for tensor in reader.tensors}
    if "rope_freqs.weight" in tensors:
        raise WeightsError(f"{path}: the file carries rope_freqs.weight (Llama 3's rope scaling factors), which "
                           f"the GGUF loader does not apply; load the model's Hugging Face folder instead")
    names = expand_names(GGUF_NAMES, int(metadata.get(f"{metadata.get('general.architecture')}.block_count", 0)))
    tie = names[HEAD] not in tensors
    embedding = tensors.get(names[EMBEDDING])
    n_vocab_rows = int(embedding.shape[-1]) if embedding is not None else None
    config = config_from_metadata(metadata, tie, n_vocab_rows, path)
    unknown = sorted(set(tensors) - set(names.values()))
    if unknown:
        raise WeightsError(f"{path}: unexpected tensors {unknown[:5]} for a {config.n_layers}-layer llama; the "
                           f"file is not a plain Llama (another variant of the architecture?)")
    shapes = llama_param_shapes(config)
    params: dict[str, np.ndarray] = {}
    for canonical, gguf_name in names.items():
        if canonical == HEAD and tie:
            params[HEAD] = params[EMBEDDING]
            continue
        if gguf_name not in tensors:
            raise WeightsError(f"{path}: tensor {gguf_name} is missing; the file is incomplete")
        value = dequantize_tensor(tensors[gguf_name], path)
        check_shape(path, gguf_name, value.shape, shapes[canonical])
        heads_field = PERMUTED_ROWS.get(canonical.split(".", 2)[-1]) if canonical.startswith("blocks.") else None
        if heads_field is not None:
            value = np.ascontiguousarray(unpermute_rows(value, getattr(config, heads_field)))
        params[canonical] = value
    return config, params


# ---------------------------------------------------------------------------------------------------
# The file's own tokenizer
# ---------------------------------------------------------------------------------------------------

BYTE_LEVEL_BPE = "gpt2"           # tokenizer.ggml.model of a byte-level BPE (GPT-2's kind)
CONTROL_TOKEN = 3                  # tokenizer.ggml.token_type: 1 normal, 2 unknown, 3 control, 4 user-defined,
USER_DEFINED_TOKEN = 4             # 5 unused, 6 byte


def load_gguf_tokenizer(path: str | os.PathLike, reader=None) -> GPT2Tokenizer:
    """The byte-level BPE a GGUF file carries (tokenizer.ggml.tokens, .merges, .token_type, .pre) as the
    project's from-scratch GPT2Tokenizer: control and user-defined tokens (<|im_start|>, <|im_end|>,
    <|endoftext|>, ...) are its special tokens, eot_id is the file's eos_token_id (the end of a turn for a
    chat model). A SentencePiece model ("llama") or a pre-tokenizer not in gptcore.tokenizer.PRE_TOKENIZERS is
    refused by name."""
    reader = reader if reader is not None else open_gguf(path)
    return tokenizer_from_metadata(read_gguf_metadata(reader), path)


def tokenizer_metadata(metadata: dict) -> dict:
    """The tokenizer's part of a GGUF file's metadata (the tokenizer.ggml.* keys), JSON-able: what
    tokenizer_from_metadata needs to rebuild the tokenizer without the file (a classifier's run keeps it)."""
    return {key: value for key, value in metadata.items() if key.startswith("tokenizer.ggml.")}


def tokenizer_from_metadata(metadata: dict, path) -> GPT2Tokenizer:
    """load_gguf_tokenizer's work on metadata already read (the file's, or tokenizer_metadata's saved copy);
    `path` names the source in errors."""
    kind = metadata.get("tokenizer.ggml.model")
    if kind is None:
        raise WeightsError(f"{path}: the file carries no tokenizer (tokenizer.ggml.model is missing)")
    if kind != BYTE_LEVEL_BPE:
        raise WeightsError(f"{path}: tokenizer model {kind!r} is not supported: only byte-level BPE "
                           f"({BYTE_LEVEL_BPE!r}) is implemented here, not SentencePiece ('llama') or others")
    pre = metadata.get("tokenizer.ggml.pre", "default")
    if pre not in PRE_TOKENIZERS:
        raise WeightsError(f"{path}: pre-tokenizer {pre!r} (tokenizer.ggml.pre) is not implemented; known: "
                           f"{', '.join(PRE_TOKENIZERS)}")
    tokens = list(metadata["tokenizer.ggml.tokens"])
    types = list(metadata.get("tokenizer.ggml.token_type", [1] * len(tokens)))
    merges = []
    for line in metadata.get("tokenizer.ggml.merges", []):
        left, space, right = line.partition(" ")
        if not space or not left or not right:
            raise WeightsError(f"{path}: merge {line!r} in tokenizer.ggml.merges is not 'left right'")
        merges.append((left, right))
    special = {token: i for i, (token, kind) in enumerate(zip(tokens, types))
               if kind in (CONTROL_TOKEN, USER_DEFINED_TOKEN)}
    encoder = {token: i for i, token in enumerate(tokens)}
    eos = metadata.get("tokenizer.ggml.eos_token_id")
    return GPT2Tokenizer(encoder, merges, special, pre, eot_id=eos, whole_word_shortcut=False)


def chat_template(path: str | os.PathLike, reader=None) -> str | None:
    """The file's tokenizer.chat_template (Jinja), or None."""
    reader = reader if reader is not None else open_gguf(path)
    field = reader.fields.get("tokenizer.chat_template")
    return field.contents() if field is not None else None
