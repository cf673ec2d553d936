"""NumPy train steps of one model in a fresh process, each step's time printed: the A/B yardstick for a change.

    python benchmarks/train_steps.py                                   # SmolLM2-135M shape, B=4, T=256, 4 steps
    python benchmarks/train_steps.py --model gpt2-small --steps 6

Random weights (npgpt.model.init_params: the time does not depend on the values), random token ids, AdamW;
the first step (the optimizer's state allocated, the allocator warming up) is run but not printed. To compare
two checkouts of the code, run it from each in turn with farm-bench, which alternates the two processes and
takes the ratio pair by pair:

    farm-bench -n 4 --warmup 0 --timeout 600 \\
        --vs "sh -c 'PYTHONPATH=/path/to/before exec python benchmarks/train_steps.py >>/tmp/before.txt'" \\
        -- sh -c 'PYTHONPATH=/path/to/after exec python benchmarks/train_steps.py >>/tmp/after.txt'

(how this session's SwiGLU and attention changes were measured: 0.978 and 0.976 of the whole process's time).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

if __package__ in (None, ""):                      # run as `python benchmarks/train_steps.py`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

import npgpt.model  # noqa: E402
from gptcore.config import get_config  # noqa: E402
from npgpt.optim import AdamW  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m", help="a preset (default smollm2-135m)")
    parser.add_argument("--steps", type=int, default=4, help="train steps, the first not printed (default 4)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--layout", choices=npgpt.model.LAYOUTS, default="fast",
                        help="the parameters' memory layout (npgpt.model.init_params; default fast)")
    args = parser.parse_args(argv)
    if args.steps < 2 or args.batch_size < 1 or args.seq_len < 1:
        parser.error("--steps must be at least 2, --batch-size and --seq-len at least 1")
    config = get_config(args.model).replace(drop_rate=0.0)
    if args.seq_len > config.context_length:
        parser.error(f"--seq-len {args.seq_len} is longer than {args.model}'s context ({config.context_length})")
    params = npgpt.model.init_params(config, seed=0, layout=args.layout)
    rng = np.random.default_rng(0)
    idx = rng.integers(0, config.vocab_size, (args.batch_size, args.seq_len))
    targets = rng.integers(0, config.vocab_size, (args.batch_size, args.seq_len))
    optimizer = AdamW()
    for step in range(args.steps):
        start = time.perf_counter()
        _, grads = npgpt.model.loss_and_grads(params, idx, targets, config)
        optimizer.step(params, grads)
        if step:
            print(f"step {step}: {time.perf_counter() - start:.3f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
