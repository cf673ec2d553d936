"""The run folder every training loop writes (NumPy, torch, DDP, finetuning), and its small helpers.

    <run>/config.json            the run's settings (model, data, optimisation, backend, device, ...)
    <run>/metrics.jsonl          one JSON object per logged step: step, train_loss, lr, tokens_seen, ...;
                                 val_loss / val_perplexity / eval_train_loss at evaluation steps
    <run>/metrics.csv            the same numbers as a table (columns CSV_COLUMNS + the run's extras)
    <run>/loss.png               train/val loss against steps, tokens seen on the top axis
    <run>/checkpoints/step-00000100/   checkpoints (gptcore.formats.checkpoint format) with the training state;
                                 the newest `keep` are kept

Framework-free: torchgpt.train and npgpt.train both use it. Every file is written atomically, and
metrics.jsonl is appended line by line (a crash loses at most the line being written).
"""
from __future__ import annotations

import csv
import io
import math
import os
import re
import shutil
import signal
import threading
from pathlib import Path

from gptcore.fileio import append_jsonl, atomic_write_json, atomic_write_text, read_jsonl
from gptcore.formats.checkpoint import is_checkpoint
from gptcore.plots import plot_curves

RUN_CONFIG_FILE = "config.json"
METRICS_JSONL = "metrics.jsonl"
METRICS_CSV = "metrics.csv"
LOSS_PLOT = "loss.png"
CHECKPOINTS_DIR = "checkpoints"
FINAL_MODEL_DIR = "model"      # where `gpt2 finetune classify --out DIR` saves the finished classifier
CHECKPOINT_NAME = re.compile(r"^step-(\d+)$")
RUN_FORMAT = "gpt2-twice-run"
CSV_COLUMNS = ["step", "epoch", "train_loss", "train_perplexity", "eval_train_loss", "eval_train_perplexity",
               "val_loss", "val_perplexity", "lr", "grad_norm", "tokens_seen", "tokens_per_sec", "elapsed_s", "mfu"]


class RunLog:
    """Metrics, config and plot of one run folder. enabled=False (other DDP ranks) writes nothing."""

    def __init__(self, run_dir: str | os.PathLike, *, enabled: bool = True, extra_columns: tuple[str, ...] = (),
                 plot_series: tuple[str, ...] = ("train_loss", "eval_train_loss", "val_loss"), ylabel: str = "loss"):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.columns = CSV_COLUMNS + [c for c in extra_columns if c not in CSV_COLUMNS]
        self.plot_series, self.ylabel = plot_series, ylabel
        self.records: list[dict] = []
        if enabled:
            self.run_dir.mkdir(parents=True, exist_ok=True)

    @property
    def metrics_path(self) -> Path:
        return self.run_dir / METRICS_JSONL

    def write_config(self, values: dict) -> None:
        if self.enabled:
            atomic_write_json(self.run_dir / RUN_CONFIG_FILE, {"format": RUN_FORMAT, **values})

    def continue_from(self, step: int) -> None:
        """Resuming at `step`: keep the logged records up to it (a crash may have logged steps after the last
        checkpoint, which the resumed run repeats) and rewrite metrics.jsonl and metrics.csv to match."""
        if not self.enabled:
            return
        records = read_jsonl(self.metrics_path) if self.metrics_path.is_file() else []
        self.records = [r for r in records if r.get("step", 0) <= step]
        if len(self.records) != len(records) or not (self.run_dir / METRICS_CSV).is_file():
            text = "".join(_json_line(r) for r in self.records)
            atomic_write_text(self.metrics_path, text)
            atomic_write_text(self.run_dir / METRICS_CSV, self._csv_text(self.records, header=True))

    def log(self, entry: dict) -> None:
        """Appends one step's numbers to metrics.jsonl and metrics.csv."""
        if not self.enabled:
            return
        self.records.append(entry)
        append_jsonl(self.metrics_path, entry)
        csv_path = self.run_dir / METRICS_CSV
        with open(csv_path, "a", encoding="utf-8", newline="") as stream:
            stream.write(self._csv_text([entry], header=stream.tell() == 0))

    def _csv_text(self, records: list[dict], header: bool) -> str:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=self.columns, extrasaction="ignore", lineterminator="\n")
        if header:
            writer.writeheader()
        for record in records:
            writer.writerow({k: ("" if v is None else v) for k, v in record.items()})
        return buffer.getvalue()

    def plot(self) -> Path | None:
        """loss.png: the plot series against step, tokens seen on the top axis."""
        if not self.enabled or not self.records:
            return None
        steps = [r["step"] for r in self.records]
        series = {name: [r.get(name) for r in self.records] for name in self.plot_series
                  if any(r.get(name) is not None for r in self.records)}
        tokens = [r.get("tokens_seen", math.nan) for r in self.records]
        secondary = ("tokens seen", tokens) if all(isinstance(t, (int, float)) for t in tokens) else None
        return plot_curves(self.run_dir / LOSS_PLOT, steps, series, ylabel=self.ylabel, secondary_x=secondary,
                           title=self.run_dir.name)


def _json_line(record: dict) -> str:
    import json
    return json.dumps(record, allow_nan=True) + "\n"


# ---------------------------------------------------------------------------------------------------
# checkpoints inside a run folder
# ---------------------------------------------------------------------------------------------------

def checkpoint_path(run_dir: str | os.PathLike, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS_DIR / f"step-{step:08d}"


def list_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """(step, folder) of every complete checkpoint of the run, oldest first."""
    folder = Path(run_dir) / CHECKPOINTS_DIR
    if not folder.is_dir():
        return []
    found = []
    for child in folder.iterdir():
        match = CHECKPOINT_NAME.match(child.name)
        if match and is_checkpoint(child):
            found.append((int(match.group(1)), child))
    return sorted(found)


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def prune_checkpoints(run_dir: str | os.PathLike, keep: int) -> None:
    """Deletes all but the newest `keep` checkpoints (keep <= 0 keeps everything)."""
    if keep <= 0:
        return
    for _, folder in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(folder, ignore_errors=True)


def run_weights(path: str | os.PathLike) -> Path | None:
    """The weights a run folder stands for: its final model/ when it has one (finetuning), else its newest
    checkpoints/step-* (`gpt2 train`, `gpt2 finetune instruct`); None when `path` is not such a run folder.

    FileNotFoundError for a run folder that has written no checkpoint yet.
    """
    path = Path(path)
    if not path.is_dir() or is_checkpoint(path):
        return None
    if is_checkpoint(path / FINAL_MODEL_DIR):
        return path / FINAL_MODEL_DIR
    if not is_run_dir(path):
        return None
    checkpoint = latest_checkpoint(path)
    if checkpoint is None:
        raise FileNotFoundError(f"{path} is a run folder without a checkpoint yet (none in {path / CHECKPOINTS_DIR}); "
                                f"let the run save one (--checkpoint-interval) or give a checkpoint folder")
    return checkpoint


def is_run_dir(path: str | os.PathLike) -> bool:
    import json
    try:
        values = json.loads((Path(path) / RUN_CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(values, dict) and values.get("format") == RUN_FORMAT


def resolve_resume(target: str | os.PathLike) -> tuple[Path, Path | None]:
    """--resume CHECKPOINT_OR_RUN_DIR -> (checkpoint folder, the run folder it belongs to or None).

    A run folder resumes from its newest checkpoint; a checkpoint inside <run>/checkpoints/ belongs to <run>.
    """
    target = Path(target)
    if not target.exists():
        raise FileNotFoundError(f"--resume {target}: no such file or folder; give a run folder (--out of an "
                                f"earlier run) or one of its checkpoints")
    if is_run_dir(target):
        checkpoint = latest_checkpoint(target)
        if checkpoint is None:
            raise FileNotFoundError(f"--resume {target}: the run folder has no checkpoint yet (none in "
                                    f"{target / CHECKPOINTS_DIR}); start the run again without --resume")
        return checkpoint, target
    if is_checkpoint(target):
        parent = target.parent.parent
        return target, (parent if target.parent.name == CHECKPOINTS_DIR and is_run_dir(parent) else None)
    raise ValueError(f"--resume {target}: neither a run folder (with {RUN_CONFIG_FILE} and {CHECKPOINTS_DIR}/) "
                     f"nor a checkpoint folder; give the --out folder of an earlier run")


# ---------------------------------------------------------------------------------------------------
# Ctrl-C at a step boundary
# ---------------------------------------------------------------------------------------------------

class StopRequest:
    """While active, SIGINT (Ctrl-C) and SIGTERM only set `.requested`; the loop checks it between steps,
    saves a checkpoint and stops, so a checkpoint never holds a half-applied update. A second Ctrl-C
    raises KeyboardInterrupt at once. Outside the main thread signals cannot be caught: a no-op there."""

    def __init__(self):
        self.requested = False
        self._previous = {}

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}
        return False


class TrainingInterrupted(KeyboardInterrupt):
    """Raised after Ctrl-C once the checkpoint is saved; str() says where and how to resume."""


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or inf; the message names the step and the last good checkpoint."""
