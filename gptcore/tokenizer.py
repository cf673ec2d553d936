"""Tokenizers: text <-> integer ids.

Three of them, from simplest to the real one:

1. ``SimpleTokenizerV1`` / ``SimpleTokenizerV2``: the book's word-level tokenizers. A regex splits
   text into words and punctuation; a vocabulary built from one text maps them to ids. V1 fails on
   unknown words, V2 maps them to ``<|unk|>`` and knows ``<|endoftext|>``.
2. ``get_tiktoken_gpt2()``: OpenAI's GPT-2 byte-pair encoding through ``tiktoken`` (fast, in Rust).
3. ``GPT2Tokenizer``: the same GPT-2 byte-level BPE written from scratch in plain Python, to read
   how BPE works. Tests prove it gives tiktoken's ids token for token.

``get_tokenizer("tiktoken" | "bpe")`` returns either GPT-2 tokenizer behind one small interface:
``encode(text, allowed_special=...) -> list[int]``, ``decode(ids) -> str``, ``eot_id``, ``n_vocab``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import AbstractSet, Literal, Protocol

import regex  # tiktoken's dependency; the `re` module lacks \p{L} and \p{N}

from gptcore.datasets import fetch

# --------------------------------------------------------------------------------------------
# 1. The book's simple word-level tokenizers
# --------------------------------------------------------------------------------------------

# Split on punctuation, the double dash and whitespace; the capture group keeps the separators
# themselves as tokens (whitespace is dropped afterwards).
SIMPLE_SPLIT_PATTERN = re.compile(r'([,.:;?_!"()\']|--|\s)')
# On decode, words are joined with spaces; then the space before punctuation is removed again.
SIMPLE_JOIN_FIX_PATTERN = re.compile(r'\s+([,.?!"()\'])')

UNK_TOKEN = "<|unk|>"
ENDOFTEXT = "<|endoftext|>"


def simple_split(text: str) -> list[str]:
    """Split ``text`` into words and punctuation marks, whitespace removed.

    >>> simple_split("Hello, world. Is this-- a test?")
    ['Hello', ',', 'world', '.', 'Is', 'this', '--', 'a', 'test', '?']
    """
    pieces = SIMPLE_SPLIT_PATTERN.split(text)
    return [piece.strip() for piece in pieces if piece.strip()]


def simple_join(words: Iterable[str]) -> str:
    """Join words with spaces, then glue punctuation back onto the word before it."""
    return SIMPLE_JOIN_FIX_PATTERN.sub(r"\1", " ".join(words))


class SimpleTokenizerV1:
    """Word-level tokenizer with a fixed vocabulary; unknown words are an error.

    ``vocab`` maps each word or punctuation mark to its id (see ``build_vocab``).
    """

    def __init__(self, vocab: dict[str, int]):
        self.str_to_int = dict(vocab)
        self.int_to_str = {i: s for s, i in vocab.items()}

    @staticmethod
    def build_vocab(text: str) -> dict[str, int]:
        """Vocabulary of every distinct token of ``text``, ids in sorted order of the tokens."""
        return {token: i for i, token in enumerate(sorted(set(simple_split(text))))}

    @classmethod
    def from_text(cls, text: str):
        """A tokenizer whose vocabulary is built from ``text``."""
        return cls(cls.build_vocab(text))

    @property
    def n_vocab(self) -> int:
        return len(self.str_to_int)

    def encode(self, text: str) -> list[int]:
        ids = []
        for word in simple_split(text):
            if word not in self.str_to_int:
                raise KeyError(
                    f"word {word!r} is not in the vocabulary ({self.n_vocab} tokens). "
                    f"Use SimpleTokenizerV2, which maps unknown words to {UNK_TOKEN!r}, "
                    f"or rebuild the vocabulary with build_vocab(text) from a text that contains it."
                )
            ids.append(self.str_to_int[word])
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        return simple_join(self.int_to_str[i] for i in ids)


class SimpleTokenizerV2(SimpleTokenizerV1):
    """Like V1, plus two special tokens: ``<|unk|>`` for unknown words and ``<|endoftext|>``
    to separate unrelated texts. ``build_vocab`` appends both after the words of the text."""

    @staticmethod
    def build_vocab(text: str) -> dict[str, int]:
        vocab = SimpleTokenizerV1.build_vocab(text)
        for special in (ENDOFTEXT, UNK_TOKEN):
            vocab.setdefault(special, len(vocab))
        return vocab

    def __init__(self, vocab: dict[str, int]):
        if UNK_TOKEN not in vocab:
            raise ValueError(
                f"SimpleTokenizerV2 needs {UNK_TOKEN!r} in its vocabulary; build it with "
                f"SimpleTokenizerV2.build_vocab(text), which adds {ENDOFTEXT!r} and {UNK_TOKEN!r}."
            )
        super().__init__(vocab)
        self.unk_id = self.str_to_int[UNK_TOKEN]

    def encode(self, text: str) -> list[int]:
        return [self.str_to_int.get(word, self.unk_id) for word in simple_split(text)]


# --------------------------------------------------------------------------------------------
# 2. GPT-2 BPE through tiktoken
# --------------------------------------------------------------------------------------------

GPT2_EOT_ID = 50256
GPT2_N_VOCAB = 50257


class BPEFilesUnavailableError(FileNotFoundError):
    """The GPT-2 BPE files (encoder.json, vocab.bpe) are neither on disk nor downloadable."""


def _data_dir_hint() -> str:
    """Where the user's data folder is, for error messages."""
    return os.environ.get("GPT2_DATA_DIR") or "<data dir>"


def get_tiktoken_gpt2():
    """``tiktoken.get_encoding("gpt2")``, with a clear error when its files cannot be had.

    tiktoken looks for its two BPE files in ``TIKTOKEN_CACHE_DIR`` (named by the SHA-1 of their
    URL) and downloads them when they are missing.
    """
    import requests
    import tiktoken

    try:
        return tiktoken.get_encoding("gpt2")
    except (requests.exceptions.RequestException, OSError) as error:
        cache_dir = os.environ.get("TIKTOKEN_CACHE_DIR")
        where = (f"TIKTOKEN_CACHE_DIR={cache_dir!r}" if cache_dir is not None
                 else "tiktoken's default cache (TIKTOKEN_CACHE_DIR is not set)")
        raise BPEFilesUnavailableError(
            f"tiktoken's GPT-2 BPE files (encoder.json, vocab.bpe) were not found in {where} "
            f"and could not be downloaded ({type(error).__name__}: {error}). "
            f"Fix: set TIKTOKEN_CACHE_DIR to a folder holding them, e.g. "
            f"TIKTOKEN_CACHE_DIR={_data_dir_hint()}/tiktoken_cache, or connect to the network "
            f"so tiktoken can download them."
        ) from error


class TiktokenGPT2:
    """tiktoken's GPT-2 encoding behind the same small interface as ``GPT2Tokenizer``."""

    def __init__(self, encoding=None):
        self.encoding = encoding if encoding is not None else get_tiktoken_gpt2()
        self.eot_id = self.encoding.eot_token
        self.n_vocab = self.encoding.n_vocab

    def encode(self, text: str, *, allowed_special: Literal["all"] | AbstractSet[str] = frozenset(),
               disallowed_special="all") -> list[int]:
        if allowed_special != "all":
            allowed_special = set(allowed_special)
        return self.encoding.encode(
            text, allowed_special=allowed_special, disallowed_special=disallowed_special)

    def encode_ordinary(self, text: str) -> list[int]:
        return self.encoding.encode_ordinary(text)

    def decode(self, ids: Sequence[int]) -> str:
        return self.encoding.decode(list(ids))

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        return self.encoding.decode_bytes(list(ids))


# --------------------------------------------------------------------------------------------
# 3. GPT-2 byte-level BPE from scratch
# --------------------------------------------------------------------------------------------
#
# How GPT-2 turns text into ids:
#   a. pre-tokenize: a regex cuts the text into "words" (" the", "'s", " 2024", "!!", "\n\n");
#      merges never cross these boundaries, so a word's ids depend only on the word (-> cache).
#   b. bytes: each word is UTF-8 encoded; every byte is shown as one printable unicode character
#      (the bytes-to-unicode table), so any text, emoji included, is a string over 256 symbols.
#   c. merge: start from single symbols; repeatedly merge the adjacent pair with the lowest merge
#      rank (its line number in vocab.bpe: learned earlier = more frequent = lower rank), until no
#      adjacent pair has a rank.
#   d. look up: each resulting symbol string is a key of encoder.json, whose value is the id.
# Decoding reverses b and d: ids -> symbol strings -> bytes -> UTF-8 text.

# The GPT-2 pre-tokenization regex: contractions, an optional space + letters, an optional space +
# digits, an optional space + other symbols, whitespace not followed by a non-space (so a run of
# spaces leaves its last space to the next word), and any remaining whitespace.
GPT2_SPLIT_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


NO_MERGE = float("inf")  # the rank of a pair that vocab.bpe never merges


def bytes_to_unicode() -> dict[int, str]:
    """The byte -> printable character table of GPT-2's vocabulary files.

    Bytes that are already visible, non-space Latin-1 characters ('!'..'~', '¡'..'¬', '®'..'ÿ')
    stand for themselves. The other 68 (control characters, space, ...) are moved, in order, to
    chr(256), chr(257), ...: so a space shows as 'Ġ' (chr(288)) and a newline as 'Ċ' (chr(266)).
    """
    visible = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
               *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in visible}
    n_moved = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + n_moved)
            n_moved += 1
    return table


# Pre-tokenizers by the name a GGUF file gives in tokenizer.ggml.pre: text -> the words merges stay inside.
# "gpt2": GPT-2's pattern alone. "smollm": SmolLM2's original pipeline (its tokenizer.json: a Sequence of
# Digits(individual_digits=True) then ByteLevel): every digit cut off on its own first, then GPT-2's pattern
# on each piece, so " 2024" is " ", "2", "0", "2", "4" (GPT-2 alone would give " 2024").
DIGIT_PATTERN = r"\p{N}"


def gpt2_pre_tokenizer() -> Callable[[str], list[str]]:
    """GPT-2's pre-tokenizer: text -> the matches of GPT2_SPLIT_PATTERN."""
    return regex.compile(GPT2_SPLIT_PATTERN).findall


def digits_then_gpt2_pre_tokenizer() -> Callable[[str], list[str]]:
    """SmolLM2's pre-tokenizer: each digit (Unicode category N) a piece of its own, then GPT-2's pattern inside
    the rest."""
    digit = regex.compile(f"({DIGIT_PATTERN})")
    words = regex.compile(GPT2_SPLIT_PATTERN).findall

    def pre_tokenize(text: str) -> list[str]:
        pieces = []
        for piece in digit.split(text):        # the capture group keeps each digit as its own piece
            if piece:
                pieces.extend(words(piece))
        return pieces

    return pre_tokenize


PRE_TOKENIZERS: dict[str, Callable[[], Callable[[str], list[str]]]] = {
    "gpt2": gpt2_pre_tokenizer,
    "smollm": digits_then_gpt2_pre_tokenizer,
}


class GPT2Tokenizer:
    """Byte-level BPE in plain Python: GPT-2's (same ids as ``tiktoken.get_encoding("gpt2")``) by default, or
    any byte-level BPE given its vocabulary, merges and pre-tokenizer (e.g. a GGUF model's own tokenizer,
    gptcore.formats.gguf.load_gguf_tokenizer).

    encoder:        token string (in the bytes-to-unicode alphabet) -> id, from encoder.json
    merges:         the merge rules of vocab.bpe, in order; merges[r] = (left, right) has rank r
    special_tokens: special token -> id; GPT-2 has one, ``<|endoftext|>`` = 50256
    pre_tokenizer:  text -> words (default GPT-2's pattern; see PRE_TOKENIZERS); a name of PRE_TOKENIZERS
                    ("gpt2", "smollm") or a function
    eot_id:         the id that ends a text (default: the id of <|endoftext|>)
    whole_word_shortcut: a word that is itself a vocabulary entry becomes that entry without running the
                    merges (tiktoken's rule, so GPT-2's ids match it); other tokenizers (Hugging Face's)
                    always run the merges, so it is off for them.
    A byte that has no symbol in the vocabulary (a vocabulary without all 256) is dropped, as Hugging Face's
    BPE does without an unknown token.
    """

    def __init__(self, encoder: dict[str, int], merges: Sequence[tuple[str, str]],
                 special_tokens: dict[str, int] | None = None,
                 pre_tokenizer: str | Callable[[str], list[str]] | None = None, *,
                 eot_id: int | None = None, whole_word_shortcut: bool = True):
        if special_tokens is None:
            special_tokens = {ENDOFTEXT: encoder.get(ENDOFTEXT, GPT2_EOT_ID)}
        self.special_tokens = dict(special_tokens)
        # Special tokens are not mergeable words; keep them out of the ordinary vocabulary.
        self.encoder = {tok: i for tok, i in encoder.items() if tok not in self.special_tokens}
        self.decoder = {i: tok for tok, i in self.encoder.items()}
        self.merge_ranks = {pair: rank for rank, pair in enumerate(merges)}
        self.whole_word_shortcut = whole_word_shortcut

        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {ch: b for b, ch in self.byte_encoder.items()}
        if pre_tokenizer is None:
            pre_tokenizer = "gpt2"
        # The name is kept so the tokenizer can be written out again (gptcore.formats.hf_tokenizer); a function
        # passed in has none.
        self.pre_tokenizer_name = pre_tokenizer if isinstance(pre_tokenizer, str) else None
        if isinstance(pre_tokenizer, str) and pre_tokenizer not in PRE_TOKENIZERS:
            raise ValueError(f"unknown pre-tokenizer {pre_tokenizer!r}; known: {', '.join(PRE_TOKENIZERS)}")
        self.pre_tokenizer = PRE_TOKENIZERS[pre_tokenizer]() if isinstance(pre_tokenizer, str) else pre_tokenizer

        # id -> bytes, for decoding; special tokens decode to their own UTF-8 text.
        self.id_to_bytes = {i: bytes(self.byte_decoder[ch] for ch in tok)
                            for i, tok in self.decoder.items()}
        for tok, i in self.special_tokens.items():
            self.id_to_bytes[i] = tok.encode("utf-8")

        self.eot_id = eot_id if eot_id is not None else self.special_tokens.get(ENDOFTEXT)
        self.n_vocab = max(self.id_to_bytes) + 1
        self.cache: dict[str, tuple[int, ...]] = {}  # pre-tokenized word -> its ids
        self.max_cache_size = 100_000

    # ---- loading ----------------------------------------------------------------------------

    @classmethod
    def from_files(cls, encoder_json: str | os.PathLike, vocab_bpe: str | os.PathLike):
        """Load OpenAI's ``encoder.json`` (token -> id) and ``vocab.bpe`` (merges, one per line)."""
        encoder_json, vocab_bpe = Path(encoder_json), Path(vocab_bpe)
        for path in (encoder_json, vocab_bpe):
            if not path.is_file():
                raise FileNotFoundError(
                    f"GPT-2 BPE file {str(path)!r} does not exist. Fix: pass the paths of "
                    f"encoder.json and vocab.bpe (e.g. {_data_dir_hint()}/gpt2_bpe/...), or use "
                    f"GPT2Tokenizer.from_data_dir() to find or download them."
                )
        encoder = json.loads(encoder_json.read_text(encoding="utf-8"))
        return cls(encoder, read_bpe_merges(vocab_bpe))

    @classmethod
    def from_data_dir(cls, data_dir: str | os.PathLike | None = None):
        """Find (or download) gpt2_bpe/encoder.json and vocab.bpe through ``gptcore.datasets.fetch``.

        data_dir: explicit folder, else env GPT2_DATA_DIR, else the default cache (see fetch).
        """
        folder = _find_gpt2_bpe_folder(data_dir)
        return cls.from_files(folder / "encoder.json", folder / "vocab.bpe")

    # ---- step a: pre-tokenization -------------------------------------------------------------

    def pre_tokenize(self, text: str) -> list[str]:
        """Cut ordinary text (no special tokens) into the words that BPE merges within."""
        return self.pre_tokenizer(text)

    # ---- steps b-d: one word to ids -----------------------------------------------------------

    def bpe(self, symbols: str) -> list[str]:
        """Merge a word, written in the bytes-to-unicode alphabet, into its BPE tokens.

        Greedy: always merge the adjacent pair with the lowest rank, everywhere it occurs, then
        look again. E.g. ' hello' = 'Ġhello' -> ... -> ['Ġhello'].
        """
        if self.whole_word_shortcut and symbols in self.encoder:
            # A whole word that is one vocabulary entry: its merges would rebuild exactly that
            # entry, so skip them (tiktoken takes the same shortcut; most common words hit it).
            return [symbols]
        ranks = self.merge_ranks
        parts = list(symbols)
        while len(parts) > 1:
            rank, best = min((ranks.get(pair, NO_MERGE), pair) for pair in zip(parts, parts[1:]))
            if rank == NO_MERGE:
                break  # no adjacent pair can be merged any more
            parts = merge_pair(parts, best)
        return parts

    def encode_word(self, word: str) -> tuple[int, ...]:
        """ids of one pre-tokenized word, memoized: real text repeats its words a lot."""
        ids = self.cache.get(word)
        if ids is None:
            symbols = "".join(self.byte_encoder[b] for b in word.encode("utf-8"))
            # Bytes without a vocabulary symbol are dropped before merging (Hugging Face's BPE with no
            # unknown token does the same); GPT-2's vocabulary has all 256, so nothing is dropped there.
            symbols = "".join(ch for ch in symbols if ch in self.encoder)
            ids = tuple(self.encoder[token] for token in self.bpe(symbols)) if symbols else ()
            if len(self.cache) >= self.max_cache_size:
                self.cache.clear()  # keep memory bounded on endless streams of new words
            self.cache[word] = ids
        return ids

    # ---- public API ---------------------------------------------------------------------------

    def encode_ordinary(self, text: str) -> list[int]:
        """Encode treating special tokens as plain text."""
        text = _fix_surrogates(text)
        ids: list[int] = []
        for word in self.pre_tokenize(text):
            ids.extend(self.encode_word(word))
        return ids

    def encode(self, text: str, *,
               allowed_special: Literal["all"] | AbstractSet[str] = frozenset(),
               disallowed_special: Literal["all"] | AbstractSet[str] | Sequence[str] = "all",
               ) -> list[int]:
        """Encode ``text``; same semantics as tiktoken's ``Encoding.encode``.

        allowed_special:    special tokens in the text that become their id ("all" or a set).
        disallowed_special: special tokens whose presence in the text is an error; "all" means
                            every special token not allowed; ``()`` encodes them as plain text.
        By default any special token in the text raises ValueError: text from users should not
        be able to inject an <|endoftext|> by accident.
        """
        if allowed_special == "all":
            allowed_special = self.special_tokens.keys()
        if disallowed_special == "all":
            disallowed_special = self.special_tokens.keys() - set(allowed_special)
        if disallowed_special:
            match = _special_token_regex(disallowed_special).search(text)
            if match:
                raise_disallowed_special_token(match.group())

        allowed = [tok for tok in allowed_special if tok in self.special_tokens]
        if not allowed:
            return self.encode_ordinary(text)
        # Cut the text at allowed special tokens; the pieces between them are ordinary text.
        ids: list[int] = []
        start = 0
        for match in _special_token_regex(allowed).finditer(text):
            ids.extend(self.encode_ordinary(text[start:match.start()]))
            ids.append(self.special_tokens[match.group()])
            start = match.end()
        ids.extend(self.encode_ordinary(text[start:]))
        return ids

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The raw bytes of ``ids`` (a token may hold part of a multi-byte character)."""
        try:
            return b"".join(self.id_to_bytes[i] for i in ids)
        except KeyError as error:
            raise KeyError(
                f"token id {error.args[0]!r} is not in the GPT-2 vocabulary "
                f"(valid ids are 0..{self.n_vocab - 1}); check where these ids came from."
            ) from None

    def decode(self, ids: Iterable[int], *, skip_special: bool = False) -> str:
        """Text of ``ids``; bytes that are not valid UTF-8 become U+FFFD, as in tiktoken.
        skip_special: leave the special tokens out (a chat answer without <|im_end|>)."""
        if skip_special:
            specials = set(self.special_tokens.values())
            ids = [i for i in ids if i not in specials]
        return self.decode_bytes(ids).decode("utf-8", errors="replace")


def merge_pair(parts: list[str], pair: tuple[str, str]) -> list[str]:
    """Replace every non-overlapping occurrence of ``pair``, left to right, by its concatenation.

    merge_pair(['a', 'a', 'a', 'b'], ('a', 'a')) -> ['aa', 'a', 'b']
    """
    left, right = pair
    merged = []
    i = 0
    while i < len(parts):
        if i + 1 < len(parts) and parts[i] == left and parts[i + 1] == right:
            merged.append(left + right)
            i += 2
        else:
            merged.append(parts[i])
            i += 1
    return merged


def read_bpe_merges(vocab_bpe: str | os.PathLike) -> list[tuple[str, str]]:
    """The merges of a vocab.bpe file: a '#version' header line, then one 'left right' per line."""
    lines = Path(vocab_bpe).read_text(encoding="utf-8").split("\n")
    merges = []
    for line_number, line in enumerate(lines[1:], start=2):
        if not line:
            continue
        pair = line.split()
        if len(pair) != 2:
            raise ValueError(
                f"{str(vocab_bpe)!r} line {line_number}: expected a merge 'left right', got "
                f"{line!r}. Fix: use OpenAI's GPT-2 vocab.bpe (see data/README)."
            )
        merges.append((pair[0], pair[1]))
    return merges


def _special_token_regex(tokens: Iterable[str]) -> re.Pattern:
    # Longest first, so that a token that is a prefix of another cannot shadow it.
    alternatives = sorted(tokens, key=len, reverse=True)
    return re.compile("|".join(re.escape(tok) for tok in alternatives))


def raise_disallowed_special_token(token: str):
    raise ValueError(
        f"Encountered text corresponding to disallowed special token {token!r}.\n"
        f"If you want this text to be encoded as a special token, pass it to `allowed_special`, "
        f"e.g. `allowed_special={{{token!r}, ...}}`.\n"
        f"If you want it encoded as normal text, pass `disallowed_special=()` (or leave this "
        f"token out of `disallowed_special`)."
    )


def _fix_surrogates(text: str) -> str:
    """Lone surrogates cannot be UTF-8 encoded; tiktoken replaces them by U+FFFD. So do we."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def _find_gpt2_bpe_folder(data_dir) -> Path:
    """The folder with encoder.json and vocab.bpe, through the project's downloader (gptcore.datasets)."""
    return Path(fetch("gpt2-bpe", data_dir=data_dir))


# --------------------------------------------------------------------------------------------
# One interface for pipelines
# --------------------------------------------------------------------------------------------


class Tokenizer(Protocol):
    eot_id: int
    n_vocab: int

    def encode(self, text: str, *, allowed_special=...) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


TOKENIZER_NAMES = ("tiktoken", "bpe")


def get_tokenizer(name: str = "tiktoken", data_dir: str | os.PathLike | None = None) -> Tokenizer:
    """GPT-2 tokenizer by name: "tiktoken" (fast, Rust) or "bpe" (ours, plain Python).

    Both give the same ids; both have encode(text, allowed_special=...), decode(ids), eot_id,
    n_vocab. data_dir is only used by "bpe" (where gpt2_bpe/ lives).
    """
    if name == "tiktoken":
        return TiktokenGPT2()
    if name == "bpe":
        return GPT2Tokenizer.from_data_dir(data_dir)
    raise ValueError(f"unknown tokenizer {name!r}; expected one of {TOKENIZER_NAMES}.")
