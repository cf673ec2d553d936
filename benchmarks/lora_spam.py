"""LoRA vs full finetuning on the SMS spam task: test accuracy and trained parameters, one script.

    GPT2_DATA_DIR=/path/to/data TIKTOKEN_CACHE_DIR=$GPT2_DATA_DIR/tiktoken_cache \\
        python -m benchmarks.lora_spam --out runs/lora-spam [--pretrain-steps 400] [--seed 123]

No pretrained GPT-2 weights exist on the machines this was built on, so the base model is made here, honestly
small: the `tiny` preset (2 blocks, 64 wide, context 64) is pretrained as a language model on the TEXT of the
classification training split only (the 1,045 training messages of the balanced 70/10/20 split that
`gpt2 finetune classify` uses with the same seed; no labels, and no validation or test message). Then the
spam classifier is finetuned from that base in several ways, and from a random start for contrast:

    full        every parameter trains                          (--trainable all)
    lora        rank-8 adapters on attention, feed-forward and the new head, everything else frozen
    head        the new 2-class head only                       (--trainable head)
    last-block  the book's choice: last block + final norm + head
    and from scratch (no pretraining): full, lora

Every run is a `gpt2` command in a subprocess with one thread; the table reports test accuracy, trained and
total parameters, wall-clock and CPU seconds. results.json in --out holds everything, commands included.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

LORA = ["--lora-rank", "8", "--lora-alpha", "16"]
RUNS = [  # name, start, extra finetune flags, learning rate (None: --lr)
    ("full", "pretrained", ["--trainable", "all"], None),
    ("lora r=8", "pretrained", LORA, None),
    ("head only", "pretrained", ["--trainable", "head"], None),
    ("last block", "pretrained", ["--trainable", "last-k"], None),
    ("full", "scratch", ["--trainable", "all"], None),
    ("lora r=8", "scratch", LORA, None),
    # LoRA's few parameters often want a larger step than full finetuning: the same runs at 2x and 5x the rate
    ("lora r=8", "pretrained", LORA, 2e-3),
    ("lora r=8", "scratch", LORA, 2e-3),
    ("lora r=8", "pretrained", LORA, 5e-3),
    ("lora r=8", "scratch", LORA, 5e-3),
]


def gpt2(args: list[str]) -> tuple[float, float]:
    """Runs `python -m gpt2cli ARGS`; returns (wall seconds, CPU seconds of the child)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    # One thread per BLAS/torch pool: on a busy 2-core machine two threads wait for each other (several
    # times slower); finetune classify also gets --threads 1.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "gpt2cli", *args], check=True, env=env)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def training_text(out: Path, seed: int) -> Path:
    """The training split's messages, one per line (the split `gpt2 finetune classify --seed SEED` makes)."""
    from gptcore.tasks.classification_data import balance_classes, read_sms_spam, split_frame
    from gptcore.datasets import fetch
    frame = balance_classes(read_sms_spam(fetch("sms-spam")), seed=seed)
    train, _, _ = split_frame(frame, seed=seed)
    path = out / "sms_train_text.txt"
    path.write_text("\n".join(" ".join(text.split()) for text in train["text"]) + "\n", encoding="utf-8")
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/lora-spam")
    parser.add_argument("--pretrain-steps", type=int, default=400)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--lr", type=float, default=1e-3, help="finetuning learning rate of every run")
    parser.add_argument("--seed", type=int, default=123)
    parser.add_argument("--only", nargs="*", help="run only these finetuning runs (e.g. 'lora r=8/pretrained/lr=0.005')")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from gptcore.fileio import atomic_write_json
    results_file = out / "results.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {"runs": []}
    results.update({"machine": f"{platform.machine()}, {os.cpu_count()} cores (load average at start "
                               f"{os.getloadavg()[0]:.1f}: shared with other jobs)", "python": sys.version.split()[0]})

    text = training_text(out, args.seed)
    pretrain_dir = out / "pretrain"
    pretrain = ["train", "--model", "tiny", "--data", str(text), "--out", str(pretrain_dir), "--max-steps",
                str(args.pretrain_steps), "--batch-size", "8", "--lr", "1e-3", "--eval-interval", "50",
                "--checkpoint-interval", "0", "--seed", str(args.seed), "--device", "cpu", "--quiet"]
    checkpoint = pretrain_dir / "checkpoints" / f"step-{args.pretrain_steps:08d}"
    if not checkpoint.is_dir():          # not pretrained yet (a finished pretraining is reused)
        wall, cpu = gpt2(pretrain)
        results["pretrain"] = {"command": "gpt2 " + " ".join(pretrain), "wall_s": round(wall, 1), "cpu_s": round(cpu, 1)}
    metrics = [json.loads(line) for line in (pretrain_dir / "metrics.jsonl").read_text().splitlines()]
    last_eval = [m for m in metrics if "val_loss" in m][-1]
    results.setdefault("pretrain", {}).update({"val_loss": last_eval["val_loss"], "train_loss": last_eval.get("eval_train_loss")})

    for name, start, flags, run_lr in RUNS:
        lr = run_lr or args.lr
        key = f"{name}/{start}/lr={lr:g}"
        if args.only and key not in args.only:
            continue
        run_dir = out / key.replace(" ", "_").replace("=", "").replace("/", "-")
        init = ["--init-from", str(checkpoint)] if start == "pretrained" else ["--model", "tiny"]
        command = ["finetune", "classify", *init, *flags, "--epochs", str(args.epochs), "--lr", f"{lr:g}",
                   "--seed", str(args.seed), "--threads", "1", "--out", str(run_dir), "--quiet"]
        wall, cpu = gpt2(command)
        m = json.loads((run_dir / "metrics.json").read_text())
        row = {"run": name, "start": start, "lr": lr, "test_accuracy": m["test_accuracy"],
               "val_accuracy": m["val_accuracy"], "train_accuracy": m["train_accuracy"], "f1": m["f1"],
               "trainable_params": m["trainable_params"], "total_params": m["total_params"],
               "train_seconds": m["train_seconds"], "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
               "load_average_after": round(os.getloadavg()[0], 1), "command": "gpt2 " + " ".join(command)}
        results["runs"] = [r for r in results["runs"] if (r["run"], r["start"], r.get("lr", args.lr)) != (name, start, lr)]
        results["runs"].append(row)
        print(f"{key:<32} test {row['test_accuracy']:.2%}  trains {row['trainable_params']:>10,} of "
              f"{row['total_params']:>10,}  wall {wall:6.1f} s  cpu {cpu:6.1f} s", flush=True)
        atomic_write_json(results_file, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
