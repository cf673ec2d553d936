"""Tiny pretrained-looking models written to files in the real layouts, for commands that take a weights path
(`gpt2 evaluate-lm`, `gpt2 demo --init-from`, `gpt2 generate`): a Llama GGUF carrying its own byte-level BPE and
chat template as llama.cpp writes them, and a GPT-2 checkpoint of ours (GPT-2's tokenizer).

    path = write_tiny_llama_gguf(tmp_path / "tiny.gguf")
    path = write_tiny_gpt2(tmp_path / "tiny-gpt2")
"""
from __future__ import annotations

import numpy as np
from gguf import GGUFWriter

from gptcore.arch import param_shapes
from gptcore.config import GPTConfig, get_config
from gptcore.formats.gguf import GGUF_NAMES
from gptcore.formats.llama_release import expand_names
from gptcore.formats.weights import save_weights
from gptcore.tokenizer import bytes_to_unicode

# The byte symbols, a few merges (so words are more than bytes) and ChatML's special tokens.
MERGES = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("Ġ", "a"), ("i", "n"), ("Ġ", "w"), ("e", "r"), ("o", "u")]
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
                 "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
                 "{% endif %}")


def tiny_vocabulary() -> list[str]:
    """Token strings in id order: the specials (0, 1, 2), the 256 byte symbols, then one token per merge."""
    return SPECIALS + list(bytes_to_unicode().values()) + [left + right for left, right in MERGES]


def tiny_llama_config(context_length: int = 64) -> GPTConfig:
    return GPTConfig(arch="llama", vocab_size=len(tiny_vocabulary()), context_length=context_length, emb_dim=32,
                     n_heads=4, n_kv_heads=2, n_layers=2, ff_dim=64, rope_theta=10000.0, norm_eps=1e-5,
                     drop_rate=0.0, tie_weights=True)


def random_params(config, seed=0, scale=0.2):
    """Small random weights (norm scales near 1), float32."""
    rng = np.random.default_rng(seed)
    params = {}
    for name, shape in param_shapes(config).items():
        if name.endswith(".scale"):
            params[name] = (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        else:
            params[name] = (scale * rng.standard_normal(shape)).astype(np.float32)
    if config.tie_weights:
        params["out_head.weight"] = params["tok_emb.weight"]
    return params


def llama_cpp_permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.permute (llama.cpp), copied as the independent oracle: Hugging Face's
    rotate-half rows -> GGML's interleaved rows, per head."""
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def add_llama_header(writer: GGUFWriter, config: GPTConfig) -> None:
    """The llama.* metadata keys llama.cpp writes for a config (block count, widths, heads, RoPE base, eps)."""
    writer.add_block_count(config.n_layers)
    writer.add_context_length(config.context_length)
    writer.add_embedding_length(config.emb_dim)
    writer.add_feed_forward_length(config.ff_dim)
    writer.add_head_count(config.n_heads)
    writer.add_head_count_kv(config.n_kv_heads)
    writer.add_rope_freq_base(config.rope_theta)
    writer.add_layer_norm_rms_eps(config.norm_eps)
    writer.add_vocab_size(config.vocab_size)


def ggml_tensor(canonical: str, value: np.ndarray, config: GPTConfig) -> np.ndarray:
    """A parameter as llama.cpp stores it: the query and key rows permuted per head, everything else as is."""
    if canonical.endswith("W_query.weight"):
        return llama_cpp_permute(value, config.n_heads)
    if canonical.endswith("W_key.weight"):
        return llama_cpp_permute(value, config.n_kv_heads)
    return value


def write_llama_gguf(path, config: GPTConfig, params: dict, *, tokens: list[str], merges=(), n_specials: int = 3,
                     eos_id: int = 2, chat_template: str | None = None):
    """A llama GGUF as llama.cpp writes it (F32 tensors, permuted query/key rows, tied head left out) with a
    byte-level BPE tokenizer (tokenizer.ggml.*: `tokens` in id order, the first n_specials of them control
    tokens, `merges` as (left, right) pairs, pre-tokenizer "smollm", eos_id the end of a turn) and an optional
    chat template."""
    writer = GGUFWriter(str(path), "llama")
    add_llama_header(writer, config)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(tokens)
    writer.add_token_types([3] * n_specials + [1] * (len(tokens) - n_specials))
    if merges:
        writer.add_token_merges([f"{left} {right}" for left, right in merges])
    writer.add_eos_token_id(eos_id)
    if chat_template is not None:
        writer.add_chat_template(chat_template)
    for canonical, name in expand_names(GGUF_NAMES, config.n_layers).items():
        if canonical == "out_head.weight":
            continue                                                  # tied, as SmolLM2
        writer.add_tensor(name, np.ascontiguousarray(ggml_tensor(canonical, params[canonical], config),
                                                     dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_tiny_llama_gguf(path, seed=0, context_length=64):
    """A tiny Llama as llama.cpp writes it (F32 tensors, permuted q/k rows, tied head) with its tokenizer
    (tokenizer.ggml.*: byte-level BPE, pre-tokenizer "smollm", <|im_end|> the end of a turn) and chat template."""
    config = tiny_llama_config(context_length)
    return write_llama_gguf(path, config, random_params(config, seed), tokens=tiny_vocabulary(), merges=MERGES,
                            n_specials=len(SPECIALS), eos_id=SPECIALS.index("<|im_end|>"),
                            chat_template=CHAT_TEMPLATE)


def write_tiny_gpt2(path, seed=0):
    """The `tiny` GPT-2 preset (GPT-2's vocabulary) with query/key/value biases as released GPT-2 has (so the
    Hugging Face layout holds it too) and random weights, as our checkpoint folder."""
    config = get_config("tiny", drop_rate=0.0, qkv_bias=True)
    return save_weights(path, config, random_params(config, seed, scale=0.05))
