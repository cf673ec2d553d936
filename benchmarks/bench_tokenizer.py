"""Encoding speed: our plain-Python GPT-2 BPE against tiktoken (Rust).

    GPT2_DATA_DIR=/path/to/data TIKTOKEN_CACHE_DIR=$GPT2_DATA_DIR/tiktoken_cache \\
        python -m benchmarks.bench_tokenizer [--repeats 5] [--json out.json]

Encodes the-verdict.txt and the whole SMS Spam Collection (as one text) with both tokenizers,
takes the best of several repeats, and prints a markdown table of tokens/s. "ours (cold)" clears
the per-word cache before every repeat (a first pass over new text); "ours (warm)" reuses it (a
second pass, e.g. the next epoch). The ratio column is tiktoken's time divided by ours: how many
times slower ours is.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

CORPORA = {
    "the-verdict": "the-verdict.txt",
    "sms-spam (one text)": "sms_spam_collection/SMSSpamCollection",
}


def best_time(encode, text: str, repeats: int, before_each=None) -> tuple[float, int]:
    """Best wall time of `repeats` calls of encode(text), and the number of tokens it made."""
    best, n_tokens = float("inf"), 0
    for _ in range(repeats):
        if before_each is not None:
            before_each()
        start = time.perf_counter()
        n_tokens = len(encode(text))
        best = min(best, time.perf_counter() - start)
    return best, n_tokens


def run_benchmark(data_dir: Path, repeats: int) -> list[dict]:
    from gptcore.tokenizer import GPT2Tokenizer, get_tiktoken_gpt2

    ours = GPT2Tokenizer.from_data_dir(data_dir)
    theirs = get_tiktoken_gpt2()
    rows = []
    for corpus, relative_path in CORPORA.items():
        text = (data_dir / relative_path).read_text(encoding="utf-8")
        if ours.encode(text) != theirs.encode(text):
            raise AssertionError(f"ours and tiktoken disagree on {corpus}; run the tests")
        t_tiktoken, n_tokens = best_time(theirs.encode, text, repeats)
        t_cold, _ = best_time(ours.encode, text, repeats, before_each=ours.cache.clear)
        t_warm, _ = best_time(ours.encode, text, repeats)
        for name, seconds in (("tiktoken", t_tiktoken), ("ours (cold cache)", t_cold),
                              ("ours (warm cache)", t_warm)):
            rows.append({"corpus": corpus, "tokenizer": name, "bytes": len(text.encode("utf-8")),
                         "tokens": n_tokens, "seconds": seconds,
                         "tokens_per_s": n_tokens / seconds,
                         "times_slower_than_tiktoken": seconds / t_tiktoken})
    return rows


def markdown_table(rows: list[dict]) -> str:
    lines = ["| corpus | tokenizer | tokens | ms | tokens/s | ours/tiktoken time |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    for row in rows:
        lines.append(f"| {row['corpus']} | {row['tokenizer']} | {row['tokens']:,} | "
                     f"{row['seconds'] * 1e3:.1f} | {row['tokens_per_s']:,.0f} | "
                     f"{row['times_slower_than_tiktoken']:.1f}x |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=os.environ.get("GPT2_DATA_DIR"),
                        help="folder holding the-verdict.txt etc. (default: $GPT2_DATA_DIR)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    if not args.data_dir:
        parser.error("no data folder: pass --data-dir or set GPT2_DATA_DIR")

    rows = run_benchmark(Path(args.data_dir), args.repeats)
    print(f"best of {args.repeats}, {platform.python_implementation()} "
          f"{platform.python_version()}, {platform.machine()}\n")
    print(markdown_table(rows))
    if args.json:
        tmp = args.json.with_suffix(args.json.suffix + ".tmp")
        tmp.write_text(json.dumps(rows, indent=2))
        os.replace(tmp, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
