"""`gpt2 bench`: a smoke run of --quick (a reduced one: one thread, two T values, no Hugging Face) checks
the outputs; the FLOP formula and the statistics are checked against independent counts. No timing is
asserted. The Hugging Face columns (optional `bench` extra; importing transformers alone takes ~5-12 s
here) are checked by a test marked slow."""
import json

import numpy as np
import pytest

from benchmarks import cases, harness
from gpt2cli.main import main
from npgpt.config import GPTConfig, get_config
from npgpt.model import init_params

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_quick_bench_writes_json_markdown_and_plots(tmp_path, capsys):
    out = tmp_path / "bench"
    code = main(["bench", "--quick", "--threads", "1", "--repeats", "2", "--t-values", "16", "32",
                 "--sizes", "tiny", "C64-L1", "--no-hf", "--out", str(out)])
    assert code == 0
    result = json.loads((out / "bench.json").read_text())
    for key in ("command", "settings", "machine", "gemm_gflops", "components", "models", "sweep_t", "decode",
                "targets", "seconds"):
        assert key in result, key
    assert result["settings"]["quick"] is True and result["settings"]["threads"] == 1
    assert result["machine"]["thread_pools"] and result["machine"]["cpu"]
    assert {"numpy", "torch"} <= set(result["gemm_gflops"])
    assert result["gemm_gflops"]["numpy"]["median"] > 0

    components = result["components"]
    seen = {(row["component"], row["direction"], row["seq_len"]) for row in components}
    assert seen == {(c, d, t) for c in cases.COMPONENTS for d in ("forward", "backward") for t in (16, 32)}
    for row in components:
        expected = {"numpy", "torch"} | ({"torch_sdpa"} if row["component"] in cases.ATTENTION_COMPONENTS else set())
        assert set(row["times_s"]) == expected
        assert all(len(times) == 2 and min(times) > 0 for times in row["times_s"].values())
        assert set(row["ratio_vs_torch"]) == expected - {"torch"}

    models = result["models"]
    assert {(row["size"], row["task"]) for row in models} == {(s, t) for s in ("tiny", "C64-L1")
                                                              for t in ("forward", "train_step")}
    for row in models:
        assert row["model_gflop"] > 0 and row["achieved_gflops"]["numpy"] > 0
        assert {"numpy", "torch", "torch_sdpa"} <= set(row["stats"])
        assert row["numpy_fraction_of_numpy_gemm"] > 0
    assert {row["seq_len"] for row in result["sweep_t"]} == {16, 32}
    assert result["decode"]["new_tokens"] == 8 and result["decode"]["same_tokens_as_numpy"]["torchgpt"]
    assert all("hf" not in row["stats"] for row in models)
    assert {t["target"] for t in result["targets"]} >= {"train_step numpy/torch time", "forward numpy/torch time"}
    assert not any(t["headline_shape"] for t in result["targets"])     # tiny is not the stated shape

    markdown = (out / "bench.md").read_text()
    printed = capsys.readouterr().out
    assert "| component | direction |" in markdown and "## Targets" in markdown and "not claims" in markdown
    assert markdown.strip() in printed
    for name in ("time_vs_T.png", "ratio_per_component.png", "time_vs_size.png"):
        assert (out / name).read_bytes()[:8] == PNG_SIGNATURE, name


@pytest.mark.parametrize("argv, message", [
    (["--sizes", "C12x"], "C256-L4"),
    (["--sizes", "gpt5"], "unknown model preset"),
    (["--threads", "0"], "at least 1"),
])
def test_bench_rejects_bad_settings_in_one_line(tmp_path, capsys, argv, message):
    code = main(["bench", "--quick", "--sections", "components", "--out", str(tmp_path)] + argv)
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "bench.json").exists()


def test_model_flops_matches_a_count_of_the_matmul_weights():
    """N_mm counted from the real parameter shapes (every 2-D weight but the embeddings, plus the head)."""
    config = GPTConfig(vocab_size=101, context_length=32, emb_dim=24, n_heads=3, n_layers=2, qkv_bias=True)
    params = init_params(config)
    n_matmul = sum(v.size for k, v in params.items() if v.ndim == 2 and not k.startswith(("tok_emb", "pos_emb")))
    B, T, L, C = 3, 16, config.n_layers, config.emb_dim
    attention = L * B * (2 * T * T * C + 2 * T * T * C)      # q k^T and weights v, 2 FLOP per multiply-add
    assert cases.model_flops(config, B, T, train=False) == 2 * n_matmul * B * T + attention
    assert cases.model_flops(config, B, T, train=True) == 3 * (2 * n_matmul * B * T + attention)
    # GPT-2 124M at B=4, T=256: ~788 GFLOP per train step (6 N + 12 L T C per token).
    assert cases.model_flops(get_config("gpt2-small"), 4, 256, train=True) / 1e9 == pytest.approx(787.7, abs=0.5)


def test_statistics_and_per_repeat_ratios():
    stats = harness.summarize([4.0, 1.0, 3.0, 2.0, 5.0])
    assert (stats["median"], stats["min"], stats["max"], stats["q1"], stats["q3"]) == (3.0, 1.0, 5.0, 2.0, 4.0)
    # The ratio is taken per repeat before the median: a slow repeat slows both and cancels out.
    times = {"numpy": [1.0, 10.0, 1.2], "torch": [2.0, 20.0, 2.0]}
    assert harness.ratio_medians(times)["numpy"] == pytest.approx(0.5)


def test_torch_blas_is_found_inside_the_build_settings_line(monkeypatch):
    """torch.__config__.show() lists BLAS_INFO mid-line, after '- Build settings:'."""
    import torch

    show = "PyTorch built with:\n  - Build settings: BLAS_INFO=mkl, BUILD_TYPE=Release, CXX_COMPILER=/c++\n"
    monkeypatch.setattr(torch.__config__, "show", lambda: show)
    assert harness.torch_blas() == "mkl"
    monkeypatch.setattr(torch.__config__, "show", lambda: "PyTorch built with:\n  - OpenMP 201511\n")
    assert harness.torch_blas() == "unknown"


def test_torch_parallel_info_reports_the_thread_limit():
    with harness.limited_threads(1):
        info = harness.torch_parallel_info()
    assert "at::get_num_threads() : 1" in info
    assert any(line.startswith("ATen parallel backend") for line in info)
    assert not any(line.startswith("Environment variables") for line in info)


def test_interleaved_timing_rotates_the_order():
    order = []
    fns = {"a": lambda: order.append("a"), "b": lambda: order.append("b"), "c": lambda: order.append("c")}
    times = harness.time_interleaved(fns, repeats=3, warmup=1, min_time=0.0)
    assert all(len(v) == 3 for v in times.values())
    timed = order[3:]                               # after the warm-up round
    assert timed == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]


def test_component_cases_compute_the_same_thing_in_both_backends():
    """The timed functions are the real components: NumPy and torch outputs agree on the same weights."""
    config = get_config("tiny")
    for component in ("layernorm", "attention", "block"):
        fns = cases.component_cases(component, config, 2, 8, seed=3)
        numpy_out = fns["forward"]["numpy"]()[0]
        for backend in ("torch", "torch_sdpa") if component != "layernorm" else ("torch",):
            torch_out = fns["forward"][backend]().detach().numpy()
            np.testing.assert_allclose(numpy_out, torch_out, rtol=1e-4, atol=1e-5, err_msg=f"{component} {backend}")


def test_decode_takes_ladder_sizes_and_limits_every_thread_pool(monkeypatch):
    """bench_decode resolves its model like the other sections (C<width>-L<layers> used to raise late, after
    minutes of work) and limits npgpt's own thread pool as well as BLAS and torch while it runs."""
    import torch
    from threadpoolctl import threadpool_info

    from benchmarks import bench_decode
    from npgpt import parallel

    seen = []
    original_engines = bench_decode.engines

    def recording_engines(*args):
        def record(run):
            def wrapped():
                blas = {pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"}
                seen.append((parallel.num_threads(), torch.get_num_threads(), blas))
                return run()
            return wrapped
        return {name: record(run) for name, run in original_engines(*args).items()}

    monkeypatch.setattr(bench_decode, "engines", recording_engines)
    before = parallel.set_num_threads(3)               # not 1, so an unlimited pool shows
    try:
        result = bench_decode.run_benchmark("C64-L1", prompt_tokens=4, new_tokens=3, repeats=1, threads=1,
                                            use_hf=False)
        assert parallel.num_threads() == 3              # restored afterwards
    finally:
        parallel.set_num_threads(before)
    assert set(result["median_tokens_per_s"]) == {"numpy", "torchgpt", "torchgpt_eager"}
    assert all(result["same_tokens_as_numpy"].values())
    assert seen and all(entry == (1, 1, {1}) for entry in seen), seen


def test_decode_stretches_a_small_context_to_hold_prompt_and_new_tokens():
    from benchmarks.bench_decode import decode_config

    assert decode_config("tiny", 32, 100).context_length == 132        # tiny's own context is 64
    assert decode_config("gpt2-small", 32, 100).context_length == 1024
    with pytest.raises(ValueError, match="C256-L4"):
        decode_config("C12x", 4, 4)


@pytest.mark.slow
def test_quick_bench_with_hugging_face(tmp_path):
    pytest.importorskip("transformers")
    out = tmp_path / "bench"
    assert main(["bench", "--quick", "--threads", "1", "--repeats", "2", "--sections", "models", "decode",
                 "--sizes", "tiny", "--out", str(out)]) == 0
    result = json.loads((out / "bench.json").read_text())
    for row in result["models"]:
        assert row["stats"]["hf"]["median"] > 0 and "hf" in row["ratio_vs_torch"]
    assert result["decode"]["same_tokens_as_numpy"]["hf"]
    assert any(t["target"] == "decode numpy speed-up over hf" for t in result["targets"])
