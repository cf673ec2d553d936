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
import json
import math
import os
import re
import shutil
import signal
import threading
from dataclasses import dataclass
from pathlib import Path

from gptcore.datasets import fetch, weights_names
from gptcore.fileio import append_jsonl, atomic_write_json, atomic_write_text, read_jsonl
from gptcore.formats.checkpoint import STATE_JSON_FILE, is_checkpoint, load_checkpoint
from gptcore.formats.safetensors import WeightsError
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

    def continue_from(self, step: int, source_run: str | os.PathLike | None = None) -> None:
        """Resuming at `step`: keep the logged records up to it (a crash may have logged steps after the last
        checkpoint, which the resumed run repeats) and rewrite metrics.jsonl and metrics.csv to match.
        source_run: the run folder the records come from when it is another one (a branch: `--resume
        RUN/checkpoints/step-N --out NEW`); that folder is only read."""
        if not self.enabled:
            return
        source = Path(source_run) if source_run is not None else self.run_dir
        source_metrics = source / METRICS_JSONL
        records = read_jsonl(source_metrics) if source_metrics.is_file() else []
        self.records = [r for r in records if r.get("step", 0) <= step]
        if (source != self.run_dir or len(self.records) != len(records)
                or not (self.run_dir / METRICS_CSV).is_file()):
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


def prune_checkpoints(run_dir: str | os.PathLike, keep: int, newest_step: int | None = None) -> None:
    """Deletes all but the newest `keep` checkpoints (keep <= 0 keeps everything).

    newest_step: the step of the checkpoint just written. Only checkpoints up to it count and can go: one
    from a later step (which a linear run never has, see later_checkpoints) is never deleted in its favour,
    and neither is the checkpoint a run resumed from before a newer one is complete (it is among the newest
    `keep` until then).
    """
    if keep <= 0:
        return
    found = [(step, folder) for step, folder in list_checkpoints(run_dir)
             if newest_step is None or step <= newest_step]
    for _, folder in found[:-keep]:
        shutil.rmtree(folder, ignore_errors=True)


def later_checkpoints(run_dir: str | os.PathLike, checkpoint: str | os.PathLike) -> list[Path]:
    """The run's checkpoints saved after `checkpoint` (one of its checkpoints/step-N), oldest first."""
    found = list_checkpoints(run_dir)
    steps = [saved for saved, folder in found if folder.resolve() == Path(checkpoint).resolve()]
    if not steps:
        return []
    return [folder for saved, folder in found if saved > steps[0]]


def saved_step(checkpoint: str | os.PathLike) -> int | None:
    """The optimizer step a checkpoint was saved after: its training state's "step", else the step in its
    folder name (step-00000200), else None (a final model/ without training state)."""
    checkpoint = Path(checkpoint)
    folder = checkpoint.parent if checkpoint.is_file() else checkpoint
    try:
        return int(json.loads((folder / STATE_JSON_FILE).read_text(encoding="utf-8"))["state"]["step"])
    except (OSError, ValueError, KeyError, TypeError):
        match = CHECKPOINT_NAME.match(folder.name)
        return int(match.group(1)) if match else None


def older_good_checkpoint(run_dir: str | os.PathLike, step: int) -> Path | None:
    """The newest checkpoint of the run before `step` that loads completely (weights and training state),
    or None. For the error about a corrupt checkpoint: what the user can go back to."""
    for saved, folder in reversed(list_checkpoints(run_dir)):
        if saved >= step:
            continue
        try:
            load_checkpoint(folder)
        except (ValueError, OSError, WeightsError):
            continue
        return folder
    return None


@dataclass(frozen=True)
class WeightsSource:
    """What a weights path given on the command line stands for (resolve_weights).

    path:    what to read: a checkpoint folder or file, or released weights (OpenAI, Hugging Face)
    run_dir: the run folder the weights belong to (given, or the one holding the checkpoint), else None
    step:    the optimizer step of a run's checkpoint, None for a final model/ or released weights
    """
    path: Path
    run_dir: Path | None = None
    step: int | None = None

    def describe(self) -> str:
        """'run R, checkpoint C (step N)' for a run's weights, else the path."""
        if self.run_dir is None:
            return str(self.path)
        step = f" (step {self.step})" if self.step is not None else ""
        return f"run {self.run_dir}, checkpoint {self.path}{step}"


def resolve_weights(path: str | os.PathLike) -> WeightsSource:
    """The one resolver of a weights path, whatever the command and the backend: a run folder stands for its
    weights (run_weights), a checkpoint inside <run>/checkpoints/ or <run>/model/ (or its model.safetensors)
    belongs to <run>; a pretrained model's name in the data manifest (`smollm2-135m-instruct`) stands for its
    verified file in the data dir (`gpt2 weights download NAME`); anything else is read as it is."""
    path = Path(path)
    if not path.exists() and str(path) in weights_names():
        return WeightsSource(fetch(str(path), download=False))
    weights = run_weights(path)
    if weights is not None:
        return WeightsSource(weights, path, saved_step(weights))
    folder = path.parent if path.is_file() else path
    if is_checkpoint(path):
        if folder.parent.name == CHECKPOINTS_DIR and is_run_dir(folder.parent.parent):
            return WeightsSource(path, folder.parent.parent, saved_step(path))
        if folder.name == FINAL_MODEL_DIR and is_run_dir(folder.parent):
            return WeightsSource(path, folder.parent, saved_step(path))
    return WeightsSource(path)


def corrupt_checkpoint_hint(source: WeightsSource) -> str:
    """For the error of a run's checkpoint that does not load: '; the run's older checkpoint ... loads ...',
    or '' when there is none (or the weights are not a run's)."""
    if source.run_dir is None or source.step is None:
        return ""
    older = older_good_checkpoint(source.run_dir, source.step)
    if older is None:
        return ""
    return (f"; the run's older checkpoint {older} (step {saved_step(older)}) loads: give that folder instead, "
            f"or delete the corrupt {source.path} and give the run folder {source.run_dir} again")


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
        if checkpoint is None and is_checkpoint(target / FINAL_MODEL_DIR):
            raise ValueError(f"--resume {target}: this is a finetuning run (its model is {target / FINAL_MODEL_DIR}, "
                             f"a classifier when `gpt2 finetune classify` wrote it), not a pretraining run; "
                             f"`gpt2 train --resume` continues `gpt2 train` runs only. Label messages with "
                             f"`gpt2 classify --checkpoint {target}`, or finetune again with `gpt2 finetune "
                             f"classify --init-from {target} --out NEW_FOLDER`")
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
