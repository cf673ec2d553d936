"""Tokenizers: the book's simple ones, tiktoken's GPT-2, and our from-scratch GPT-2 BPE.

Our BPE must give tiktoken's ids token for token: on a known answer, on generated text (hypothesis)
and on two whole real corpora. The data files come from the `shared_data_dir` fixture (GPT2_DATA_DIR,
else ../shared/data, else downloaded: tests/data_source.py); tiktoken reads TIKTOKEN_CACHE_DIR when
set and otherwise its own cache, downloading into it.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gptcore.tokenizer import (ENDOFTEXT, BPEFilesUnavailableError, UNK_TOKEN, GPT2Tokenizer, SimpleTokenizerV1,
    SimpleTokenizerV2, bytes_to_unicode, get_tokenizer, merge_pair, read_bpe_merges)

KNOWN_TEXT = "Hello, do you like tea? <|endoftext|> In the sunlit terraces of someunknownPlace."
KNOWN_IDS = [15496, 11, 466, 345, 588, 8887, 30, 220, 50256, 554, 262, 4252, 18250, 8812, 2114,
             286, 617, 34680, 27271, 13]


# ---------------------------------------------------------------------------------------------
# fixtures: data and the two GPT-2 tokenizers
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def data_dir(shared_data_dir) -> Path:
    return shared_data_dir


@pytest.fixture(scope="module")
def tiktoken_enc():
    cache = os.environ.get("TIKTOKEN_CACHE_DIR")
    if cache and not Path(cache).is_dir():
        pytest.fail(f"TIKTOKEN_CACHE_DIR={cache} is not a folder. Fix: point it at a folder holding tiktoken's "
                    f"two GPT-2 files (e.g. ../shared/data/tiktoken_cache), or unset it so tiktoken downloads "
                    f"them into its default cache", pytrace=False)
    try:
        return get_tokenizer("tiktoken")
    except BPEFilesUnavailableError as error:   # no cache and no network: its message says what to set
        problem = str(error)
    pytest.fail(problem, pytrace=False)          # outside the except: the message alone, no exception chain


@pytest.fixture(scope="module")
def ours(data_dir) -> GPT2Tokenizer:
    return GPT2Tokenizer.from_data_dir(data_dir)


@pytest.fixture(scope="module")
def verdict(data_dir) -> str:
    return (data_dir / "the-verdict.txt").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def sms_text(data_dir) -> str:
    return (data_dir / "sms_spam_collection" / "SMSSpamCollection").read_text(encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# the book's simple tokenizers
# ---------------------------------------------------------------------------------------------

BOOK_SAMPLE = 'It\'s the last he painted, you know," Mrs. Gisburn said with pardonable pride.'


def test_simple_v1_roundtrip_and_book_join():
    tok = SimpleTokenizerV1.from_text(BOOK_SAMPLE)
    ids = tok.encode(BOOK_SAMPLE)
    assert [tok.int_to_str[i] for i in ids] == [
        "It", "'", "s", "the", "last", "he", "painted", ",", "you", "know", ",", '"', "Mrs", ".",
        "Gisburn", "said", "with", "pardonable", "pride", "."]
    # Like the book: no space before punctuation, but the space after the apostrophe stays.
    assert tok.decode(ids) == 'It\' s the last he painted, you know," Mrs. Gisburn said with pardonable pride.'


def test_simple_build_vocab_is_sorted_and_dense():
    vocab = SimpleTokenizerV1.build_vocab("b a -- c, a")
    assert vocab == {",": 0, "--": 1, "a": 2, "b": 3, "c": 4}


def test_simple_v1_unknown_word_names_word_and_fix():
    tok = SimpleTokenizerV1.from_text("the cat sat")
    with pytest.raises(KeyError) as info:
        tok.encode("the dog sat")
    message = str(info.value)
    assert "'dog'" in message and "SimpleTokenizerV2" in message and "build_vocab" in message


def test_simple_v2_unknown_and_endoftext():
    tok = SimpleTokenizerV2.from_text("the cat sat on the mat.")
    vocab = tok.str_to_int
    assert vocab[ENDOFTEXT] == len(vocab) - 2 and vocab[UNK_TOKEN] == len(vocab) - 1
    ids = tok.encode("the dog sat. <|endoftext|> the cat")
    assert ids[1] == vocab[UNK_TOKEN] and vocab[ENDOFTEXT] in ids
    assert tok.decode(ids) == "the <|unk|> sat. <|endoftext|> the cat"


def test_simple_v2_needs_unk_in_vocab():
    with pytest.raises(ValueError, match="build_vocab"):
        SimpleTokenizerV2(SimpleTokenizerV1.build_vocab("a b"))


# ---------------------------------------------------------------------------------------------
# GPT-2 BPE: known answer, building blocks, special tokens
# ---------------------------------------------------------------------------------------------

def test_known_answer_tiktoken(tiktoken_enc):
    assert tiktoken_enc.encode(KNOWN_TEXT, allowed_special={ENDOFTEXT}) == KNOWN_IDS
    assert tiktoken_enc.eot_id == 50256 and tiktoken_enc.n_vocab == 50257


def test_known_answer_ours(ours):
    assert ours.encode(KNOWN_TEXT, allowed_special={ENDOFTEXT}) == KNOWN_IDS
    assert ours.encode(KNOWN_TEXT, allowed_special="all") == KNOWN_IDS
    assert ours.decode(KNOWN_IDS) == KNOWN_TEXT
    assert ours.eot_id == 50256 and ours.n_vocab == 50257


def test_bytes_to_unicode_table():
    table = bytes_to_unicode()
    assert sorted(table) == list(range(256))
    assert len(set(table.values())) == 256  # one-to-one
    assert table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ" and table[ord("A")] == "A"
    assert all(ch.isprintable() and not ch.isspace() for ch in table.values())


def test_merge_pair_is_left_to_right_non_overlapping():
    assert merge_pair(["a", "a", "a", "b"], ("a", "a")) == ["aa", "a", "b"]
    assert merge_pair(["x", "y", "x", "y"], ("x", "y")) == ["xy", "xy"]


def test_bpe_steps_on_a_word(ours):
    assert ours.pre_tokenize("Hello world's  end\n\n") == ["Hello", " world", "'s", " ", " end", "\n\n"]
    assert ours.bpe("Ġhello") == ["Ġhello"]
    assert ours.encode_word(" hello") == (23748,)


@pytest.mark.parametrize("name", ["tiktoken", "bpe"])
def test_disallowed_special_raises_like_tiktoken(name, ours, tiktoken_enc):
    tok = tiktoken_enc if name == "tiktoken" else ours
    with pytest.raises(ValueError, match="disallowed special token '<\\|endoftext\\|>'"):
        tok.encode("a <|endoftext|> b")
    # explicitly allowing nothing and disallowing nothing: encoded as plain text
    assert tok.encode("a <|endoftext|>", disallowed_special=()) == [64, 1279, 91, 437, 1659, 5239, 91, 29]
    # an allowed set that does not contain a known special token still raises
    with pytest.raises(ValueError):
        tok.encode("<|endoftext|>", allowed_special={"<|other|>"})


def test_special_token_semantics_match_tiktoken(ours, tiktoken_enc):
    text = "x<|endoftext|><|endoftext|> y <|endoftext"
    for kwargs in ({"allowed_special": "all"}, {"allowed_special": {ENDOFTEXT}},
                   {"disallowed_special": ()}, {"allowed_special": set(), "disallowed_special": ()}):
        assert ours.encode(text, **kwargs) == tiktoken_enc.encode(text, **kwargs), kwargs


def test_decode_unknown_id_names_it(ours):
    with pytest.raises(KeyError, match="60000"):
        ours.decode([60000])


def test_decode_partial_utf8_is_replaced_like_tiktoken(ours, tiktoken_enc):
    ids = ours.encode("é😀")
    assert len(ids) > 2  # the emoji's four bytes take more than one token
    for cut in range(len(ids) + 1):
        assert ours.decode(ids[:cut]) == tiktoken_enc.decode(ids[:cut])
        assert ours.decode_bytes(ids[:cut]) == tiktoken_enc.decode_bytes(ids[:cut])


def test_from_files_missing_file_names_path_and_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="encoder.json.*Fix"):
        GPT2Tokenizer.from_files(tmp_path / "encoder.json", tmp_path / "vocab.bpe")


def test_get_tokenizer_unknown_name():
    with pytest.raises(ValueError, match="'tiktoken', 'bpe'"):
        get_tokenizer("sentencepiece")


def test_get_tokenizer_bpe_is_ours(data_dir, tiktoken_enc):
    tok = get_tokenizer("bpe", data_dir=data_dir)
    assert isinstance(tok, GPT2Tokenizer)
    assert tok.encode(KNOWN_TEXT, allowed_special={ENDOFTEXT}) == KNOWN_IDS


def test_tiktoken_offline_without_files_says_how_to_fix(tmp_path):
    """Empty cache + unreachable network (a proxy on a closed port): a clear error, quickly."""
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env.update(TIKTOKEN_CACHE_DIR=str(tmp_path), HTTPS_PROXY="http://127.0.0.1:9",
               HTTP_PROXY="http://127.0.0.1:9", https_proxy="http://127.0.0.1:9",
               http_proxy="http://127.0.0.1:9", NO_PROXY="", no_proxy="")
    code = "from gptcore.tokenizer import get_tiktoken_gpt2\nget_tiktoken_gpt2()"
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode != 0
    assert "BPEFilesUnavailableError" in result.stderr
    assert "not found in TIKTOKEN_CACHE_DIR" in result.stderr and str(tmp_path) in result.stderr
    assert "could not be downloaded" in result.stderr
    assert "tiktoken_cache" in result.stderr and "network" in result.stderr


# ---------------------------------------------------------------------------------------------
# ours == tiktoken: generated text
# ---------------------------------------------------------------------------------------------

emoji = st.characters(min_codepoint=0x1F300, max_codepoint=0x1FAFF)
cjk = st.characters(min_codepoint=0x4E00, max_codepoint=0x9FFF)
whitespace_runs = st.text(st.sampled_from([" ", "\n", "\t", "\r", "\u00a0", "\u3000", "\v"]),
                          min_size=1, max_size=6)
contractions = st.sampled_from(["'s", "'S", "'t", "'re", "'ve", "'m", "'ll", "'LL", "'d", "'", "''",
                                "don't", "it's ", " I'M", "they'll"])
digits = st.text(st.sampled_from("0123456789"), min_size=1, max_size=8)
words = st.sampled_from(["Hello", " world", "the", " sunlit", "terraces", "someunknownPlace",
                         "ñandú", "Straße", "ΑΒΓ", " дом", "!!", "...", "--", " ?"])
fragment = st.one_of(st.text(max_size=8), st.text(emoji, min_size=1, max_size=3),
                     st.text(cjk, min_size=1, max_size=4), whitespace_runs, contractions, digits,
                     words, st.just(ENDOFTEXT))
mixed_text = st.lists(fragment, max_size=12).map("".join)
any_text = st.one_of(st.text(), mixed_text)

# Eight times the profile's example count (200 under ci, 3200 under thorough): a tokenizer example takes
# well under a millisecond, and matching tiktoken on odd text is this file's whole point. Everything else
# (derandomize under ci, no deadline, health checks) comes from the profile the root conftest.py loads.
FUZZ = settings(max_examples=8 * settings.default.max_examples)


def test_fuzz_follows_the_hypothesis_profile():
    active = settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
    assert FUZZ.max_examples == 8 * active.max_examples
    assert FUZZ.derandomize == active.derandomize and FUZZ.deadline == active.deadline


@FUZZ
@given(text=any_text)
def test_ours_equals_tiktoken_on_generated_text(ours, tiktoken_enc, text):
    ids = ours.encode(text, allowed_special="all")
    assert ids == tiktoken_enc.encode(text, allowed_special="all")
    assert ours.decode(ids) == text
    plain = ours.encode(text, disallowed_special=())  # special token as ordinary text
    assert plain == tiktoken_enc.encode(text, disallowed_special=())
    assert ours.decode(plain) == text


@FUZZ
@given(text=st.text(min_size=1), spaces=st.text(" \t\n", min_size=1, max_size=4))
def test_trailing_whitespace_matches(ours, tiktoken_enc, text, spaces):
    text = text + spaces
    assert ours.encode_ordinary(text) == tiktoken_enc.encode_ordinary(text)


# ---------------------------------------------------------------------------------------------
# ours == tiktoken: whole real corpora
# ---------------------------------------------------------------------------------------------

def test_the_verdict_matches_tiktoken(ours, tiktoken_enc, verdict):
    ids = ours.encode(verdict)
    assert len(ids) == 5145
    assert ids == tiktoken_enc.encode(verdict)
    assert ours.decode(ids) == verdict


def test_sms_corpus_matches_tiktoken_as_one_text(ours, tiktoken_enc, sms_text):
    ids = ours.encode(sms_text)
    assert ids == tiktoken_enc.encode(sms_text)
    assert ours.decode(ids) == sms_text


def test_sms_corpus_matches_tiktoken_line_by_line(ours, tiktoken_enc, sms_text):
    lines = sms_text.splitlines()
    assert len(lines) == 5574
    mismatched = [line for line in lines if ours.encode(line) != tiktoken_enc.encode(line)]
    assert mismatched == []


# ---------------------------------------------------------------------------------------------
# the equality check can fail
# ---------------------------------------------------------------------------------------------

def test_corrupted_merge_rank_is_caught(data_dir, ours, tiktoken_enc, verdict):
    """Demote one merge (' t' = 'Ġ' + 't') to the last rank: text still round-trips, but the ids
    no longer match tiktoken's, so the comparison is what proves our BPE right."""
    merges = read_bpe_merges(data_dir / "gpt2_bpe" / "vocab.bpe")
    corrupted = [pair for pair in merges if pair != ("Ġ", "t")] + [("Ġ", "t")]
    assert len(corrupted) == len(merges)
    bad = GPT2Tokenizer(ours.encoder, corrupted)

    bad_ids = bad.encode(verdict)
    assert bad.decode(bad_ids) == verdict          # round-trip alone cannot see the bug
    assert bad_ids != tiktoken_enc.encode(verdict)  # the equality check does
    assert ours.encode(verdict) == tiktoken_enc.encode(verdict)


def test_benchmark_runs_and_prints_table(data_dir, tiktoken_enc, tmp_path, capsys):
    from benchmarks.bench_tokenizer import main

    assert main(["--data-dir", str(data_dir), "--repeats", "1", "--json", str(tmp_path / "b.json")]) == 0
    out = capsys.readouterr().out
    assert "| the-verdict | ours (cold cache) | 5,145 |" in out
    assert (tmp_path / "b.json").is_file()
