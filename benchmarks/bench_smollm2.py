"""The SmolLM2 section of `gpt2 bench` (issue 15): a real Llama, SmolLM2-135M-Instruct, in NumPy and torch.

    gpt2 bench --sections smollm2 --threads 2 --out bench_results/smollm2     # the measured run
    gpt2 bench --quick --sections smollm2                                      # smoke run: tiny-llama, seconds

What is timed:
- forward and train step (forward + backward + AdamW) at --batch-size x --seq-len (B=4, T=256 by default)
  for numpy (npgpt), torch (torchgpt's explicit attention) and torch_sdpa (scaled_dot_product_attention),
  interleaved by benchmarks.harness.measure, in the rows of the `models` section (same table);
- batch-1 greedy decoding with KV caches, --decode-new-tokens (100) after a 32-token prompt, the stop token
  switched off, for numpy and torchgpt (both in their decoding layout and SDPA, as `gpt2 generate` runs them)
  and Hugging Face transformers. Runs are interleaved with the order rotated per repeat, as in
  benchmarks.bench_decode; the table gives median tokens/s and the median of the per-repeat ratios to hf.

The weights: the real file (`smollm2-135m-instruct` in the data manifest, through GPT2_DATA_DIR) loaded by our
GGUF reader for numpy and torchgpt, and by transformers itself for hf
(AutoModelForCausalLM.from_pretrained(folder, gguf_file=name): it dequantizes the same file; needs the
`bench` extra: transformers, accelerate). --quick uses the tiny-llama preset with random weights instead (hf,
with --hf, loads them from a Hugging Face folder written by save_weights), so the section is a cheap smoke
test; its numbers are not claims. The targets are issue 15's, stated on the real model at B=4, T=256 and
100 new tokens: NumPy train step <= 1.0x torch, NumPy and torchgpt decode >= 1.8x transformers.
"""
from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import harness

SECTION = "smollm2"
WEIGHTS = "smollm2-135m-instruct"
QUICK_PRESET = "tiny-llama"
HEADLINE_BATCH = (4, 256)                  # B, T of the train-step target
HEADLINE_NEW_TOKENS = 100
TRAIN_SHAPE = "SmolLM2-135M, B=4, T=256"
DECODE_SHAPE = "SmolLM2-135M, batch 1, 100 new tokens after 32"
TARGETS = (  # name, operator, limit, issue, the shape it is stated on (suite.check_targets reads them)
    ("smollm2 train_step numpy/torch time", "<=", 1.0, "15", TRAIN_SHAPE),
    ("smollm2 decode numpy speed-up over hf", ">=", 1.8, "15", DECODE_SHAPE),
    ("smollm2 decode torchgpt speed-up over hf", ">=", 1.8, "15", DECODE_SHAPE),
)


# --- the weights ---------------------------------------------------------------------------------

def load_model(quick: bool):
    """(name, config, float32 params): the real SmolLM2 GGUF, or tiny-llama with random weights (--quick)."""
    if quick:
        from gptcore.config import get_config
        from npgpt.model import init_params

        config = get_config(QUICK_PRESET)
        return QUICK_PRESET, config, init_params(config, seed=0, dtype=np.float32)
    from gptcore.formats.weights import load_weights

    config, params = load_weights(WEIGHTS)
    return WEIGHTS, config, params


def load_hf_model(quick: bool, config, params, folder: Path):
    """transformers' model of the same weights: read from the GGUF by transformers itself, or (--quick) from
    a Hugging Face Llama folder our writer makes."""
    import torch
    from transformers import AutoModelForCausalLM

    if quick:
        from gptcore.formats.weights import save_weights

        path = save_weights(folder, config, params, format="huggingface")
        return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    from gptcore.formats.weights import resolve_weights_path

    gguf = resolve_weights_path(WEIGHTS)
    return AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32).eval()


def copy_params(params: dict) -> dict:
    """A deep copy that keeps the tie (one array under tok_emb.weight and out_head.weight): training mutates."""
    copies = {}
    return {name: copies.setdefault(id(value), value.copy()) for name, value in params.items()}


# --- forward and train step ----------------------------------------------------------------------

class LlamaModelCases:
    """Forward and train step of one Llama config at (B, T) for numpy, torch and torch_sdpa, each with its own
    AdamW and its own copy of the weights (random token ids and targets: the time does not depend on them)."""

    def __init__(self, config, params, batch_size: int, seq_len: int, seed: int = 0):
        import torch

        from npgpt.optim import AdamW
        from torchgpt import build_model, load_numpy_params
        from torchgpt.optim import make_adamw

        self.config, self.batch_size, self.seq_len = config, batch_size, seq_len
        rng = np.random.default_rng(seed)
        self.idx = rng.integers(0, config.vocab_size, (batch_size, seq_len))
        self.targets = rng.integers(0, config.vocab_size, (batch_size, seq_len))
        self.tidx, self.ttargets = torch.from_numpy(self.idx), torch.from_numpy(self.targets)
        self.params = copy_params(params)
        self.n_params = sum(value.size for value in {id(v): v for v in params.values()}.values())
        self.numpy_optimizer = AdamW()
        self.torch_model = load_numpy_params(build_model(config, use_sdpa=False), params)
        self.torch_optimizer = make_adamw(self.torch_model)

    def flops(self, task: str) -> float:
        """Training FLOPs of the spec (6N + attention) per token x B T; a forward is a third of them."""
        from gptcore.arch.llama import flops_per_token

        train = flops_per_token(self.config, self.seq_len) * self.batch_size * self.seq_len
        return train if task == "train_step" else train / 3

    def numpy_forward(self):
        from npgpt import model as npmodel
        return npmodel.forward(self.params, self.idx, self.config)[0]

    def numpy_train_step(self):
        from npgpt import model as npmodel
        loss, grads = npmodel.loss_and_grads(self.params, self.idx, self.targets, self.config)
        self.numpy_optimizer.step(self.params, grads)
        return loss

    def _set_sdpa(self, flag: bool):
        for block in self.torch_model.blocks:
            block.att.use_sdpa = flag

    def torch_forward(self, sdpa: bool):
        import torch
        self._set_sdpa(sdpa)
        self.torch_model.eval()
        with torch.no_grad():
            return self.torch_model(self.tidx)

    def torch_train_step(self, sdpa: bool):
        import torch.nn.functional as F
        self._set_sdpa(sdpa)
        self.torch_model.train()
        self.torch_optimizer.zero_grad(set_to_none=True)
        logits = self.torch_model(self.tidx)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), self.ttargets.reshape(-1))
        loss.backward()
        self.torch_optimizer.step()
        return loss.item()

    def functions(self, task: str) -> dict:
        if task == "forward":
            return {"numpy": self.numpy_forward, "torch": lambda: self.torch_forward(False),
                    "torch_sdpa": lambda: self.torch_forward(True)}
        return {"numpy": self.numpy_train_step, "torch": lambda: self.torch_train_step(False),
                "torch_sdpa": lambda: self.torch_train_step(True)}


def model_rows(name, config, params, settings, log) -> list[dict]:
    """Rows in the `models` section's shape (report.model_table renders them)."""
    cases = LlamaModelCases(config, params, settings.batch_size, settings.seq_len)
    rows = []
    for task in ("forward", "train_step"):
        result = harness.measure(cases.functions(task), repeats=settings.repeats,
                                 warmup=max(2, settings.warmup) if task == "train_step" else settings.warmup,
                                 min_time=settings.min_time)
        flops = cases.flops(task)
        rows.append({"size": name, "task": task, "params": cases.n_params, "batch_size": settings.batch_size,
                     "seq_len": settings.seq_len, "drop_rate": 0.0, "model_gflop": flops / 1e9,
                     "achieved_gflops": {b: flops / s["median"] / 1e9 for b, s in result["stats"].items()}} | result)
        log(f"smollm2 {name} {task:10s} B={settings.batch_size} T={settings.seq_len:<5d} "
            + ", ".join(f"{b} {s['median']:.3f} s" for b, s in result["stats"].items())
            + f"; numpy/torch {result['ratio_vs_torch']['numpy']:.2f}")
    return rows


# --- decoding ------------------------------------------------------------------------------------

def decode_engines(config, params, hf_model, prompt: list[int], new_tokens: int) -> dict:
    """engine -> function() returning the new token ids (greedy, KV cache, no stop token)."""
    import torch

    import npgpt.generate
    import torchgpt.generate
    from torchgpt import build_model, load_numpy_params

    torch_model = torchgpt.generate.decoding_layout(
        load_numpy_params(build_model(config, use_sdpa=True), params).eval())
    numpy_params = npgpt.generate.decoding_layout(params, config)
    runs = {"numpy": lambda: npgpt.generate.generate(numpy_params, config, prompt, new_tokens, stop_ids=()),
            "torchgpt": lambda: torchgpt.generate.generate(torch_model, prompt, new_tokens, stop_ids=())}
    if hf_model is not None:
        prompt_tensor = torch.tensor([prompt])

        def run_hf():
            with torch.no_grad():
                out = hf_model.generate(prompt_tensor, attention_mask=torch.ones_like(prompt_tensor),
                                        max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                                        num_beams=1, use_cache=True, pad_token_id=0)
            return out[0, len(prompt):].tolist()

        runs["hf"] = run_hf
    return runs


def decode_rates(runs: dict, new_tokens: int, repeats: int) -> tuple[dict, dict]:
    """(tokens/s per engine per repeat, the warm-up's tokens per engine); the order rotates every repeat so a
    busy machine slows every engine alike."""
    names = list(runs)
    tokens = {name: runs[name]() for name in names}            # warm-up, and the tokens for the check
    rates = {name: [] for name in names}
    for repeat in range(repeats):
        for name in names[repeat % len(names):] + names[:repeat % len(names)]:
            start = time.perf_counter()
            runs[name]()
            rates[name].append(new_tokens / (time.perf_counter() - start))
    return rates, tokens


def decode_result(name, config, params, settings, log) -> dict:
    prompt = np.random.default_rng(0).integers(0, config.vocab_size, settings.decode_prompt_tokens).tolist()
    new_tokens = settings.decode_new_tokens
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        hf_model = load_hf_model(settings.quick, config, params, Path(tmp) / "hf") if settings.use_hf else None
        rates, tokens = decode_rates(decode_engines(config, params, hf_model, prompt, new_tokens), new_tokens,
                                     settings.repeats)
    result = {"model": name, "prompt_tokens": len(prompt), "new_tokens": new_tokens, "repeats": settings.repeats,
              "threads": settings.threads, "batch_size": 1, "strategy": "greedy, KV cache",
              "load_average_1min": {"start": load_before, "end": os.getloadavg()[0], "cores": os.cpu_count()},
              "tokens_per_s": rates,
              "median_tokens_per_s": {engine: statistics.median(r) for engine, r in rates.items()},
              "same_tokens_as_numpy": {engine: tokens[engine] == tokens["numpy"] for engine in tokens}}
    if "hf" in rates:   # ratios per repeat (the runs of one repeat are neighbours in time), then the median
        result["median_speedup_vs_hf"] = {engine: statistics.median(r / h for r, h in zip(rates[engine], rates["hf"]))
                                          for engine in rates}
    log("smollm2 decode " + ", ".join(f"{engine} {rate:.1f} tokens/s"
                                      for engine, rate in result["median_tokens_per_s"].items()))
    return result


# --- the section, its targets and its table ------------------------------------------------------

def run_section(settings, log) -> dict:
    """{"model", "models": rows, "decode": result}: forward/train step and decoding of SmolLM2 (tiny-llama
    with --quick). Decoding runs first, on the loaded weights; the train steps work on copies."""
    name, config, params = load_model(settings.quick)
    config = config.replace(context_length=max(config.context_length, settings.seq_len,
                                               settings.decode_prompt_tokens + settings.decode_new_tokens))
    decode = decode_result(name, config, params, settings, log)
    return {"model": name, "decode": decode, "models": model_rows(name, config, params, settings, log)}


def on_headline_shape(settings) -> dict:
    """Stated shape -> whether this run measured on it (the real model, B=4, T=256, 100 new tokens)."""
    real = not settings.quick
    return {TRAIN_SHAPE: real and (settings.batch_size, settings.seq_len) == HEADLINE_BATCH,
            DECODE_SHAPE: real and settings.decode_new_tokens == HEADLINE_NEW_TOKENS
            and settings.decode_prompt_tokens == 32}


def target_values(result: dict) -> dict:
    """The measured value of each target of TARGETS (None where the section or hf did not run)."""
    section = result.get(SECTION) or {}
    values = {name: None for name, *_ in TARGETS}
    for row in section.get("models", []):
        if row["task"] == "train_step":
            values["smollm2 train_step numpy/torch time"] = row["ratio_vs_torch"]["numpy"]
    speedups = (section.get("decode") or {}).get("median_speedup_vs_hf", {})
    values["smollm2 decode numpy speed-up over hf"] = speedups.get("numpy")
    values["smollm2 decode torchgpt speed-up over hf"] = speedups.get("torchgpt")
    return values


def decode_table(decode: dict) -> list[str]:
    """The decode table of the section (markdown lines)."""
    has_hf = "median_speedup_vs_hf" in decode
    load = decode["load_average_1min"]
    lines = [f"{decode['model']}, batch 1, {decode['strategy']}, {decode['prompt_tokens']}-token prompt + "
             f"{decode['new_tokens']} new tokens, {decode['threads']} threads, {decode['repeats']} interleaved "
             f"repeats; load average {load['start']:.1f} -> {load['end']:.1f} on {load['cores']} cores", "",
             "| engine | median tokens/s | all runs (tokens/s) |" + (" speed-up vs hf (median of per-repeat ratios) |"
                                                                    if has_hf else "") + " same tokens as numpy |",
             "| --- | ---: | --- |" + (" ---: |" if has_hf else "") + " --- |"]
    for engine, median in decode["median_tokens_per_s"].items():
        runs = ", ".join(f"{rate:.1f}" for rate in decode["tokens_per_s"][engine])
        speedup = f" {decode['median_speedup_vs_hf'][engine]:.2f}x |" if has_hf else ""
        lines.append(f"| {engine} | {median:.1f} | {runs} |{speedup} {decode['same_tokens_as_numpy'][engine]} |")
    return lines + [""]
