"""`gpt2 bench --quick --sections smollm2`: the SmolLM2 section runs alone on the tiny-llama preset in seconds and
writes its rows, its decode table and issue 15's targets. No speed is asserted (the numbers of a quick run on a
shared machine are not claims); the real run is `gpt2 bench --sections smollm2` (benchmarks/bench_smollm2.py)."""
import json

import numpy as np

from benchmarks import bench_smollm2, suite
from gpt2cli.main import main


def test_quick_smollm2_section_runs_alone_and_reports_its_targets(tmp_path, capsys):
    out = tmp_path / "bench"
    assert main(["bench", "--quick", "--sections", "smollm2", "--out", str(out)]) == 0
    result = json.loads((out / "bench.json").read_text())
    assert result["sections_done"] == ["smollm2"] and result["complete"] is True
    section = result["smollm2"]
    assert section["model"] == bench_smollm2.QUICK_PRESET
    rows = {row["task"]: row for row in section["models"]}
    assert set(rows) == {"forward", "train_step"}
    for row in rows.values():
        assert set(row["stats"]) == {"numpy", "torch", "torch_sdpa"}
        assert (row["batch_size"], row["seq_len"]) == (2, 32) and row["model_gflop"] > 0
        assert all(len(times) == 3 and min(times) > 0 for times in row["times_s"].values())
    decode = section["decode"]
    assert set(decode["median_tokens_per_s"]) == {"numpy", "torchgpt"}         # no hf without --hf
    assert all(decode["same_tokens_as_numpy"].values())
    assert decode["new_tokens"] == 8 and all(len(rates) == 3 for rates in decode["tokens_per_s"].values())

    targets = {t["target"]: t for t in result["targets"]}
    assert {name for name, *_ in bench_smollm2.TARGETS} <= set(targets)
    train = targets["smollm2 train_step numpy/torch time"]
    assert train["measured"] == rows["train_step"]["ratio_vs_torch"]["numpy"] and train["headline_shape"] is False
    assert targets["smollm2 decode numpy speed-up over hf"]["measured"] is None
    assert "hf not run" in targets["smollm2 decode numpy speed-up over hf"]["note"]
    assert targets["train_step numpy/torch time"]["note"] == "models section not run"

    markdown = (out / "bench.md").read_text()
    assert "## tiny-llama: forward and train step (B=2, T=32)" in markdown
    assert "## tiny-llama: decode (KV cache)" in markdown and "smollm2 train_step numpy/torch time" in markdown


def test_headline_shape_is_the_real_model_at_issue_15s_shape():
    full = suite.BenchSettings(sections=("smollm2",))
    assert all(bench_smollm2.on_headline_shape(full).values())
    assert not any(bench_smollm2.on_headline_shape(suite.BenchSettings.quick_settings()).values())
    assert not bench_smollm2.on_headline_shape(suite.BenchSettings(seq_len=128))[bench_smollm2.TRAIN_SHAPE]


def test_train_step_copies_keep_the_tie_and_leave_the_loaded_weights_alone():
    shared = np.ones((3, 2), dtype=np.float32)
    params = {"tok_emb.weight": shared, "out_head.weight": shared, "final_norm.scale": np.ones(2, np.float32)}
    copies = bench_smollm2.copy_params(params)
    assert copies["out_head.weight"] is copies["tok_emb.weight"] and copies["tok_emb.weight"] is not shared
    copies["tok_emb.weight"] += 1
    assert shared.max() == 1.0
