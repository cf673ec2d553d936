"""GGUF loading (gptcore/formats/gguf.py) on files the tests write with the `gguf` package's own writer, in
llama.cpp's layout (query/key rows permuted as convert_hf_to_gguf.py permutes them), and on the real
SmolLM2-135M-Instruct file of the data manifest."""
from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from gguf import GGUFReader, GGUFWriter
from gguf.quants import dequantize, quantize

from gptcore.arch import param_shapes
from gptcore.config import GPTConfig, get_config
from gptcore.datasets import fetch
from gptcore.formats.gguf import (GGUF_NAMES, chat_template, dequantize_tensor, load_gguf, load_gguf_tokenizer,
                                  read_gguf_metadata, unpermute_rows)
from gptcore.formats.llama_release import expand_names
from gptcore.formats.safetensors import WeightsError
from gptcore.tasks.chat import render_chat, user_turn
from gptcore.formats.weights import detect_format, load_weights, resolve_weights_path
from tests.tiny_models import add_llama_header, ggml_tensor, llama_cpp_permute

# A small Llama whose widths fit the 32-value blocks of Q8_0/Q4_0/Q4_1 (rows of C=64 and F=96 inputs).
CONFIG = GPTConfig(arch="llama", vocab_size=48, context_length=32, emb_dim=64, n_heads=4, n_kv_heads=2,
                   n_layers=2, ff_dim=96, rope_theta=50000.0, norm_eps=1e-6, drop_rate=0.0, tie_weights=True)


def random_params(config, seed=0):
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal(shape).astype(np.float32) for name, shape in param_shapes(config).items()}


def write_gguf(path, config, params, *, qtype=Q.F32, arch="llama", with_head=False, extra=None):
    """A llama GGUF as llama.cpp writes one: metadata keys, permuted q/k rows, matrices in `qtype`, norms F32."""
    writer = GGUFWriter(str(path), arch)
    add_llama_header(writer, config)
    for key, value in (extra or {}).items():
        writer.add_string(key, value)
    for canonical, name in expand_names(GGUF_NAMES, config.n_layers).items():
        if canonical == "out_head.weight" and not with_head:
            continue
        value = ggml_tensor(canonical, params[canonical], config)
        if value.ndim == 1 or qtype == Q.F32:
            writer.add_tensor(name, np.ascontiguousarray(value, dtype=np.float32))
        elif qtype == Q.F16:
            writer.add_tensor(name, value.astype(np.float16))
        else:
            writer.add_tensor(name, quantize(value, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_f32_file_gives_back_the_params_with_rows_unpermuted_and_the_head_tied(tmp_path):
    params = random_params(CONFIG)
    config, loaded = load_gguf(write_gguf(tmp_path / "m.gguf", CONFIG, params))
    assert config == CONFIG
    assert list(loaded) == list(param_shapes(CONFIG))
    for name, value in loaded.items():
        assert value.dtype == np.float32 and value.flags.c_contiguous
        if name != "out_head.weight":
            np.testing.assert_array_equal(value, params[name], err_msg=name)
    assert loaded["out_head.weight"] is loaded["tok_emb.weight"]


def test_output_weight_present_unties_the_head(tmp_path):
    params = random_params(CONFIG)
    config, loaded = load_gguf(write_gguf(tmp_path / "m.gguf", CONFIG, params, with_head=True))
    assert config.tie_weights is False
    np.testing.assert_array_equal(loaded["out_head.weight"], params["out_head.weight"])


def test_unpermute_rows_inverts_llama_cpp_for_mha_gqa_and_mqa():
    rng = np.random.default_rng(1)
    for n_heads, head_dim in ((4, 16), (3, 8), (1, 6)):
        weight = rng.standard_normal((n_heads * head_dim, 5))
        np.testing.assert_array_equal(unpermute_rows(llama_cpp_permute(weight, n_heads), n_heads), weight)
        assert not np.array_equal(llama_cpp_permute(weight, n_heads), weight)


def q8_0_reference(blocks: np.ndarray) -> np.ndarray:
    """Q8_0 by hand: blocks of 34 bytes = float16 scale d, then 32 int8 q; value = d * q."""
    d = blocks[:, :2].copy().view(np.float16).astype(np.float32)
    q = blocks[:, 2:].copy().view(np.int8).astype(np.float32)
    return (d * q).reshape(-1)


def q4_0_reference(blocks: np.ndarray) -> np.ndarray:
    """Q4_0 by hand: 18 bytes = float16 d, 16 bytes of nibbles; the low nibbles are values 0..15, the high
    ones 16..31; value = d * (nibble - 8)."""
    d = blocks[:, :2].copy().view(np.float16).astype(np.float32)
    packed = blocks[:, 2:]
    nibbles = np.concatenate([packed & 0x0F, packed >> 4], axis=1).astype(np.float32)
    return (d * (nibbles - 8)).reshape(-1)


@pytest.mark.parametrize("qtype, reference, block_bytes", [(Q.Q8_0, q8_0_reference, 34), (Q.Q4_0, q4_0_reference, 18)])
def test_quantized_file_matches_a_hand_written_dequantizer(tmp_path, qtype, reference, block_bytes):
    params = random_params(CONFIG, seed=2)
    path = write_gguf(tmp_path / "m.gguf", CONFIG, params, qtype=qtype)
    _, loaded = load_gguf(path)
    reader = GGUFReader(path)
    stored = {t.name: t for t in reader.tensors}
    for canonical, name in (("blocks.1.ff.down.weight", "blk.1.ffn_down.weight"),
                            ("blocks.0.att.W_key.weight", "blk.0.attn_k.weight")):
        raw = np.asarray(stored[name].data).reshape(-1, block_bytes)
        expected = reference(raw).reshape(param_shapes(CONFIG)[canonical])
        if canonical.endswith("W_key.weight"):      # the file holds llama.cpp's rows: permute ours to compare
            np.testing.assert_array_equal(llama_cpp_permute(loaded[canonical], CONFIG.n_kv_heads), expected)
        else:
            np.testing.assert_array_equal(loaded[canonical], expected)
        assert np.abs(loaded[canonical] - params[canonical]).max() < 0.5   # and near the original values


@pytest.mark.parametrize("qtype", [Q.F16, Q.BF16, Q.Q4_1, Q.Q5_0, Q.Q5_1])
def test_other_writable_types_load_near_the_original(tmp_path, qtype):
    params = random_params(CONFIG, seed=3)
    _, loaded = load_gguf(write_gguf(tmp_path / "m.gguf", CONFIG, params, qtype=qtype))
    for name in ("blocks.0.att.W_query.weight", "blocks.1.ff.gate.weight", "tok_emb.weight"):
        error = np.abs(loaded[name] - params[name]).max()
        assert error < (0.02 if qtype in (Q.F16, Q.BF16) else 0.6), (name, error)


@pytest.mark.parametrize("qtype", [Q.Q4_K, Q.Q5_K, Q.Q6_K, Q.Q2_K, Q.Q3_K])
def test_k_quants_dequantize_to_the_packages_values_in_numpy_order(tmp_path, qtype):
    # The package has no K-quant quantizer: store random blocks (with sane float16 scales) and compare with its
    # dequantizer; the loader must give (out, in) = (rows, 256) float32 in file order.
    from gguf import GGML_QUANT_SIZES
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    rng = np.random.default_rng(4)
    rows = 3
    raw = rng.integers(0, 256, size=(rows, type_size), dtype=np.uint8)
    raw = raw.view(np.uint8)
    writer = GGUFWriter(str(tmp_path / "k.gguf"), "llama")
    writer.add_tensor("t", raw, raw_dtype=qtype)
    writer.write_header_to_file(), writer.write_kv_data_to_file(), writer.write_tensors_to_file(), writer.close()
    (tensor,) = GGUFReader(tmp_path / "k.gguf").tensors
    value = dequantize_tensor(tensor, "k.gguf")
    assert value.shape == (rows, block_size) and value.dtype == np.float32
    np.testing.assert_array_equal(value, dequantize(raw, qtype).reshape(rows, block_size))


def test_another_architecture_is_refused_by_name(tmp_path):
    path = write_gguf(tmp_path / "m.gguf", CONFIG, random_params(CONFIG), arch="qwen2")
    with pytest.raises(WeightsError, match="GGUF architecture 'qwen2' is not supported"):
        load_gguf(path)


def test_a_type_the_package_cannot_dequantize_is_refused_by_name(tmp_path):
    writer = GGUFWriter(str(tmp_path / "q.gguf"), "llama")
    writer.add_tensor("t", np.zeros((2, 40), np.uint8), raw_dtype=Q.Q8_1)   # a 32-block of Q8_1 is 40 bytes
    writer.write_header_to_file(), writer.write_kv_data_to_file(), writer.write_tensors_to_file(), writer.close()
    (tensor,) = GGUFReader(tmp_path / "q.gguf").tensors
    with pytest.raises(WeightsError, match="tensor t has GGML type Q8_1"):
        dequantize_tensor(tensor, "q.gguf")


def test_load_weights_detects_gguf_by_suffix_and_by_magic(tmp_path):
    path = write_gguf(tmp_path / "m.gguf", CONFIG, random_params(CONFIG))
    renamed = path.rename(tmp_path / "model.bin")
    assert detect_format(renamed) == "gguf"
    config, _ = load_weights(renamed)
    assert config == CONFIG


# ---------------------------------------------------------------------------------------------------
# The real file: SmolLM2-135M-Instruct, Q4_1 (the shared copy, through GPT2_DATA_DIR)
# ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def smollm2():
    """The real file parsed once (the reader's metadata parse is most of the cost) and loaded through it."""
    path = fetch("smollm2-135m-instruct", download=False)
    reader = GGUFReader(path)
    config, params = load_gguf(path, reader=reader)
    return path, reader, config, params


def test_the_manifest_name_works_as_a_weights_path(smollm2):
    assert resolve_weights_path("smollm2-135m-instruct") == smollm2[0]
    assert detect_format(resolve_weights_path("smollm2-135m-instruct")) == "gguf"


def test_real_file_config_is_the_preset_and_every_shape_fits(smollm2):
    path, _, config, params = smollm2
    assert config == get_config("smollm2-135m")
    assert {name: value.shape for name, value in params.items()} == param_shapes(config)
    assert params["out_head.weight"] is params["tok_emb.weight"]       # the file has no output.weight
    assert all(value.dtype == np.float32 for value in params.values())


def test_real_file_values_are_the_packages_dequantized_tensors(smollm2):
    _, reader, config, params = smollm2
    tensors = {t.name: t for t in reader.tensors}
    checks = {"token_embd.weight": ("tok_emb.weight", None),                                     # Q8_0
              "blk.0.attn_q.weight": ("blocks.0.att.W_query.weight", config.n_heads),            # Q4_1
              "blk.29.attn_k.weight": ("blocks.29.att.W_key.weight", config.n_kv_heads),
              "blk.7.ffn_down.weight": ("blocks.7.ff.down.weight", None),
              "output_norm.weight": ("final_norm.scale", None)}                                  # F32
    for name, (canonical, heads) in checks.items():
        tensor = tensors[name]
        expected = dequantize(tensor.data, tensor.tensor_type).reshape(params[canonical].shape)
        ours = params[canonical] if heads is None else llama_cpp_permute(params[canonical], heads)
        np.testing.assert_array_equal(ours, expected, err_msg=name)


# ---------------------------------------------------------------------------------------------------
# The file's tokenizer. Oracle: Hugging Face's `tokenizers` (Rust) built from the same vocabulary and merges
# with SmolLM2's ORIGINAL pre-tokenizer (its tokenizer.json: Sequence[Digits(individual_digits=True),
# ByteLevel(add_prefix_space=False)]) and the control tokens as special added tokens: an independent BPE.
# ---------------------------------------------------------------------------------------------------

TEXTS = ["Hello world", "In 2024, 3.14159 apples cost $12,345!", " 7 x 8 = 56", "  multiple   spaces\n\n\ttabs ",
         "héllo wörld 日本語 🎉 ½ ² ٣", "don't I'll we've THEY'RE", "byte\x04that\x06is no token",
         "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n", "<|endoftext|>x<file_sep>"]


@pytest.fixture(scope="module")
def smollm2_tokenizers(smollm2):
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers

    path, reader, _, _ = smollm2
    ours = load_gguf_tokenizer(path, reader=reader)
    fields = read_gguf_metadata(reader)
    tokens, types = fields["tokenizer.ggml.tokens"], fields["tokenizer.ggml.token_type"]
    reference = Tokenizer(models.BPE({token: i for i, token in enumerate(tokens)},
                                     [tuple(merge.split(" ")) for merge in fields["tokenizer.ggml.merges"]]))
    reference.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                       pre_tokenizers.ByteLevel(add_prefix_space=False)])
    reference.add_special_tokens([AddedToken(token, special=True) for token, kind in zip(tokens, types) if kind == 3])
    return ours, reference


def test_real_tokenizer_gives_the_original_smollm2_ids(smollm2_tokenizers):
    ours, reference = smollm2_tokenizers
    for text in TEXTS:
        assert ours.encode(text, allowed_special="all") == reference.encode(text).ids, text


def test_real_tokenizer_known_ids_and_round_trip(smollm2_tokenizers):
    ours, _ = smollm2_tokenizers
    assert ours.encode("Hello world") == [19556, 905]
    # digits one by one: " 2024" is " ", "2", "0", "2", "4"
    assert ours.encode(" 2024") == [216, 34, 32, 34, 36]
    assert ours.eot_id == 2 and ours.special_tokens["<|im_end|>"] == 2 and ours.special_tokens["<|im_start|>"] == 1
    ids = ours.encode("<|im_start|>user\nHi<|im_end|>", allowed_special="all")
    assert ids[0] == 1 and ids[-1] == 2
    assert ours.decode(ids, skip_special=True) == "user\nHi"
    with pytest.raises(ValueError, match="disallowed special token"):
        ours.encode("<|im_end|>")
    assert ours.decode(ours.encode("héllo 日本語 🎉 2024")) == "héllo 日本語 🎉 2024"


def test_real_chat_template_renders_chatml(smollm2):
    path, reader, _, _ = smollm2
    prompt = render_chat(chat_template(path, reader=reader), user_turn("What is the capital of France?"))
    assert prompt == ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
                      "<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
                      "<|im_start|>assistant\n")


def write_tokenizer_gguf(path, model="gpt2", pre="smollm"):
    writer = GGUFWriter(str(path), "llama")
    writer.add_tokenizer_model(model)
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(["a", "b", "ab", "<|endoftext|>"])
    writer.add_token_types([1, 1, 1, 3])
    writer.add_token_merges(["a b"])
    writer.write_header_to_file(), writer.write_kv_data_to_file(), writer.write_tensors_to_file(), writer.close()
    return path


def test_small_tokenizer_merges_and_drops_bytes_without_a_token(tmp_path):
    tokenizer = load_gguf_tokenizer(write_tokenizer_gguf(tmp_path / "t.gguf"))
    assert tokenizer.encode("abba c<|endoftext|>", allowed_special="all") == [2, 1, 0, 3]   # ' ', 'c' have no token


def test_sentencepiece_and_unknown_pre_tokenizers_are_refused_by_name(tmp_path):
    with pytest.raises(WeightsError, match="tokenizer model 'llama' is not supported"):
        load_gguf_tokenizer(write_tokenizer_gguf(tmp_path / "sp.gguf", model="llama"))
    with pytest.raises(WeightsError, match="pre-tokenizer 'qwen2' .* is not implemented"):
        load_gguf_tokenizer(write_tokenizer_gguf(tmp_path / "q.gguf", pre="qwen2"))


def test_cli_tokenize_with_weights_uses_the_models_tokenizer(capsys):
    from gpt2cli.main import main

    assert main(["tokenize", "--weights", "smollm2-135m-instruct", "--allow-special", " 2024<|im_end|>"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "[216, 34, 32, 34, 36, 2]"


def test_cli_info_and_convert_of_a_gguf_give_the_same_tensors(tmp_path, capsys):
    from gpt2cli.main import main

    params = random_params(CONFIG, seed=5)
    path = write_gguf(tmp_path / "m.gguf", CONFIG, params, qtype=Q.Q8_0)
    _, expected = load_gguf(path)
    assert main(["weights", "info", str(path)]) == 0
    assert "GGUF (llama.cpp)" in capsys.readouterr().out
    assert main(["weights", "convert", str(path), str(tmp_path / "ckpt")]) == 0
    config, converted = load_weights(tmp_path / "ckpt")
    assert config == CONFIG and converted["out_head.weight"] is converted["tok_emb.weight"]
    for name in expected:
        np.testing.assert_array_equal(converted[name], expected[name], err_msg=name)
