"""`gpt2 evaluate`: score a finetuned model's responses with an LLM judge running in Ollama.

    gpt2 evaluate --responses RUN/test_responses.json --judge-model llama3 [--host http://localhost:11434]
                  [--out FILE] [--timeout S] [--max-attempts N] [--num-ctx N] [--seed N] [--no-stream] [--quiet]

Reads the book's response format (a JSON list of instruction records, each with "model_response"; what
`gpt2 finetune instruct` writes), asks the judge for an integer 0-100 per record and writes
{"judge_model", "mean_score", "scores": [{"index", "score" or null, "reason"}]} to --out
(default <responses>.scores.json). See npgpt/judge.py.
"""
from __future__ import annotations

from pathlib import Path

from gpt2cli.errors import UserError, user_errors


def register(subparsers):
    parser = subparsers.add_parser("evaluate", help="score instruction responses 0-100 with an LLM judge (Ollama)")
    parser.add_argument("--responses", required=True, metavar="FILE",
                        help="JSON list of records with instruction, input, output and model_response")
    parser.add_argument("--judge-model", required=True, metavar="NAME", help="an Ollama model, e.g. llama3")
    parser.add_argument("--host", default="http://localhost:11434", help="Ollama's address (default %(default)s)")
    parser.add_argument("--out", default=None, metavar="FILE", help="scores JSON (default <responses>.scores.json)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per request (default %(default)s)")
    parser.add_argument("--max-attempts", type=int, default=3,
                        help="replies asked for per record when no integer comes back (default %(default)s)")
    parser.add_argument("--seed", type=int, default=123, help="the judge's sampling seed (default %(default)s)")
    parser.add_argument("--num-ctx", type=int, default=2048, help="the judge's context size (default %(default)s)")
    parser.add_argument("--no-stream", action="store_true", help='ask Ollama for one reply ("stream": false)')
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def default_scores_path(responses: Path) -> Path:
    """<responses>.scores.json next to the responses: run/test_responses.json -> run/test_responses.scores.json."""
    return responses.with_name(responses.stem + ".scores.json") if responses.suffix == ".json" else \
        responses.with_name(responses.name + ".scores.json")


def run(args) -> int:
    from gptcore.fileio import atomic_write_json
    from gptcore.tasks.instruct import read_records
    from gptcore.tasks.judge import JudgeError, JudgeSettings, OllamaClient, judge_responses, validate_responses

    responses = Path(args.responses)
    if not responses.is_file():
        raise UserError(f"no responses file {responses}: `gpt2 finetune instruct --out RUN` writes the model's "
                        f"answers to the test records as RUN/test_responses.json; pass that file to --responses")
    records = validate_responses(read_records(responses), source=str(responses))
    if not records:
        raise UserError(f"{responses} holds no records to judge")
    if args.timeout <= 0 or args.max_attempts < 1 or args.num_ctx < 1:
        raise UserError("--timeout, --max-attempts and --num-ctx must be positive")
    out = Path(args.out) if args.out else default_scores_path(responses)
    client = OllamaClient(args.host, timeout=args.timeout)
    with user_errors(JudgeError):
        pulled_name = client.check_model(args.judge_model)
    settings = JudgeSettings(options={"seed": args.seed, "temperature": 0, "num_ctx": args.num_ctx},
                             max_attempts=args.max_attempts, stream=not args.no_stream)
    result = judge_responses(records, client, args.judge_model, settings, progress=not args.quiet)
    result["judge_model_pulled"] = pulled_name
    result["responses"] = str(responses)
    atomic_write_json(out, result)
    mean = "n/a" if result["mean_score"] is None else f"{result['mean_score']:.2f}"
    print(f"judge {args.judge_model}: mean score {mean} over {result['n_scored']} of {len(records)} records "
          f"({result['n_failed']} failed) -> {out}")
    return 0
