"""The LLM judge (npgpt/judge.py, `gpt2 evaluate`) against a fake Ollama on 127.0.0.1 (tests/fake_ollama.py):
tags and model check, streamed and non-streamed chat, deterministic options, score parsing with bounded
retries, error replies, a reply with no number, a slow reply hitting the timeout, and the CLI's output."""
import json

import pytest

from gpt2cli.main import main
from gptcore.tasks.judge import (DEFAULT_OPTIONS, JudgeError, JudgeSettings, OllamaClient, ReplyError, judge_prompt,
    judge_responses, parse_score)
from tests.fake_ollama import ChatReply, FakeOllama
from tests.http_server import free_port


def record(i, response="The fish was eaten by the cat."):
    return {"instruction": f"Rewrite sentence {i} in passive voice.", "input": "The cat ate the fish.",
            "output": "The fish was eaten by the cat.", "model_response": response}


@pytest.fixture
def ollama():
    with FakeOllama(models=["llama3:latest", "phi3:mini"]) as server:
        yield server


@pytest.mark.parametrize("reply, score", [
    ("85", 85), ("Score: 85/100", 85), ("**90**", 90), ("I would rate it 72.", 72), ("100%", 100), ("0", 0),
    ("150, so 60", 60), ("8.5 out of 10", 10), ("v2 gets 40", 40),
    ("no number here", None), ("", None), ("-5", None), ("7.5", None), ("1000", None),
])
def test_parse_score(reply, score):
    assert parse_score(reply) == score


def test_model_check_resolves_latest_and_names_pull_command(ollama):
    client = OllamaClient(ollama.host, timeout=5)
    assert client.list_models() == ["llama3:latest", "phi3:mini"]
    assert client.check_model("llama3") == "llama3:latest"
    assert client.check_model("phi3:mini") == "phi3:mini"
    with pytest.raises(JudgeError, match="`ollama pull mistral`"):
        client.check_model("mistral")
    with pytest.raises(JudgeError, match="`ollama pull phi3`"):
        client.check_model("phi3")            # phi3 means phi3:latest, which is not pulled


def test_ollama_not_running_says_how_to_start_it():
    client = OllamaClient(f"http://127.0.0.1:{free_port()}", timeout=5)
    with pytest.raises(JudgeError, match="Start it with `ollama serve`"):
        client.check_model("llama3")


def test_not_ollama_at_that_address(http_server):
    with pytest.raises(JudgeError, match="HTTP 404.*Check --host"):
        OllamaClient(http_server.base_url, timeout=5).list_models()
    http_server.add("/api/tags", b"<html>hello</html>")
    with pytest.raises(JudgeError, match="model list"):
        OllamaClient(http_server.base_url, timeout=5).list_models()


@pytest.mark.parametrize("stream", [True, False])
def test_chat_streamed_and_not(ollama, stream):
    ollama.reply = lambda payload: ChatReply("A longer reply: 77 points.", chunk=4)
    client = OllamaClient(ollama.host, timeout=5)
    text = client.chat("llama3", [{"role": "user", "content": "hi"}], stream=stream)
    assert text == "A longer reply: 77 points."
    sent = ollama.chats[-1]
    assert sent["stream"] is stream and sent["model"] == "llama3"
    assert sent["options"] == DEFAULT_OPTIONS == {"seed": 123, "temperature": 0, "num_ctx": 2048}
    assert sent["messages"] == [{"role": "user", "content": "hi"}]


def test_error_replies_become_reply_errors(ollama):
    client = OllamaClient(ollama.host, timeout=5)
    ollama.reply = lambda payload: ChatReply(status=500, error="out of memory")
    with pytest.raises(ReplyError, match="HTTP 500.*out of memory"):
        client.chat("llama3", [{"role": "user", "content": "hi"}])
    ollama.reply = lambda payload: ChatReply("abcdef", stream_error="model crashed")
    with pytest.raises(ReplyError, match="model crashed"):
        client.chat("llama3", [{"role": "user", "content": "hi"}])


def test_slow_reply_hits_the_timeout(ollama):
    ollama.reply = lambda payload: ChatReply("90", delay=1.5)
    client = OllamaClient(ollama.host, timeout=0.3)
    with pytest.raises(ReplyError, match="timeout"):
        client.chat("llama3", [{"role": "user", "content": "hi"}])


def test_prompt_holds_task_reference_and_response():
    prompt = judge_prompt(record(3, response="Fish eaten."))
    assert "Rewrite sentence 3 in passive voice." in prompt and "### Input:\nThe cat ate the fish." in prompt
    assert "The fish was eaten by the cat." in prompt and "Fish eaten." in prompt and "0" in prompt and "100" in prompt


def test_judge_records_failures_and_retries_boundedly(ollama):
    """Per record: a number at once; a number after a correction; never a number; an error reply; a timeout."""
    def reply(payload):
        content = payload["messages"][0]["content"]
        corrected = len(payload["messages"]) > 1
        if "ANSWER-A" in content:
            return ChatReply("Score: 88")
        if "ANSWER-B" in content:
            return ChatReply("61" if corrected else "It is quite good.")
        if "ANSWER-C" in content:
            return ChatReply("I cannot grade this.")
        if "ANSWER-D" in content:
            return ChatReply(status=500, error="llama runner process has terminated")
        return ChatReply("70", delay=1.0)

    ollama.reply = reply
    records = [record(i, f"ANSWER-{letter}") for i, letter in enumerate("ABCDE")]
    client = OllamaClient(ollama.host, timeout=0.4)
    result = judge_responses(records, client, "llama3", JudgeSettings(max_attempts=3), progress=False)
    scores = result["scores"]
    assert [s["index"] for s in scores] == [0, 1, 2, 3, 4]
    assert scores[0] == {"index": 0, "score": 88}
    assert scores[1] == {"index": 1, "score": 61}
    assert scores[2]["score"] is None and "no integer 0-100 in 3 replies" in scores[2]["reason"]
    assert scores[3]["score"] is None and "llama runner process has terminated" in scores[3]["reason"]
    assert scores[4]["score"] is None and "timeout" in scores[4]["reason"]
    assert result["mean_score"] == pytest.approx((88 + 61) / 2)
    assert result["judge_model"] == "llama3" and result["n_scored"] == 2 and result["n_failed"] == 3
    per_record = [sum(1 for c in ollama.chats if f"ANSWER-{x}" in c["messages"][0]["content"]) for x in "ABCDE"]
    assert per_record == [1, 2, 3, 1, 1]                      # retries only without a number, at most 3
    retry = next(c for c in ollama.chats if "ANSWER-B" in c["messages"][0]["content"] and len(c["messages"]) > 1)
    assert retry["messages"][1] == {"role": "assistant", "content": "It is quite good."}
    assert "integer" in retry["messages"][2]["content"]


def test_responses_validation_names_record_and_key(ollama):
    bad = [record(0), {k: v for k, v in record(1).items() if k != "model_response"}]
    with pytest.raises(ValueError, match="record 1: key 'model_response' is missing"):
        judge_responses(bad, OllamaClient(ollama.host), "llama3", progress=False)


def test_cli_writes_scores_next_to_responses(ollama, tmp_path, capsys):
    ollama.reply = lambda payload: ChatReply("75" if "ANSWER-OK" in payload["messages"][0]["content"] else "hmm")
    responses = tmp_path / "test_responses.json"
    responses.write_text(json.dumps([record(0, "ANSWER-OK"), record(1, "ANSWER-OK"), record(2, "ANSWER-BAD")]))
    code = main(["evaluate", "--responses", str(responses), "--judge-model", "llama3", "--host", ollama.host,
                 "--max-attempts", "2", "--no-stream", "--quiet"])
    assert code == 0
    out = tmp_path / "test_responses.scores.json"
    saved = json.loads(out.read_text())
    assert saved["judge_model"] == "llama3" and saved["judge_model_pulled"] == "llama3:latest"
    assert saved["mean_score"] == 75
    assert [s["score"] for s in saved["scores"]] == [75, 75, None]
    assert "reason" in saved["scores"][2]
    assert all(c["stream"] is False for c in ollama.chats)
    assert "mean score 75.00 over 2 of 3 records" in capsys.readouterr().out
    custom = tmp_path / "elsewhere" / "s.json"
    assert main(["evaluate", "--responses", str(responses), "--judge-model", "llama3", "--host", ollama.host,
                 "--out", str(custom), "--quiet"]) == 0
    assert json.loads(custom.read_text())["mean_score"] == 75


def test_cli_errors_are_one_line(ollama, tmp_path, capsys):
    responses = tmp_path / "r.json"
    responses.write_text(json.dumps([record(0)]))
    assert main(["evaluate", "--responses", str(responses), "--judge-model", "mistral", "--host", ollama.host]) == 2
    err = capsys.readouterr().err
    assert "ollama pull mistral" in err and len(err.strip().splitlines()) == 1
    assert main(["evaluate", "--responses", str(responses), "--judge-model", "llama3",
                 "--host", f"http://127.0.0.1:{free_port()}"]) == 2
    assert "ollama serve" in capsys.readouterr().err
    responses.write_text(json.dumps([{"instruction": "x", "input": "", "output": 3, "model_response": "y"}]))
    assert main(["evaluate", "--responses", str(responses), "--judge-model", "llama3", "--host", ollama.host]) == 2
    assert "record 0: key 'output' must be a string" in capsys.readouterr().err
    assert not (tmp_path / "r.scores.json").exists()
