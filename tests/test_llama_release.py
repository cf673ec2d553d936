"""Hugging Face Llama folders (gptcore/formats/llama_release.py): written in LlamaForCausalLM's layout by the
tests (one file, and shards with model.safetensors.index.json), read back through load_weights, and converted
by the CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest

from gptcore.arch import param_shapes
from gptcore.config import GPTConfig
from gptcore.formats.llama_release import HF_NAMES, expand_names
from gptcore.formats.safetensors import SafetensorsFile, WeightsError, write_safetensors
from gptcore.formats.weights import load_weights, save_weights
from gpt2cli.main import main

CONFIG = GPTConfig(arch="llama", vocab_size=40, context_length=16, emb_dim=12, n_heads=3, n_kv_heads=1,
                   n_layers=2, ff_dim=20, rope_theta=500000.0, norm_eps=1e-5, drop_rate=0.0, tie_weights=False)


def random_params(config, seed=0):
    rng = np.random.default_rng(seed)
    params = {name: rng.standard_normal(shape).astype(np.float32) for name, shape in param_shapes(config).items()}
    if config.tie_weights:
        params["out_head.weight"] = params["tok_emb.weight"]
    return params


def hf_config(**changes):
    values = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 40, "hidden_size": 12,
              "intermediate_size": 20, "num_hidden_layers": 2, "num_attention_heads": 3, "num_key_value_heads": 1,
              "max_position_embeddings": 16, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
              "tie_word_embeddings": False, "hidden_act": "silu"}
    values.update(changes)
    return values


def write_hf_folder(folder, params, values, shards=1):
    """A Hub folder as transformers saves it: LlamaForCausalLM names, one file or `shards` plus the index."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {hf: params[canonical] for canonical, hf in expand_names(HF_NAMES, values["num_hidden_layers"]).items()
               if canonical in params and not (canonical == "out_head.weight" and values["tie_word_embeddings"])}
    if shards == 1:
        write_safetensors(folder / "model.safetensors", tensors, metadata={"format": "pt"})
    else:
        keys = list(tensors)
        weight_map = {}
        for shard in range(shards):
            file = f"model-{shard + 1:05d}-of-{shards:05d}.safetensors"
            part = {key: tensors[key] for key in keys[shard::shards]}
            write_safetensors(folder / file, part, metadata={"format": "pt"})
            weight_map.update({key: file for key in part})
        (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps(values))
    return folder


@pytest.mark.parametrize("shards", [1, 3])
def test_hub_folder_loads_into_canonical_names(tmp_path, shards):
    params = random_params(CONFIG)
    config, loaded = load_weights(write_hf_folder(tmp_path / "hf", params, hf_config(), shards=shards))
    assert config == CONFIG
    assert list(loaded) == list(param_shapes(CONFIG))
    for name in loaded:
        np.testing.assert_array_equal(loaded[name], params[name], err_msg=name)


def test_tied_folder_without_lm_head_ties_the_head(tmp_path):
    config = CONFIG.replace(tie_weights=True)
    params = random_params(config)
    loaded_config, loaded = load_weights(write_hf_folder(tmp_path / "hf", params, hf_config(tie_word_embeddings=True)))
    assert loaded_config.tie_weights and loaded["out_head.weight"] is loaded["tok_emb.weight"]


def test_save_then_load_round_trips_with_transformers_names(tmp_path):
    params = random_params(CONFIG, seed=1)
    folder = save_weights(tmp_path / "out", CONFIG, params, format="huggingface")
    with SafetensorsFile(folder / "model.safetensors") as weights:
        assert "model.layers.1.self_attn.k_proj.weight" in weights.keys and "lm_head.weight" in weights.keys
        assert weights.shape("model.layers.1.self_attn.k_proj.weight") == (4, 12)
    values = json.loads((folder / "config.json").read_text())
    assert values["model_type"] == "llama" and values["num_key_value_heads"] == 1
    config, loaded = load_weights(folder)
    assert config == CONFIG
    for name in params:
        np.testing.assert_array_equal(loaded[name], params[name])


def test_llama3_rope_scaling_is_kept_and_others_are_refused_by_name(tmp_path):
    scaling = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192}
    params = random_params(CONFIG)
    config, _ = load_weights(write_hf_folder(tmp_path / "a", params, hf_config(rope_scaling=scaling)))
    assert config.rope_scaling == scaling
    folder = save_weights(tmp_path / "b", config, params, format="huggingface")
    assert load_weights(folder)[0].rope_scaling == scaling
    with pytest.raises(WeightsError, match="rope scaling 'yarn' is not supported"):
        load_weights(write_hf_folder(tmp_path / "c", params, hf_config(rope_scaling={"rope_type": "yarn",
                                                                                     "factor": 4.0})))


def test_a_shape_that_disagrees_with_config_json_names_the_tensor(tmp_path):
    params = random_params(CONFIG)
    folder = write_hf_folder(tmp_path / "hf", params, hf_config(num_key_value_heads=3))
    with pytest.raises(WeightsError, match="k_proj.weight has shape"):
        load_weights(folder)


def test_cli_info_and_convert_give_the_same_tensors(tmp_path, capsys):
    params = random_params(CONFIG, seed=2)
    source = write_hf_folder(tmp_path / "hf", params, hf_config())
    assert main(["weights", "info", str(source)]) == 0
    out = capsys.readouterr().out
    assert "Hugging Face" in out and "arch=llama" in out and "n_kv_heads=1" in out
    assert main(["weights", "convert", str(source), str(tmp_path / "ckpt")]) == 0
    config, loaded = load_weights(tmp_path / "ckpt")
    assert config == CONFIG
    for name in params:
        np.testing.assert_array_equal(loaded[name], params[name])
