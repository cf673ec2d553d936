"""An LLM judge through Ollama's REST API: score each model response 0-100 against the reference output.

    client = OllamaClient("http://localhost:11434", timeout=120)
    client.check_model("llama3")                     # reachable (GET /api/tags) and pulled, else a clear error
    result = judge_responses(records, client, "llama3")   # {"judge_model", "mean_score", "scores": [...]}

The records are the book's response format: a JSON list of instruction records, each with the finetuned
model's answer under "model_response" (what `gpt2 finetune instruct` writes). For every record the judge
gets the Alpaca prompt of the task, the reference output and the model's answer, and is asked for one
integer from 0 to 100. Requests are deterministic: options seed, temperature 0 and a fixed num_ctx.

Replies are parsed for the first integer in 0..100 ("85", "Score: 85/100", "I'd give it 85."). When none
comes back the conversation continues with a short correction, a bounded number of times; a record whose
judge never gives a number, times out or gets an error reply is recorded with score null and the reason,
and the run goes on. The mean is over the scored records.

Ollama's API (https://github.com/ollama/ollama/blob/main/docs/api.md), the parts used here:
    GET  /api/tags  -> {"models": [{"name": "llama3:latest", ...}, ...]}
    POST /api/chat  {"model", "messages": [{"role", "content"}], "stream": bool, "options": {...}}
         stream true:  NDJSON lines {"message": {"role": "assistant", "content": "<piece>"}, "done": false},
                       ..., then {"done": true, ...}; an error mid-stream is a line {"error": "..."}
         stream false: one JSON object {"message": {...}, "done": true}
         errors: an HTTP status >= 400 with {"error": "..."}
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass

import requests
from tqdm.auto import tqdm

from gptcore.tasks.instruct import RECORD_KEYS, RESPONSE_KEY, format_input, validate_records

DEFAULT_HOST = "http://localhost:11434"
DEFAULT_OPTIONS = {"seed": 123, "temperature": 0, "num_ctx": 2048}
DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_TIMEOUT = 120.0
CORRECTION = "Reply with a single integer from 0 to 100 and nothing else."


class JudgeError(RuntimeError):
    """The judge cannot run at all (Ollama unreachable, model missing); the message says how to fix it."""


class ReplyError(RuntimeError):
    """One request failed (timeout, error reply, broken stream): recorded for its record, the run goes on."""


# ---------------------------------------------------------------------------------------------------
# Ollama client
# ---------------------------------------------------------------------------------------------------

def _ollama_process_hint() -> str:
    """A hint from the process table (psutil): whether an `ollama` process is running on this machine."""
    try:
        import psutil
        running = any((p.info.get("name") or "").lower().startswith("ollama")
                      for p in psutil.process_iter(["name"]))
    except Exception:  # psutil missing or the process table unreadable: no hint, not an error
        return ""
    return (" (an ollama process is running here: is it listening on another host/port?)" if running
            else " (no ollama process is running on this machine)")


class OllamaClient:
    """The two endpoints the judge needs, with requests; `timeout` is seconds per request (connect and read)."""

    def __init__(self, host: str = DEFAULT_HOST, timeout: float = DEFAULT_TIMEOUT, session=None):
        if not re.match(r"^https?://", host):
            raise ValueError(f"--host must start with http:// or https://, got {host!r} "
                             f"(Ollama's default is {DEFAULT_HOST})")
        self.host = host.rstrip("/")
        self.timeout = timeout
        self.session = session or requests.Session()

    def list_models(self) -> list[str]:
        """Names of the pulled models (GET /api/tags); JudgeError with how to start Ollama when unreachable."""
        url = f"{self.host}/api/tags"
        try:
            response = self.session.get(url, timeout=self.timeout)
        except requests.ConnectionError as error:
            raise JudgeError(
                f"cannot reach Ollama at {self.host}{_ollama_process_hint()}. Start it with `ollama serve` "
                f"(or open the Ollama app; install it from https://ollama.com), or pass --host where it "
                f"listens. ({type(error).__name__})") from error
        except requests.Timeout as error:
            raise JudgeError(f"Ollama at {self.host} did not answer GET /api/tags within {self.timeout:g} s; "
                             f"is it overloaded? Try again or raise --timeout") from error
        if response.status_code != 200:
            raise JudgeError(f"Ollama at {self.host} answered GET /api/tags with HTTP {response.status_code} "
                             f"({_error_text(response)}); is that really Ollama? Check --host")
        try:
            models = response.json()["models"]
            return [model["name"] for model in models]
        except (ValueError, KeyError, TypeError) as error:
            raise JudgeError(f"{url} did not return Ollama's model list ({response.text[:80]!r}); is that "
                             f"really Ollama? Check --host") from error

    def check_model(self, model: str) -> str:
        """The pulled model's full name for `model` ("llama3" -> "llama3:latest"); JudgeError if not pulled."""
        names = self.list_models()
        wanted = [model] if ":" in model else [model, f"{model}:latest"]
        for name in names:
            if name in wanted:
                return name
        available = ", ".join(names) if names else "none"
        raise JudgeError(f"the judge model {model!r} is not pulled in Ollama at {self.host} (pulled: {available}); "
                         f"run `ollama pull {model}` first")

    def chat(self, model: str, messages: list[dict], *, options: dict | None = None, stream: bool = True) -> str:
        """The assistant's reply text to `messages` (POST /api/chat); ReplyError on any failure."""
        payload = {"model": model, "messages": messages, "stream": stream,
                   "options": dict(DEFAULT_OPTIONS if options is None else options)}
        try:
            with self.session.post(f"{self.host}/api/chat", json=payload, stream=stream,
                                   timeout=self.timeout) as response:
                if response.status_code != 200:
                    raise ReplyError(f"HTTP {response.status_code} from /api/chat: {_error_text(response)}")
                if stream:
                    return _read_stream(response)
                return _message_content(_parse_json(response.text))
        except requests.Timeout as error:
            raise ReplyError(f"no reply within the {self.timeout:g} s timeout") from error
        except requests.RequestException as error:
            raise ReplyError(f"request failed: {type(error).__name__}: {error}") from error


def _error_text(response) -> str:
    try:
        return str(response.json().get("error", response.text[:200]))
    except ValueError:
        return response.text[:200] or "no body"


def _parse_json(line: str) -> dict:
    try:
        value = json.loads(line)
    except json.JSONDecodeError as error:
        raise ReplyError(f"the reply is not JSON: {line[:80]!r}") from error
    if not isinstance(value, dict):
        raise ReplyError(f"the reply is not a JSON object: {line[:80]!r}")
    if "error" in value:
        raise ReplyError(f"Ollama error: {value['error']}")
    return value


def _message_content(value: dict) -> str:
    message = value.get("message")
    if not isinstance(message, dict) or not isinstance(message.get("content", ""), str):
        raise ReplyError(f"the reply has no message content: {json.dumps(value)[:80]}")
    return message.get("content", "")


def _read_stream(response) -> str:
    """Joins the content pieces of a streamed NDJSON reply until the line with "done": true."""
    pieces = []
    for line in response.iter_lines(decode_unicode=True):
        if not line:
            continue
        value = _parse_json(line)
        pieces.append(_message_content(value) if "message" in value else "")
        if value.get("done"):
            return "".join(pieces)
    raise ReplyError("the stream ended before a line with \"done\": true")


# ---------------------------------------------------------------------------------------------------
# prompts and parsing
# ---------------------------------------------------------------------------------------------------

def judge_prompt(record: dict) -> str:
    """The question for one record: the task (Alpaca prompt), the reference answer, the answer to grade."""
    return (f"You grade answers to instructions.\n\nThe task:\n{format_input(record)}\n\n"
            f"A correct answer:\n{record['output']}\n\n"
            f"The answer to grade:\n{record[RESPONSE_KEY]}\n\n"
            f"Score the answer to grade from 0 (useless or wrong) to 100 (as good as the correct answer). "
            f"Reply with the integer only.")


_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?!\w)")     # a whole token: not inside "v2", "1st"


def parse_score(reply: str) -> int | None:
    """The first whole number in 0..100 in the reply ("85", "Score: 85/100", "**90**"), else None.

    Decimals ("8.5") and out-of-range numbers ("150", "-3") are not scores; a later number may be.
    """
    for match in _NUMBER.finditer(reply):
        token = match.group(0)
        if "." in token or token.startswith("-"):
            continue
        value = int(token)
        if 0 <= value <= 100:
            return value
    return None


# ---------------------------------------------------------------------------------------------------
# the judge
# ---------------------------------------------------------------------------------------------------

@dataclass
class JudgeSettings:
    options: dict = None
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    stream: bool = True

    def __post_init__(self):
        if self.options is None:
            self.options = dict(DEFAULT_OPTIONS)
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {self.max_attempts}")


def score_record(record: dict, client: OllamaClient, model: str, settings: JudgeSettings) -> dict:
    """{"score": int} or {"score": None, "reason": str} for one record, after at most max_attempts replies."""
    messages = [{"role": "user", "content": judge_prompt(record)}]
    reply = ""
    for attempt in range(1, settings.max_attempts + 1):
        try:
            reply = client.chat(model, messages, options=settings.options, stream=settings.stream)
        except ReplyError as error:
            return {"score": None, "reason": f"attempt {attempt}: {error}"}
        score = parse_score(reply)
        if score is not None:
            return {"score": score}
        # Same seed and temperature 0 would repeat the reply: continue the conversation with a correction.
        messages += [{"role": "assistant", "content": reply}, {"role": "user", "content": CORRECTION}]
    return {"score": None, "reason": f"no integer 0-100 in {settings.max_attempts} replies; last reply: {reply[:120]!r}"}


def validate_responses(records, source: str = "the responses") -> list[dict]:
    """The book's response format: instruction records that also hold a string "model_response"."""
    return validate_records(records, RECORD_KEYS + (RESPONSE_KEY,), source=source)


def judge_responses(records: list[dict], client: OllamaClient, model: str, settings: JudgeSettings | None = None,
                    *, progress: bool = True) -> dict:
    """Scores every record; returns {"judge_model", "mean_score", "scores": [{"index", "score"[, "reason"]}], ...}."""
    settings = settings or JudgeSettings()
    records = validate_responses(records)
    scores = []
    bar = tqdm(records, desc=f"judging with {model}", unit="record", disable=not progress)
    for index, record in enumerate(bar):
        outcome = score_record(record, client, model, settings)
        entry = {"index": index, "score": outcome["score"]}
        if outcome["score"] is None:
            entry["reason"] = outcome["reason"]
        scores.append(entry)
        scored = [s["score"] for s in scores if s["score"] is not None]
        if scored:
            bar.set_postfix(mean=f"{sum(scored) / len(scored):.1f}", failed=len(scores) - len(scored))
    scored = [s["score"] for s in scores if s["score"] is not None]
    return {"judge_model": model,
            "mean_score": sum(scored) / len(scored) if scored else None,
            "n_scored": len(scored), "n_failed": len(scores) - len(scored),
            "host": client.host, "options": settings.options, "scores": scores}
