"""Text-classification data (framework-free): the SMS Spam Collection, balancing, splits, padding, batches.

    frame = read_sms_spam(fetch("sms-spam"))            # 5,574 rows: label ("ham" | "spam"), text
    frame = balance_classes(frame, seed=123)            # the book's set: 747 ham + 747 spam
    train, val, test = split_frame(frame, seed=123)     # shuffled, 70% / 10% / 20%
    encoded = encode_messages(train.text, tokenizer)    # ids (N, T) padded with 50256, lengths (N,)

The file is `label<TAB>text` per line, no header. It must be read with quoting=csv.QUOTE_NONE: with
pandas' default quoting, a message that starts with `"` opens a quoted field that swallows the
following lines up to the next `"`, and 5,572 rows come back instead of 5,574.

Batches (classification_batches) hold (ids (B, T_b), lengths (B,), labels (B,)); each batch is cut to
its own longest message. That is only a speed-up: the prediction is read at the last real token and
attention is causal, so trailing padding never changes a message's logits (tests/test_classify.py
proves it), and short messages no longer pay for the longest one in the data set.
"""
from __future__ import annotations

import csv
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gptcore.data import epoch_order

SMS_LABELS = ("ham", "spam")        # class index = position: ham 0, spam 1
PAD_TOKEN_ID = 50256                # GPT-2's <|endoftext|>, the book's padding token
DEFAULT_SPLIT = (0.7, 0.1)          # train, validation; the test split is the rest (0.2)


class ClassificationDataError(ValueError):
    """A data file or message that cannot be used; the message names the file, line and fix."""


def read_sms_spam(path, labels=SMS_LABELS):
    """The SMS Spam Collection as a DataFrame with columns `label` (str), `text` (str), `line` (1-based).

    Every label must be one of `labels` and every text non-empty; otherwise ClassificationDataError
    naming the file and line. A blank line is an empty message (an error like any other), except at the
    end of the file, where blank lines are ignored.
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no data file at {path}; run `gpt2 data fetch sms-spam` or pass an existing "
                                f"--data-file")
    try:
        # skip_blank_lines=False keeps one row per line of the file, so `line` below is the file's line
        # number (pandas would otherwise drop blank lines and every later line number would be off)
        frame = pd.read_csv(path, sep="\t", header=None, names=["label", "text"], quoting=csv.QUOTE_NONE,
                            dtype=str, keep_default_na=False, encoding="utf-8", skip_blank_lines=False)
    except (UnicodeDecodeError, pd.errors.ParserError) as error:
        raise ClassificationDataError(
            f"{path} is not a UTF-8 `label<TAB>text` file ({str(error).strip()}); every line must be a label, one tab and "
            f"the message (a tab inside a message is not allowed): fix the file, or for the SMS Spam "
            f"Collection fetch it again with `gpt2 data fetch sms-spam`") from error
    frame["line"] = np.arange(1, len(frame) + 1)
    frame = _without_trailing_blank_lines(frame)
    check_messages(frame, path, labels)
    return frame


def _without_trailing_blank_lines(frame):
    """Drops the blank lines at the end of a file (editors leave them); a blank line between messages
    stays, and check_messages reports it."""
    blank = (frame["label"].str.strip() == "") & (frame["text"].str.strip() == "")
    kept = len(frame)
    while kept > 0 and blank.iloc[kept - 1]:
        kept -= 1
    return frame.iloc[:kept]


def check_messages(frame, source, labels=SMS_LABELS) -> None:
    """Refuse unknown labels, then empty texts, naming `source` and the line of the first bad row.

    A blank line (no label, no text) counts as an empty message, not as a bad label.
    """
    empty = frame["text"].str.strip() == ""
    bad_label = ~frame["label"].isin(labels) & ~(empty & (frame["label"].str.strip() == ""))
    if bad_label.any():
        row = frame[bad_label].iloc[0]
        raise ClassificationDataError(f"{source}, line {row['line']}: label {row['label']!r} is not one of "
                                      f"{', '.join(labels)} ({int(bad_label.sum())} such lines); every line "
                                      f"must be `label<TAB>text`")
    if empty.any():
        row = frame[empty].iloc[0]
        raise ClassificationDataError(f"{source}, line {row['line']}: empty message ({int(empty.sum())} such "
                                      f"lines, blank lines included); remove them or give them text")


def balance_classes(frame, seed: int = 123):
    """Undersample every class to the size of the smallest one (seeded sample without replacement).

    The classes come back one after the other in label order (ham, then spam, as in the book);
    split_frame shuffles them.
    """
    smallest = int(frame["label"].value_counts().min())
    parts = [group.sample(smallest, random_state=seed) if len(group) > smallest else group
             for _, group in frame.groupby("label", sort=True)]
    import pandas as pd
    return pd.concat(parts).reset_index(drop=True)


def split_frame(frame, fractions=DEFAULT_SPLIT, seed: int = 123):
    """(train, validation, test): the rows shuffled (seeded), then cut at int(N * train) and
    int(N * train) + int(N * validation); the test split is the rest."""
    train_fraction, val_fraction = fractions
    if not (0 < train_fraction < 1 and 0 <= val_fraction < 1 and train_fraction + val_fraction < 1):
        raise ValueError(f"split fractions {fractions} must be positive and sum to less than 1")
    shuffled = frame.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    train_end = int(len(shuffled) * train_fraction)
    val_end = train_end + int(len(shuffled) * val_fraction)
    return shuffled[:train_end], shuffled[train_end:val_end], shuffled[val_end:]


@dataclass
class EncodedMessages:
    """Right-padded token ids (N, T) int64, real lengths (N,) int64, class indices (N,) int64."""
    ids: np.ndarray
    lengths: np.ndarray
    labels: np.ndarray
    num_truncated: int = 0

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def max_length(self) -> int:
        return int(self.ids.shape[1])


def encode_texts(texts, tokenizer, *, source="message") -> list[list[int]]:
    """Token ids of every text; an empty text (or one that encodes to nothing) is an error naming it."""
    encoded = []
    for number, text in enumerate(texts, start=1):
        ids = tokenizer.encode(str(text)) if str(text).strip() else []
        if not ids:
            raise ClassificationDataError(f"{source} {number} is empty; give every message some text")
        encoded.append(ids)
    return encoded


def pad_token_ids(token_lists, max_length: int | None = None, pad_token_id: int = PAD_TOKEN_ID,
                  *, length_cap: int | None = None, what: str = "messages") -> tuple[np.ndarray, np.ndarray, int]:
    """(ids (N, T), lengths (N,), number truncated): each list right-padded with pad_token_id to T.

    T is max_length, or when None the longest list, at most length_cap (a model's context length).
    Longer lists keep their first T tokens (a warning says how many were cut).
    """
    for name, value in (("max_length", max_length), ("length_cap", length_cap)):
        if value is not None and (isinstance(value, bool) or int(value) < 1):
            raise ValueError(f"{name} must be a positive number of tokens, got {value!r}")
    if max_length is not None and length_cap is not None and max_length > length_cap:
        raise ValueError(f"max_length {max_length} exceeds the model's context length {length_cap}; "
                         f"use at most {length_cap}")
    longest = max((len(ids) for ids in token_lists), default=1)
    T = int(max_length) if max_length is not None else min(longest, length_cap or longest)
    ids = np.full((len(token_lists), T), pad_token_id, dtype=np.int64)
    lengths = np.empty(len(token_lists), dtype=np.int64)
    truncated = 0
    for row, tokens in enumerate(token_lists):
        kept = tokens[:T]
        truncated += len(tokens) > T
        ids[row, :len(kept)] = kept
        lengths[row] = len(kept)
    if truncated:
        warnings.warn(f"{truncated} of {len(token_lists)} {what} are longer than max_length={T} tokens and were "
                      f"truncated to their first {T} tokens", stacklevel=2)
    return ids, lengths, truncated


def encode_messages(frame, tokenizer, *, max_length: int | None = None, length_cap: int | None = None,
                    pad_token_id: int = PAD_TOKEN_ID, labels=SMS_LABELS, what: str = "messages") -> EncodedMessages:
    """A frame with `label` and `text` columns -> EncodedMessages, padded to max_length, or when None to
    the longest message (at most length_cap tokens); see pad_token_ids."""
    token_lists = encode_texts(frame["text"], tokenizer, source=f"{what}: message")
    ids, lengths, truncated = pad_token_ids(token_lists, max_length, pad_token_id, length_cap=length_cap,
                                            what=what)
    label_index = {label: i for i, label in enumerate(labels)}
    class_ids = np.array([label_index[label] for label in frame["label"]], dtype=np.int64)
    return EncodedMessages(ids, lengths, class_ids, truncated)


def classification_batches(data: EncodedMessages, batch_size: int, *, shuffle: bool = False, seed: int = 0,
                           epoch: int = 0, drop_last: bool = False, inputs=None):
    """Yield (ids (B, T_b), lengths (B,), labels (B,)) in gptcore.data.epoch_order; T_b = the batch's longest.

    inputs: an (N, T, ...) array to cut the batches from instead of data.ids, row for row (the frozen
    blocks' cached output (N, T, C): gptcore.engine.classification); then the batches are (inputs[rows, :T_b],
    lengths, labels).
    """
    inputs = data.ids if inputs is None else inputs
    if len(inputs) != len(data):
        raise ValueError(f"inputs has {len(inputs)} rows for {len(data)} messages")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if drop_last and len(data) < batch_size:
        raise ValueError(f"only {len(data)} messages, fewer than batch_size={batch_size}: not one batch; "
                         f"use a smaller --batch-size")
    order = epoch_order(len(data), shuffle=shuffle, seed=seed, epoch=epoch)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        if drop_last and len(rows) < batch_size:
            return
        lengths = data.lengths[rows]
        yield inputs[rows, :int(lengths.max())], lengths, data.labels[rows]


def num_batches(data: EncodedMessages, batch_size: int, drop_last: bool = False) -> int:
    return len(data) // batch_size if drop_last else -(-len(data) // batch_size)
