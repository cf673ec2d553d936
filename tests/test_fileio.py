"""Atomic writers, the JSON-lines log and the shared plot helper."""
import json
import math
import os

import pytest

from gptcore.fileio import append_jsonl, atomic_write_bytes, atomic_write_json, read_jsonl
from gptcore.plots import plot_curves


def test_atomic_write_replaces_and_leaves_no_temp_files(tmp_path):
    target = tmp_path / "sub" / "values.json"
    atomic_write_json(target, {"a": 1})
    atomic_write_json(target, {"a": 2, "nan": math.nan})
    assert json.loads(target.read_text().replace("NaN", "null")) == {"a": 2, "nan": None}
    assert os.listdir(target.parent) == ["values.json"]


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_atomic_write_gives_the_usual_file_mode(tmp_path, umask):
    """A file written atomically gets what open() would give it (0o666 less the umask), not mkstemp's 0o600."""
    previous = os.umask(umask)
    try:
        atomic_write_json(tmp_path / "config.json", {"a": 1})
        with open(tmp_path / "plain.txt", "w") as stream:
            stream.write("x")
    finally:
        os.umask(previous)
    mode = os.stat(tmp_path / "config.json").st_mode & 0o777
    assert mode == 0o666 & ~umask == os.stat(tmp_path / "plain.txt").st_mode & 0o777


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "model.bin"
    atomic_write_bytes(target, b"old")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["model.bin"]


def test_jsonl_round_trip_and_bad_line(tmp_path):
    log = tmp_path / "metrics.jsonl"
    append_jsonl(log, {"step": 1, "train_loss": 2.5})
    append_jsonl(log, {"step": 2, "train_loss": 2.0, "val_loss": 2.2})
    assert read_jsonl(log) == [{"step": 1, "train_loss": 2.5}, {"step": 2, "train_loss": 2.0, "val_loss": 2.2}]
    with open(log, "a") as stream:
        stream.write("{not json\n")
    with pytest.raises(ValueError, match="line 3"):
        read_jsonl(log)


def test_plot_curves_writes_a_png(tmp_path):
    path = plot_curves(tmp_path / "loss.png", [1, 2, 3, 4], {"train": [4, 3, 2, 1], "val": [None, 3.5, None, 2.5]},
                       secondary_x=("tokens seen", [64, 128, 192, 256]), title="loss")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
