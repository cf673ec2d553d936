"""gptcore.formats.weights: OpenAI TF checkpoints and Hugging Face safetensors into canonical params, both backends.

The checkpoints are written in the exact released layouts (tests/fake_checkpoints.py): TF1 variables saved
with tf.compat.v1.train.Saver in graph mode, safetensors with HF's key names and Conv1D (in, out) shapes.
TensorFlow is slow to import, so one module-scoped fixture writes the OpenAI folder once.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tracemalloc

import numpy as np
import pytest
import torch

import npgpt
import npgpt.model as npmodel
from gptcore.formats.weights import SafetensorsFile, WeightsError, detect_format, load_weights, save_weights
from tests.fake_checkpoints import (hf_config, openai_hparams, openai_to_hf_tensors, random_openai_tensors,
                                    reference_logits, write_hf_checkpoint, write_openai_checkpoint)
from torchgpt.checkpoint import load_model
from gptcore.arch import param_shapes

HPARAMS = openai_hparams(n_vocab=61, n_ctx=16, n_embd=32, n_head=4, n_layer=2)
TENSORS = random_openai_tensors(HPARAMS, seed=0)
IDX = np.random.default_rng(1).integers(0, HPARAMS["n_vocab"], size=(2, 11))


@pytest.fixture(scope="module")
def openai_folder(tmp_path_factory):
    """An OpenAI-layout folder (hparams.json + model.ckpt.* + checkpoint), written once by TF1's Saver."""
    return write_openai_checkpoint(tmp_path_factory.mktemp("openai") / "124M-like", HPARAMS, TENSORS)


@pytest.fixture
def openai_copy(openai_folder, tmp_path):
    """A private copy of the OpenAI folder that a test may damage."""
    return shutil.copytree(openai_folder, tmp_path / "copy")


def hf_folder(tmp_path, name="hf", hparams=HPARAMS, tensors=TENSORS, **options):
    config_json = options.pop("config_json", True)
    return write_hf_checkpoint(tmp_path / name, hparams, openai_to_hf_tensors(tensors, hparams, **options),
                               config_json=config_json)


def as_float64(params):
    """A float64 copy that keeps the tie (one array under both names)."""
    out = {}
    for name, value in params.items():
        same = next((other for other in out if params[other] is value), None)
        out[name] = out[same] if same else value.astype(np.float64)
    return out


def assert_same_params(expected, actual):
    assert list(actual) == list(expected)
    for name in expected:
        assert actual[name].dtype == expected[name].dtype, name
        assert np.array_equal(actual[name], expected[name]), name


# ---------------------------------------------------------------------------------------------------
# what the loaders produce
# ---------------------------------------------------------------------------------------------------

def test_openai_folder_gives_canonical_params(openai_folder):
    config, params = load_weights(openai_folder)
    assert config == npgpt.GPTConfig(vocab_size=61, context_length=16, emb_dim=32, n_heads=4, n_layers=2,
                                     drop_rate=0.0, qkv_bias=True, tie_weights=True)
    assert {name: value.shape for name, value in params.items()} == param_shapes(config)
    assert list(params) == list(param_shapes(config))
    for name, value in params.items():
        assert value.dtype == np.float32 and value.flags.c_contiguous and value.flags.owndata, name
    assert params["out_head.weight"] is params["tok_emb.weight"]
    npmodel.check_params(params, config)
    # the split of the fused c_attn [1, C, 3C] and the transposes, written out once by hand
    C = 32
    c_attn = TENSORS["model/h1/attn/c_attn/w"][0]
    assert np.array_equal(params["blocks.1.att.W_query.weight"], c_attn[:, :C].T)
    assert np.array_equal(params["blocks.1.att.W_key.weight"], c_attn[:, C:2 * C].T)
    assert np.array_equal(params["blocks.1.att.W_value.weight"], c_attn[:, 2 * C:].T)
    assert np.array_equal(params["blocks.1.att.W_value.bias"], TENSORS["model/h1/attn/c_attn/b"][2 * C:])
    assert np.array_equal(params["blocks.0.ff.fc1.weight"], TENSORS["model/h0/mlp/c_fc/w"][0].T)
    assert np.array_equal(params["blocks.0.norm2.scale"], TENSORS["model/h0/ln_2/g"])
    assert np.array_equal(params["final_norm.shift"], TENSORS["model/ln_f/b"])


HF_VARIANTS = {
    "transformer-prefix+buffers": dict(prefix="transformer.", buffers=True),
    "no-prefix+buffers": dict(prefix="", buffers=True),
    "transformer-prefix+lm_head": dict(prefix="transformer.", buffers=False, lm_head=True),
    "no-prefix+lm_head": dict(prefix="", buffers=True, lm_head=True),
}


@pytest.mark.parametrize("variant", list(HF_VARIANTS))
def test_hf_variants_give_the_same_params_as_openai(openai_folder, tmp_path, variant):
    config, expected = load_weights(openai_folder)
    folder = hf_folder(tmp_path, **HF_VARIANTS[variant])
    for path in (folder, folder / "model.safetensors"):       # the folder or the file itself
        assert detect_format(path) == "huggingface"
        hf_config_, params = load_weights(path)
        assert hf_config_ == config
        assert_same_params(expected, params)
        assert params["out_head.weight"] is params["tok_emb.weight"]


def test_path_to_a_file_inside_the_openai_folder(openai_folder):
    for name in ("hparams.json", "model.ckpt.index"):
        assert detect_format(openai_folder / name) == "openai"
        config, _ = load_weights(openai_folder / name)
        assert config.n_layers == 2


@pytest.mark.parametrize("source", ["openai", "huggingface"])
def test_both_backends_match_the_reference_forward(openai_folder, tmp_path, source):
    """npgpt and torchgpt logits from the loaded params equal a forward written on the released layout."""
    path = openai_folder if source == "openai" else hf_folder(tmp_path, prefix="", buffers=True)
    config, params = load_weights(path)
    expected = reference_logits(TENSORS, HPARAMS, IDX)                   # float64, (in, out) layout

    # "is the math right": float64 end to end, both backends
    np_logits64, _ = npmodel.forward(as_float64(params), IDX, config)
    np.testing.assert_allclose(np_logits64, expected, rtol=1e-10, atol=1e-10)
    model = load_model(path)
    assert not model.training and model.out_head.weight is model.tok_emb.weight
    with torch.no_grad():
        torch_logits64 = model.double()(torch.from_numpy(IDX)).numpy()
    np.testing.assert_allclose(torch_logits64, expected, rtol=1e-10, atol=1e-10)

    # "does it run like torch": float32, as loaded
    np_logits32, _ = npmodel.forward(params, IDX, config)
    with torch.no_grad():
        torch_logits32 = load_model(path)(torch.from_numpy(IDX)).numpy()
    scale = np.abs(expected).max()
    np.testing.assert_allclose(np_logits32, torch_logits32, rtol=0, atol=1e-5 * scale)
    np.testing.assert_allclose(np_logits32, expected, rtol=0, atol=1e-5 * scale)


def test_reference_check_can_fail(openai_folder):
    """Swapping query and key (a plausible split bug) moves the logits far beyond the tolerance."""
    config, params = load_weights(openai_folder)
    params = as_float64(params)
    params["blocks.0.att.W_query.weight"], params["blocks.0.att.W_key.weight"] = (
        params["blocks.0.att.W_key.weight"], params["blocks.0.att.W_query.weight"])
    logits, _ = npmodel.forward(params, IDX, config)
    assert np.abs(logits - reference_logits(TENSORS, HPARAMS, IDX)).max() > 1e-3


def test_separate_lm_head_unties(tmp_path):
    tensors = openai_to_hf_tensors(TENSORS, HPARAMS, lm_head=True)
    tensors["lm_head.weight"] = tensors["lm_head.weight"] + 1.0
    write_hf_checkpoint(tmp_path / "hf", HPARAMS, tensors)
    config, params = load_weights(tmp_path / "hf")
    assert not config.tie_weights
    assert params["out_head.weight"] is not params["tok_emb.weight"]
    assert np.array_equal(params["out_head.weight"], tensors["lm_head.weight"])
    model = load_model(tmp_path / "hf")
    assert model.out_head.weight is not model.tok_emb.weight
    assert torch.equal(model.out_head.weight.detach(), torch.from_numpy(tensors["lm_head.weight"]))


def test_half_precision_safetensors_load_as_float32(tmp_path):
    from safetensors.numpy import save_file
    tensors = {key: value.astype(np.float16) for key, value in openai_to_hf_tensors(TENSORS, HPARAMS).items()}
    (tmp_path / "hf").mkdir()
    save_file(tensors, str(tmp_path / "hf" / "model.safetensors"))
    (tmp_path / "hf" / "config.json").write_text(json.dumps(hf_config(HPARAMS)))
    _, params = load_weights(tmp_path / "hf")
    assert params["tok_emb.weight"].dtype == np.float32
    assert np.array_equal(params["tok_emb.weight"], tensors["transformer.wte.weight"].astype(np.float32))


def test_bfloat16_tensor_is_widened_exactly(tmp_path):
    values = np.array([1.0, -2.5, 3.140625, 1e-3], dtype=np.float32)
    top_halves = (values.view(np.uint32) >> 16).astype("<u2")          # bfloat16 = the top 16 bits
    header = json.dumps({"x": {"dtype": "BF16", "shape": [4], "data_offsets": [0, 8]}}).encode()
    header += b" " * (-len(header) % 8)
    (tmp_path / "bf16.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + top_halves.tobytes())
    with SafetensorsFile(tmp_path / "bf16.safetensors") as file:
        widened = file.array("x")
    assert widened.dtype == np.float32
    assert np.array_equal(widened, (top_halves.astype(np.uint32) << 16).view(np.float32))
    np.testing.assert_allclose(widened, values, rtol=1e-2)


def test_width_of_a_released_size_without_config_json(tmp_path):
    """A bare file without config.json: the head count comes from GPT-2's widths (768 -> 12 heads)."""
    hparams = openai_hparams(n_vocab=13, n_ctx=4, n_embd=768, n_head=12, n_layer=1)
    tensors = random_openai_tensors(hparams, seed=2)
    folder = hf_folder(tmp_path, hparams=hparams, tensors=tensors, config_json=False)
    config, params = load_weights(folder / "model.safetensors")
    assert (config.n_heads, config.n_layers, config.emb_dim, config.vocab_size, config.context_length) == (
        12, 1, 768, 13, 4)
    idx = np.array([[1, 5, 7, 12]])
    logits, _ = npmodel.forward(as_float64(params), idx, config)
    np.testing.assert_allclose(logits, reference_logits(tensors, hparams, idx), rtol=1e-10, atol=1e-10)


def test_safetensors_are_read_through_a_memory_map(tmp_path):
    """Loading holds the final params plus at most about one tensor, never a second copy of the model."""
    hparams = openai_hparams(n_vocab=4000, n_ctx=64, n_embd=128, n_head=4, n_layer=2)
    folder = hf_folder(tmp_path, hparams=hparams, tensors=random_openai_tensors(hparams, seed=3))
    with SafetensorsFile(folder / "model.safetensors") as file:
        view = file.array("transformer.wte.weight")
        assert not view.flags.owndata and not view.flags.writeable      # a view into the read-only map
    del view
    tracemalloc.start()
    try:
        _, params = load_weights(folder)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    final = sum(value.nbytes for _, value in npmodel.unique_arrays(params))
    largest = max(value.nbytes for value in params.values())
    # wte (2 MB) is half of the model: a second copy of everything would put the peak near 2 x final
    assert peak < final + largest // 2, (peak, final, largest)


# ---------------------------------------------------------------------------------------------------
# errors: each names the file, the tensor where there is one, and the fix
# ---------------------------------------------------------------------------------------------------

# ---------------------------------------------------------------------------------------------------
# `gpt2 generate --weights` on the released formats, both backends
# ---------------------------------------------------------------------------------------------------

PROMPT = "Every effort moves"


def generate_text(capsys, weights, backend):
    """stdout of a greedy `gpt2 generate --weights WEIGHTS --backend BACKEND` (its exit code must be 0)."""
    from gpt2cli.main import main as cli_main
    code = cli_main(["generate", "--weights", str(weights), "--backend", backend, "--prompt", PROMPT,
                     "--max-new-tokens", "4", "--temperature", "0", "--no-stop"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out


def test_cli_generates_from_openai_and_hugging_face_folders(tmp_path_factory, capsys):
    """GPT-2's vocabulary (so the tokenizer's ids fit), a tiny width: the OpenAI folder and the Hugging Face
    folder holding the same tensors give the same text, in both backends."""
    hparams = openai_hparams(n_vocab=50257, n_ctx=16, n_embd=16, n_head=2, n_layer=2)
    tensors = random_openai_tensors(hparams, seed=5)
    root = tmp_path_factory.mktemp("generate")
    sources = {"openai": write_openai_checkpoint(root / "openai", hparams, tensors),
               "huggingface": write_hf_checkpoint(root / "hf", hparams, openai_to_hf_tensors(tensors, hparams))}
    texts = {(source, backend): generate_text(capsys, folder, backend)
             for source, folder in sources.items() for backend in ("numpy", "torch")}
    assert len(set(texts.values())) == 1, texts
    text = texts["openai", "numpy"]
    assert text.startswith(PROMPT) and len(text.rstrip("\n")) > len(PROMPT)


def test_cli_generates_from_a_bare_safetensors_file(tmp_path, capsys):
    """A .safetensors file alone (no config.json): the width must be a released one (768 -> 12 heads).
    Stored in float16 to keep the 50257 x 768 embedding small on disk; it loads as float32."""
    from safetensors.numpy import save_file
    hparams = openai_hparams(n_vocab=50257, n_ctx=8, n_embd=768, n_head=12, n_layer=1)
    tensors = {key: value.astype(np.float16)
               for key, value in openai_to_hf_tensors(random_openai_tensors(hparams, seed=6), hparams).items()}
    file = tmp_path / "gpt2-like.safetensors"
    save_file(tensors, str(file))
    numpy_text, torch_text = (generate_text(capsys, file, backend) for backend in ("numpy", "torch"))
    assert numpy_text == torch_text and numpy_text.startswith(PROMPT) and len(numpy_text.rstrip("\n")) > len(PROMPT)


def test_tensorflow_logs_are_silenced_unless_asked_for(openai_folder, monkeypatch):
    """TensorFlow prints C++ log lines on import unless TF_CPP_MIN_LOG_LEVEL (most lines) and
    TF_ENABLE_ONEDNN_OPTS=0 (the oneDNN notice) are set first; a user's own settings win (setdefault).
    (Checked by hand on TensorFlow 2.21: `gpt2 generate --weights OPENAI_FOLDER` then prints no TF line.)"""
    for name in ("TF_CPP_MIN_LOG_LEVEL", "TF_ENABLE_ONEDNN_OPTS"):
        monkeypatch.delenv(name, raising=False)
    load_weights(openai_folder)
    assert (os.environ["TF_CPP_MIN_LOG_LEVEL"], os.environ["TF_ENABLE_ONEDNN_OPTS"]) == ("3", "0")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "1")
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "1")
    load_weights(openai_folder)
    assert (os.environ["TF_CPP_MIN_LOG_LEVEL"], os.environ["TF_ENABLE_ONEDNN_OPTS"]) == ("1", "1")


def test_missing_tensorflow_says_how_to_install_it(openai_folder, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow", None)      # `import tensorflow` now raises ImportError
    with pytest.raises(WeightsError, match=r'pip install "\.\[tf\]"'):
        load_weights(openai_folder)


def test_missing_files_in_openai_folder(openai_copy):
    (openai_copy / "model.ckpt.data-00000-of-00001").unlink()
    with pytest.raises(FileNotFoundError, match="model.ckpt.data-00000-of-00001.*gpt2 weights download"):
        load_weights(openai_copy)
    (openai_copy / "model.ckpt.index").unlink()
    with pytest.raises(FileNotFoundError, match="model.ckpt.index"):
        load_weights(openai_copy)
    (openai_copy / "hparams.json").unlink()
    with pytest.raises(FileNotFoundError, match="hparams.json"):
        load_weights(openai_copy / "checkpoint")


def test_hparams_that_disagree_with_the_tensors(openai_copy):
    hparams_file = openai_copy / "hparams.json"
    hparams_file.write_text(json.dumps({**HPARAMS, "n_embd": 48, "n_head": 4}))
    with pytest.raises(WeightsError) as caught:
        load_weights(openai_copy)
    message = str(caught.value)
    assert "model.ckpt.index" in message and "model/wte" in message and "(61, 32)" in message
    assert "(61, 48)" in message and "hparams.json" in message

    hparams_file.write_text(json.dumps({**HPARAMS, "n_layer": 3}))
    with pytest.raises(WeightsError, match="model/h2/ln_1/g is missing"):
        load_weights(openai_copy)
    hparams_file.write_text(json.dumps({**HPARAMS, "n_head": 5}))
    with pytest.raises(WeightsError, match="hparams.json describes an impossible model.*divisible"):
        load_weights(openai_copy)
    hparams_file.write_text(json.dumps({"n_vocab": 61}))
    with pytest.raises(WeightsError, match="lacks .*n_ctx"):
        load_weights(openai_copy)
    hparams_file.write_text('{"n_vocab": 61,')
    with pytest.raises(WeightsError, match="hparams.json is not valid JSON"):
        load_weights(openai_copy)


@pytest.mark.parametrize("file, expected", [
    ("model.ckpt.index", r"cannot read the checkpoint index .*model\.ckpt\.index"),
    ("model.ckpt.data-00000-of-00001", r"model\.ckpt\.data-00000-of-00001: cannot read tensor model/"),
])
def test_truncated_tf_files(openai_copy, file, expected):
    data = (openai_copy / file).read_bytes()
    (openai_copy / file).write_bytes(data[:len(data) // 2])
    with pytest.raises(WeightsError, match=expected) as caught:
        load_weights(openai_copy)
    assert "download it again" in str(caught.value)


def test_truncated_safetensors_names_file_and_tensor(tmp_path):
    folder = hf_folder(tmp_path, prefix="")
    file = folder / "model.safetensors"
    data = file.read_bytes()
    file.write_bytes(data[:-100])
    with pytest.raises(WeightsError) as caught:
        load_weights(folder)
    message = str(caught.value)
    assert str(file) in message and "truncated" in message
    assert re.search(r"tensor (h\.\d+\.|ln_f\.|wte\.|wpe\.)\S+ ends at data byte \d+ but the file holds only", message)
    file.write_bytes(b"\x00" * 5)
    with pytest.raises(WeightsError, match="not a readable safetensors file"):
        load_weights(folder)


def test_hf_config_problems(tmp_path):
    folder = hf_folder(tmp_path)
    config_file = folder / "config.json"
    config_file.write_text('{"n_embd": 32,')
    with pytest.raises(WeightsError, match=r"config\.json"):
        load_weights(folder)
    config_file.write_text("[1, 2]")
    with pytest.raises(WeightsError, match=r"config\.json holds a JSON list"):
        load_weights(folder)
    config_file.write_text(json.dumps({**hf_config(HPARAMS), "n_embd": 64, "n_head": 4}))
    with pytest.raises(WeightsError) as caught:
        load_weights(folder)
    assert "transformer.wte.weight" in str(caught.value) and "(61, 32)" in str(caught.value)
    config_file.write_text(json.dumps({**hf_config(HPARAMS), "n_layer": 1}))
    with pytest.raises(WeightsError, match=r"unexpected tensors \['transformer\.h\.1\."):
        load_weights(folder)
    config_file.write_text(json.dumps({**hf_config(HPARAMS), "n_layer": 3}))
    with pytest.raises(WeightsError, match=r"tensor transformer\.h\.2\.ln_1\.weight is missing"):
        load_weights(folder)
    config_file.write_text(json.dumps({**hf_config(HPARAMS), "model_type": "mistral"}))
    with pytest.raises(WeightsError, match="only GPT-2"):
        load_weights(folder)
    # A "llama" model_type now goes to the Llama layout (gptcore/formats/llama_release.py), which names what a
    # GPT-2 config.json lacks.
    config_file.write_text(json.dumps({**hf_config(HPARAMS), "model_type": "llama"}))
    with pytest.raises(WeightsError, match="lacks Llama fields"):
        load_weights(folder)
    config_file.write_text(json.dumps({**hf_config(HPARAMS), "activation_function": "relu"}))
    with pytest.raises(WeightsError, match="activation_function"):
        load_weights(folder)


def test_hf_file_without_config_and_unknown_width(tmp_path):
    folder = hf_folder(tmp_path, config_json=False)
    with pytest.raises(WeightsError, match="width 32 .* config.json"):
        load_weights(folder / "model.safetensors")


def test_pickled_pytorch_files_are_refused(tmp_path):
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text(json.dumps(hf_config(HPARAMS)))
    (tmp_path / "hf" / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(FileNotFoundError, match="never loaded"):
        load_weights(tmp_path / "hf")


def test_unknown_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="gpt2 weights download"):
        load_weights(tmp_path / "nothing")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "notes.txt").write_text("x")
    with pytest.raises(WeightsError, match=r"unknown weights layout .*notes\.txt"):
        load_weights(tmp_path / "folder")
    (tmp_path / "weights.npz").write_bytes(b"x")
    with pytest.raises(WeightsError, match="not a weights file"):
        load_weights(tmp_path / "weights.npz")


# ---------------------------------------------------------------------------------------------------
# writing: save_weights is load_weights' twin, and writes exactly the released layouts
# ---------------------------------------------------------------------------------------------------

def release_config(tie_weights=True):
    return npgpt.GPTConfig(vocab_size=61, context_length=16, emb_dim=32, n_heads=4, n_layers=2, drop_rate=0.0,
                           qkv_bias=True, tie_weights=tie_weights)


# OpenAI's layout has no separate head (test_save_weights_refuses_what_a_format_cannot_hold)
@pytest.mark.parametrize("format, tie_weights", [("checkpoint", True), ("checkpoint", False), ("huggingface", True),
                                                 ("huggingface", False), ("openai", True)])
def test_save_weights_round_trips(tmp_path, format, tie_weights):
    config = release_config(tie_weights)
    params = npmodel.init_params(config, seed=4)
    path = save_weights(tmp_path / format, config, params, format=format)
    assert detect_format(path) == format
    loaded_config, loaded = load_weights(path)
    assert loaded_config == config
    assert_same_params(params, loaded)
    assert (loaded["out_head.weight"] is loaded["tok_emb.weight"]) == tie_weights


def test_saved_release_files_hold_the_released_tensors(openai_folder, tmp_path):
    """Written from the params of the OpenAI folder, both released formats hold exactly the tensors that
    tests/fake_checkpoints.py writes on its own (names, (in, out) shapes, fused c_attn, values)."""
    import tensorflow as tf
    from safetensors.numpy import load_file
    config, params = load_weights(openai_folder)

    hf = save_weights(tmp_path / "hf", config, params, format="huggingface")
    expected = openai_to_hf_tensors(TENSORS, HPARAMS, buffers=False)
    written = load_file(str(hf / "model.safetensors"))
    assert sorted(written) == sorted(expected)
    for key, value in expected.items():
        assert np.array_equal(written[key], value), key
    written_config, hub_config = json.loads((hf / "config.json").read_text()), hf_config(HPARAMS)
    for key in ("model_type", "architectures", "activation_function", "layer_norm_epsilon", "vocab_size",
                "n_positions", "n_ctx", "n_embd", "n_head", "n_layer"):
        assert written_config[key] == hub_config[key], key

    openai = save_weights(tmp_path / "openai", config, params, format="openai")
    assert json.loads((openai / "hparams.json").read_text()) == HPARAMS
    reader = tf.train.load_checkpoint(str(openai / "model.ckpt"))
    assert sorted(reader.get_variable_to_shape_map()) == sorted(TENSORS)
    for name, value in TENSORS.items():
        assert np.array_equal(reader.get_tensor(name), value), name


def test_release_layout_shapes_come_from_the_spec():
    """The released layout holds every parameter once: its sizes add up to the spec's count (tied head)."""
    from gptcore.arch import count_params_for
    from gptcore.formats import gpt2_release
    config = release_config()
    shapes = gpt2_release.layout_shapes(config)
    assert shapes["h1.attn.c_attn.w"] == (32, 96) and shapes["h0.mlp.c_proj.w"] == (128, 32)
    assert sum(int(np.prod(shape)) for shape in shapes.values()) == count_params_for(config)


def test_save_weights_refuses_what_a_format_cannot_hold(tmp_path):
    config = release_config()
    params = npmodel.init_params(config, seed=0)
    untied = release_config(tie_weights=False)
    with pytest.raises(WeightsError, match="no separate output head"):
        save_weights(tmp_path / "a", untied, npmodel.init_params(untied), format="openai")
    no_bias = config.replace(qkv_bias=False)
    with pytest.raises(WeightsError, match="qkv_bias=False"):
        save_weights(tmp_path / "b", no_bias, npmodel.init_params(no_bias), format="huggingface")
    with pytest.raises(WeightsError, match="language model's parameters"):
        save_weights(tmp_path / "c", config, {**params, "extra.weight": np.zeros(2, np.float32)},
                     format="huggingface")
    with pytest.raises(ValueError, match="unknown weights format 'gguf'"):
        save_weights(tmp_path / "d", config, params, format="gguf")
    with pytest.raises(ValueError, match="no place for metadata"):
        save_weights(tmp_path / "e", config, params, format="huggingface", metadata={"run": "a"})
    assert not any(tmp_path.iterdir())       # nothing half-written


@pytest.mark.slow
def test_saved_hugging_face_folder_loads_in_transformers(tmp_path):
    """transformers' own GPT2LMHeadModel reads the folder save_weights writes and computes our logits."""
    transformers = pytest.importorskip("transformers")
    for tie_weights in (True, False):
        config = release_config(tie_weights)
        params = npmodel.init_params(config, seed=2, dtype=np.float64)
        params = {name: value.astype(np.float32) for name, value in params.items()}
        if tie_weights:
            params["out_head.weight"] = params["tok_emb.weight"]
        folder = save_weights(tmp_path / f"tied-{tie_weights}", config, params, format="huggingface")
        model = transformers.GPT2LMHeadModel.from_pretrained(folder).eval()
        with torch.no_grad():
            hf_logits = model(torch.from_numpy(IDX)).logits.numpy()
        logits, _ = npmodel.forward(params, IDX, config)
        np.testing.assert_allclose(hf_logits, logits, rtol=0, atol=1e-4)
