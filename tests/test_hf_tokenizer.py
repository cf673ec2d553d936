"""A Hugging Face folder's tokenizer.json read into GPT2Tokenizer (gptcore/formats/hf_tokenizer.py), and written
back by `gpt2 weights convert --format huggingface`.

Oracle: Hugging Face's `tokenizers` (Rust) loading the SAME tokenizer.json: an independent BPE, on text that
hypothesis draws (digits, spaces, punctuation, non-ASCII, special tokens)."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

from gpt2cli.main import main
from gptcore.datasets import fetch
from gptcore.formats.gguf import load_gguf_tokenizer, read_gguf_metadata, open_gguf
from gptcore.formats.hf_tokenizer import load_hf_chat_template, load_hf_tokenizer, save_hf_tokenizer
from gptcore.formats.safetensors import WeightsError
from gptcore.formats.weights import load_weights_tokenizer
from gptcore.tokenizer import get_tokenizer, read_bpe_merges
from tests.tiny_models import CHAT_TEMPLATE, write_tiny_llama_gguf

SMOLLM_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
FRAGMENTS = ["Hello", " world", " 2024", "3.14", "  ", "\n\n", "\t", "don't", " I'll", "héllo", " 日本語", "🎉", "½²",
             "$12,345!", " x", "<|im_start|>", "<|im_end|>", "<|endoftext|>", "user\n", "...", "ĠĊ"]
texts = st.one_of(st.text(max_size=40), st.lists(st.sampled_from(FRAGMENTS), max_size=12).map("".join),
                  st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=4)), max_size=8).map("".join))


def smollm_reference(tokens, merges, specials) -> Tokenizer:
    """SmolLM2's original tokenizer, built with `tokenizers`: BPE, Sequence[Digits(individual), ByteLevel]."""
    reference = Tokenizer(models.BPE({token: i for i, token in enumerate(tokens)}, merges))
    reference.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                       pre_tokenizers.ByteLevel(add_prefix_space=False)])
    reference.decoder = decoders.ByteLevel()
    reference.add_special_tokens([AddedToken(token, special=True) for token in specials])
    return reference


def with_string_merges(file):
    """Rewrite a tokenizer.json's merges from [a, b] pairs to "a b" strings (the older spelling)."""
    values = json.loads(file.read_text(encoding="utf-8"))
    values["model"]["merges"] = [" ".join(pair) for pair in values["model"]["merges"]]
    file.write_text(json.dumps(values), encoding="utf-8")


@pytest.fixture(scope="module")
def smollm_folders(tmp_path_factory):
    """The real SmolLM2 vocabulary and merges (from the GGUF) as tokenizer.json by `tokenizers`, merges in each
    spelling; with tokenizer_config.json's eos_token and chat template."""
    path = fetch("smollm2-135m-instruct", download=False)
    metadata = read_gguf_metadata(open_gguf(path))
    tokens = metadata["tokenizer.ggml.tokens"]
    merges = [tuple(merge.split(" ")) for merge in metadata["tokenizer.ggml.merges"]]
    reference = smollm_reference(tokens, merges, SMOLLM_SPECIALS)
    folders = {}
    for spelling in ("pairs", "strings"):
        folder = tmp_path_factory.mktemp(spelling)
        reference.save(str(folder / "tokenizer.json"))
        if spelling == "strings":
            with_string_merges(folder / "tokenizer.json")
        (folder / "tokenizer_config.json").write_text(json.dumps(
            {"eos_token": {"content": "<|im_end|>"}, "chat_template": metadata["tokenizer.chat_template"]}))
        folders[spelling] = folder
    return reference, folders


@settings(max_examples=60, deadline=None)
@given(text=texts)
def test_smollm_tokenizer_json_gives_the_ids_of_tokenizers(smollm_folders, text):
    reference, folders = smollm_folders
    expected = reference.encode(text).ids
    for spelling, folder in folders.items():
        ours = _cached_load(folder)
        assert ours.encode(text, allowed_special="all") == expected, (spelling, text)
        assert ours.decode(expected) == reference.decode(expected, skip_special_tokens=False), text


_LOADED = {}


def _cached_load(folder):
    if folder not in _LOADED:
        _LOADED[folder] = load_hf_tokenizer(folder)
    return _LOADED[folder]


def test_smollm_folder_known_ids_end_of_turn_and_chat_template(smollm_folders):
    _, folders = smollm_folders
    ours = _cached_load(folders["strings"])
    assert ours.encode(" 2024") == [216, 34, 32, 34, 36]                   # digits one by one (SmolLM2's rule)
    assert ours.eot_id == 2 and ours.special_tokens["<|im_start|>"] == 1
    assert ours.pre_tokenizer_name == "smollm"
    assert load_hf_chat_template(folders["strings"]).startswith("{% for message in messages %}")


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory):
    """GPT-2's encoder.json + vocab.bpe as tokenizer.json (ByteLevel alone) by `tokenizers`."""
    bpe = fetch("gpt2-bpe", download=False)
    vocab = json.loads((bpe / "encoder.json").read_text(encoding="utf-8"))
    reference = Tokenizer(models.BPE(vocab, read_bpe_merges(bpe / "vocab.bpe")))
    reference.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    reference.add_special_tokens([AddedToken("<|endoftext|>", special=True)])
    folder = tmp_path_factory.mktemp("gpt2")
    reference.save(str(folder / "tokenizer.json"))
    return reference, load_hf_tokenizer(folder)


@settings(max_examples=40, deadline=None)
@given(text=texts)
def test_gpt2_tokenizer_json_gives_the_ids_of_tokenizers(gpt2_folder, text):
    reference, ours = gpt2_folder
    assert ours.encode(text, allowed_special="all") == reference.encode(text).ids, text


def test_gpt2_tokenizer_json_is_gpt2s_pattern_and_end_of_text(gpt2_folder):
    _, ours = gpt2_folder
    assert ours.pre_tokenizer_name == "gpt2"
    text = "In 2024, don't  panic\n\n héllo 🎉<|endoftext|>"
    assert ours.encode(text, allowed_special="all") == get_tokenizer("tiktoken").encode(text, allowed_special="all")
    assert len(ours.encode(" 2024")) == 1                                      # GPT-2 keeps digits together
    assert ours.eot_id == 50256


def write_tokenizer_json(folder, **changes):
    values = {"added_tokens": [{"id": 3, "content": "<|endoftext|>", "special": True}], "normalizer": None,
              "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True},
              "post_processor": None,
              "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b"]}}
    for key, value in changes.items():
        if key in ("type", "byte_fallback"):
            values["model"][key] = value
        else:
            values[key] = value
    folder.mkdir(exist_ok=True)
    (folder / "tokenizer.json").write_text(json.dumps(values))
    return folder


@pytest.mark.parametrize("changes, message", [
    ({"pre_tokenizer": {"type": "Metaspace", "replacement": "▁"}}, "pre_tokenizer .*Metaspace.* is not implemented"),
    ({"pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": True}}, "pre_tokenizer .* is not implemented"),
    ({"pre_tokenizer": {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": "x"}}, {"type": "ByteLevel"}]}}, "Split.* is not implemented"),
    ({"type": "WordPiece"}, "tokenizer model 'WordPiece' is not supported"),
    ({"byte_fallback": True}, "byte_fallback"),
    ({"normalizer": {"type": "NFC"}}, "normalizer .*NFC.* is not implemented"),
    ({"post_processor": {"type": "TemplateProcessing"}}, "post_processor 'TemplateProcessing'"),
])
def test_other_tokenizers_are_refused_by_name(tmp_path, changes, message):
    with pytest.raises(WeightsError, match=message):
        load_hf_tokenizer(write_tokenizer_json(tmp_path / "t", **changes))


def test_a_small_tokenizer_json_merges_and_a_chat_template_list_gives_its_default(tmp_path):
    folder = write_tokenizer_json(tmp_path / "t")
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"eos_token": "<|endoftext|>", "chat_template": [{"name": "tool_use", "template": "T"},
                                                         {"name": "default", "template": "D"}]}))
    tokenizer = load_hf_tokenizer(folder)
    assert tokenizer.encode("abba<|endoftext|>", allowed_special="all") == [2, 1, 0, 3]
    assert tokenizer.eot_id == 3
    assert load_hf_chat_template(folder) == "D"


def test_saved_tokenizer_reads_back_in_ours_and_in_tokenizers(tmp_path):
    gguf = write_tiny_llama_gguf(tmp_path / "tiny.gguf")
    original = load_gguf_tokenizer(gguf)
    save_hf_tokenizer(tmp_path / "hf", original, CHAT_TEMPLATE)
    again = load_hf_tokenizer(tmp_path / "hf")
    reference = Tokenizer.from_file(str(tmp_path / "hf" / "tokenizer.json"))
    text = "the weather in 2024 was <|im_end|> ouch"
    assert again.encode(text, allowed_special="all") == original.encode(text, allowed_special="all") \
        == reference.encode(text).ids
    assert again.eot_id == original.eot_id == 2
    assert load_hf_chat_template(tmp_path / "hf") == CHAT_TEMPLATE


def test_converted_folder_generates_the_same_text_as_the_gguf(tmp_path, capsys):
    gguf = write_tiny_llama_gguf(tmp_path / "tiny.gguf", seed=3)
    folder = tmp_path / "hf"
    assert main(["weights", "convert", str(gguf), str(folder), "--format", "huggingface"]) == 0
    assert "tokenizer.json + tokenizer_config.json" in capsys.readouterr().out
    assert load_weights_tokenizer(folder).source.startswith("the tokenizer.json of")
    outputs = {}
    for name, path in (("gguf", gguf), ("folder", folder)):
        for mode in (["--prompt", "the weather in 2024"], ["--chat", "hi there"]):
            assert main(["generate", "--weights", str(path), *mode, "--max-new-tokens", "12", "--no-stop"]) == 0
            outputs[name, mode[0]] = capsys.readouterr().out
    assert outputs["gguf", "--prompt"] == outputs["folder", "--prompt"]
    assert outputs["gguf", "--chat"] == outputs["folder", "--chat"]
    assert main(["tokenize", "--weights", str(folder), " 2024"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "[223, 20, 18, 20, 22]"


def test_llama_folder_without_tokenizer_json_is_one_clear_error(tmp_path, capsys):
    gguf = write_tiny_llama_gguf(tmp_path / "tiny.gguf")
    folder = tmp_path / "hf"
    assert main(["weights", "convert", str(gguf), str(folder), "--format", "huggingface"]) == 0
    (folder / "tokenizer.json").unlink()
    assert main(["generate", "--weights", str(folder), "--prompt", "x", "--max-new-tokens", "1"]) == 2
    assert "without a tokenizer.json: copy the model's tokenizer.json" in capsys.readouterr().err
