"""`gpt2 tokenize`, run as a user runs it: the from-scratch BPE's ids equal tiktoken's, --decode, stdin, errors."""
from __future__ import annotations

import json
import subprocess

import pytest

from gptcore.tokenizer import get_tiktoken_gpt2
from tests.test_cli import gpt2_script

TEXTS = [
    "Hello world",
    "Every effort moves you",
    "  leading spaces,\ttabs\n\nnew lines\r\n and 123 numbers!!",
    "I'm sure they'll say it's done; we've seen it.",
    "naïve café, 日本語, Ελληνικά, emoji 🤖👍🏽",
]


def tokenize(*args, stdin: str | bytes | None = None) -> subprocess.CompletedProcess:
    """`gpt2 tokenize ARGS` with `stdin` (text as UTF-8, or raw bytes); stdout and stderr as UTF-8 text."""
    data = stdin.encode("utf-8") if isinstance(stdin, str) else stdin
    result = subprocess.run([gpt2_script(), "tokenize", *args], input=data, capture_output=True, timeout=120)
    return subprocess.CompletedProcess(result.args, result.returncode, result.stdout.decode("utf-8"),
                                       result.stderr.decode("utf-8"))


def printed_ids(result: subprocess.CompletedProcess) -> list[int]:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


@pytest.fixture(scope="module")
def tiktoken_gpt2():
    return get_tiktoken_gpt2()


@pytest.mark.parametrize("text", TEXTS)
def test_ids_are_tiktokens_and_decode_gives_the_text_back(text, tiktoken_gpt2):
    ids = printed_ids(tokenize(text))
    assert ids == tiktoken_gpt2.encode(text)
    decoded = tokenize("--decode", json.dumps(ids))
    assert decoded.returncode == 0, decoded.stderr
    assert decoded.stdout == text + "\n"                     # the text, then one newline


def test_text_from_stdin_as_it_is(tiktoken_gpt2):
    text = "first line\r\nsecond line\n\n"                   # newlines kept byte for byte
    assert printed_ids(tokenize(stdin=text)) == tiktoken_gpt2.encode(text)
    assert printed_ids(tokenize("-", stdin=text)) == tiktoken_gpt2.encode(text)


def test_decode_reads_the_printed_list_from_stdin():
    printed = tokenize(TEXTS[2])
    decoded = tokenize("--decode", stdin=printed.stdout)     # gpt2 tokenize TEXT | gpt2 tokenize --decode
    assert decoded.returncode == 0, decoded.stderr
    assert decoded.stdout == TEXTS[2] + "\n"


def test_endoftext_needs_allow_special(tiktoken_gpt2):
    text = "one story<|endoftext|>another"
    refused = tokenize(text)
    assert refused.returncode == 2 and refused.stdout == ""
    assert "special token <|endoftext|>" in refused.stderr and "--allow-special" in refused.stderr
    ids = printed_ids(tokenize("--allow-special", text))
    assert ids == tiktoken_gpt2.encode(text, allowed_special={"<|endoftext|>"}) and 50256 in ids
    assert tokenize("--decode", json.dumps(ids)).stdout == text + "\n"


@pytest.mark.parametrize("given, problem, fix", [
    ("[15496, 995", "is not valid JSON", "give a JSON list of token ids such as [15496, 995]"),
    ("15496", "the input is a number in JSON, not a list", "give a JSON list of token ids"),
    ('{"ids": [1]}', "the input is an object in JSON, not a list", "give a JSON list of token ids"),
    ('[15496, "995"]', 'the item at index 1, "995", is not an integer token id', "without quotes or decimals"),
    ("[15496, 99.5]", "the item at index 1, 99.5, is not an integer token id", "without quotes or decimals"),
    ("[true]", "the item at index 0, true, is not an integer token id", "whole numbers"),
    ("[15496, 50257]", "token id 50257 (at index 1) is out of range: GPT-2's ids are 0..50256",
     "check where these ids came from"),
    ("[-1]", "token id -1 (at index 0) is out of range", "0..50256"),
])
def test_decode_errors_name_the_problem_and_the_fix(given, problem, fix):
    result = tokenize("--decode", given)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("gpt2 tokenize: error: --decode: ")
    assert problem in result.stderr and fix in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_stdin_that_is_not_utf8_is_refused():
    result = tokenize(stdin=b"caf\xe9\n")                     # Latin-1, not UTF-8
    assert result.returncode == 2
    assert "stdin is not UTF-8 text (byte 0xe9 at offset 3)" in result.stderr and "iconv" in result.stderr
