"""Loading GPT-2 124M-shaped weights: time and memory of each format, in npgpt and torchgpt.

    python -m benchmarks.bench_weights_load [--size 124M] [--repeats 3] [--json out.json] [--keep DIR]

No real weights exist here, so the script writes random weights of the real shapes (tests/fake_checkpoints.py)
in the three layouts: OpenAI's TF folder (TF1 Saver), a Hugging Face folder (config.json + model.safetensors),
and our checkpoint (gptcore.formats.checkpoint). Each load runs in a fresh subprocess, so its peak resident memory
is its own: the table gives the best wall time of the load call and the peak growth of anonymous resident
memory (RssAnon, sampled every 2 ms; a memory-mapped file's pages are page cache and not counted) over the
process's state after imports, next to the size of the float32 parameters (one copy of the model). Linux only.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, sys, threading, time
loader, path = sys.argv[1], sys.argv[2]
import numpy as np
from gptcore.formats.weights import load_weights
import tensorflow  # noqa: F401  imported before the baseline by every run, so runs compare
if loader == "torchgpt":
    from torchgpt.checkpoint import load_model


def rss_anon_kib():
    # anonymous memory only: pages of a memory-mapped file are page cache, not a copy of the model
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("RssAnon:"))


peak, done = [rss_anon_kib()], threading.Event()
def sample():
    while not done.is_set():
        peak[0] = max(peak[0], rss_anon_kib())
        time.sleep(0.002)
before = peak[0]
sampler = threading.Thread(target=sample)
sampler.start()
start = time.perf_counter()
result = load_model(path) if loader == "torchgpt" else load_weights(path)
seconds = time.perf_counter() - start
done.set()
sampler.join()
print(json.dumps({"seconds": seconds, "peak_growth_mib": (max(peak[0], rss_anon_kib()) - before) / 1024}))
"""


def write_layouts(folder: Path, size: str) -> dict[str, Path]:
    from gptcore.formats.checkpoint import save_checkpoint
    from gptcore.config import get_config
    from gptcore.formats.weights import load_weights
    from tests.fake_checkpoints import (openai_hparams, openai_to_hf_tensors, random_openai_tensors,
                                        write_hf_checkpoint, write_openai_checkpoint)

    paths = {kind: folder / kind for kind in ("openai", "huggingface", "checkpoint")}
    if (folder / "written.json").is_file() and json.loads((folder / "written.json").read_text()) == size:
        return paths                                     # a --keep folder from an earlier run
    config = get_config(size)
    hparams = openai_hparams(n_vocab=config.vocab_size, n_ctx=config.context_length, n_embd=config.emb_dim,
                             n_head=config.n_heads, n_layer=config.n_layers)
    tensors = random_openai_tensors(hparams, seed=0)
    paths = {"openai": write_openai_checkpoint(folder / "openai", hparams, tensors)}
    paths["huggingface"] = write_hf_checkpoint(folder / "huggingface", hparams,
                                               openai_to_hf_tensors(tensors, hparams, buffers=False))
    del tensors
    loaded_config, params = load_weights(paths["huggingface"])
    paths["checkpoint"] = save_checkpoint(folder / "checkpoint", params, loaded_config)
    (folder / "written.json").write_text(json.dumps(size))
    return paths


def measure(loader: str, path: Path, repeats: int) -> dict:
    runs = []
    for _ in range(repeats):
        out = subprocess.run([sys.executable, "-c", CHILD, loader, str(path)], check=True, capture_output=True,
                             text=True, cwd=Path(__file__).resolve().parent.parent)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return {"seconds": min(r["seconds"] for r in runs), "peak_growth_mib": min(r["peak_growth_mib"] for r in runs)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="124M")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--keep", default=None, help="write the fake checkpoints here and keep them (a later run "
                                                     "with the same --keep and --size reuses them)")
    args = parser.parse_args(argv)

    from gptcore.config import get_config
    from gptcore.arch import param_shapes

    config = get_config(args.size)
    n_params = sum(math.prod(shape) for name, shape in param_shapes(config).items()
                   if name != "out_head.weight")   # tied to tok_emb.weight
    model_mib = 4 * n_params / 2**20
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(args.keep or scratch)
        paths = write_layouts(folder, args.size)
        rows = []
        for kind, path in paths.items():
            for loader in ("npgpt", "torchgpt"):
                result = measure(loader, path, args.repeats)
                rows.append({"format": kind, "loader": loader, **result})

    print(f"GPT-2 {args.size}-shaped random weights: {n_params:,} parameters, {model_mib:.0f} MiB in float32; "
          f"{platform.processor() or platform.machine()}, Python {platform.python_version()}, "
          f"best of {args.repeats}")
    print("| format | loader | load time (s) | peak anon. memory growth (MiB) | growth / model size |")
    print("|---|---|---:|---:|---:|")
    for row in rows:
        print(f"| {row['format']} | {row['loader']} | {row['seconds']:.2f} | {row['peak_growth_mib']:.0f} | "
              f"{row['peak_growth_mib'] / model_mib:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"size": args.size, "n_params": n_params, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
