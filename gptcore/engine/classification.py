"""The classification training loop, written once for both backends (the book's chapter-6 recipe).

    backend = NumpyClassifierBackend(params, config, num_classes)      # or torchgpt's TorchClassifierBackend
    backend.prepare_training(trainable_names, settings, class_weights)
    history = train_classifier(backend, train, val, test, settings)

    for each epoch:
        for each shuffled training batch (drop_last):   loss = backend.train_step(ids, lengths, labels)
            every eval_interval steps: mean loss over the first eval_batches batches of train and validation
        accuracy on the whole train, validation and test splits

A backend is anything with  train_step(ids, lengths, labels) -> float  (forward, backward, optional
clipping, one AdamW step), logits(ids, lengths) -> (B, K) NumPy array (eval mode, no dropout), and
numpy_params() -> the parameter dict. A backend whose bottom blocks stay frozen (frozen_blocks > 0: only the
last blocks, final norm and head train, no dropout) also has frozen_hidden / train_step_from_hidden /
logits_from_hidden, and ClassifierFeed runs those blocks once per message instead of every epoch. Losses and accuracies are computed here from those logits in
NumPy, so both backends are measured by the same code.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import numpy as np
from tqdm.auto import tqdm

from gptcore.engine.training import check_grad_clip, check_non_negative, check_positive_int, check_positive_number
from gptcore.formats.runs import NonFiniteLossError
from gptcore.tasks.classification import weighted_mean_loss
from gptcore.tasks.classification_data import EncodedMessages, classification_batches, num_batches


@dataclass
class ClassifierSettings:
    epochs: int = 5                 # the book's defaults: 5 epochs, batch 8, AdamW lr 5e-5, weight decay 0.1
    batch_size: int = 8
    lr: float = 5e-5
    weight_decay: float = 0.1
    eval_interval: int = 50         # optimizer steps between two loss evaluations
    eval_batches: int = 5           # batches per loss evaluation (train and validation)
    grad_clip: float | None = None  # global-norm clipping (the book does not clip)
    seed: int = 123                 # batch order and dropout masks

    def __post_init__(self):
        for name in ("epochs", "batch_size", "eval_interval", "eval_batches"):
            check_positive_int(name.replace("_", "-"), getattr(self, name))
        check_positive_number("the learning rate", self.lr)
        check_non_negative("weight decay", self.weight_decay)
        check_grad_clip("grad clip", self.grad_clip)

    def to_dict(self) -> dict:
        return asdict(self)


class ClassifierFeed:
    """How the messages reach the backend: token ids through the whole model, or, when the bottom blocks are
    frozen (backend.frozen_blocks > 0) and caching is on, each message's frozen-bottom output computed once
    (backend.frozen_hidden) and fed to the trained top every epoch (backend.train_step_from_hidden,
    logits_from_hidden). The frozen blocks' weights never change, so both feeds give the same losses and
    logits; the cached one costs the trained top only per epoch.

    A backend with frozen blocks has frozen_blocks (int), frozen_hidden(ids, lengths) -> (B, T, C),
    train_step_from_hidden(hidden, lengths, labels) -> float and logits_from_hidden(hidden, lengths) -> (B, K).
    """

    def __init__(self, backend, splits: dict[str, EncodedMessages], batch_size: int, *, cache: bool = True,
                 progress: bool = True):
        """batch_size: messages per pass of the frozen bottom (train_classifier: 32 or the training batch)."""
        self.backend, self.splits = backend, splits
        self.frozen_blocks = int(getattr(backend, "frozen_blocks", 0)) if cache else 0
        self.inputs = {name: None for name in splits}       # None: the splits' own token ids
        self.cache_seconds = 0.0
        if self.frozen_blocks:
            self.inputs = self.compute_frozen_hidden(batch_size, progress)

    @property
    def cached(self) -> bool:
        return self.frozen_blocks > 0

    def compute_frozen_hidden(self, batch_size: int, progress: bool) -> dict[str, np.ndarray]:
        """{split: (N, T, C) frozen-bottom output of every message}, zero after each message's last real token
        (positions that causal attention never lets an earlier token see, and the prediction never reads)."""
        started = time.perf_counter()
        total_tokens = sum(int(data.lengths.sum()) for data in self.splits.values())
        bar = tqdm(total=total_tokens, desc=f"{self.backend.name} frozen blocks 0-{self.frozen_blocks - 1}, once",
                   unit="tok", unit_scale=True, disable=not progress)
        hidden = {}
        for name, data in self.splits.items():
            out = None
            # Messages of similar length batched together (each row is computed on its own, so the order is
            # free): a batch is cut to its longest message, and sorted batches carry almost no padding.
            by_length = np.argsort(data.lengths, kind="stable")
            for start in range(0, len(data), batch_size):
                rows = by_length[start:start + batch_size]
                lengths = data.lengths[rows]
                h = np.asarray(self.backend.frozen_hidden(data.ids[rows, :int(lengths.max())], lengths))  # (B, T_b, C)
                if out is None:
                    out = np.zeros((len(data), data.max_length, h.shape[-1]), dtype=h.dtype)
                out[rows, :h.shape[1]] = h
                bar.update(int(lengths.sum()))
            hidden[name] = out
        bar.close()
        self.cache_seconds = time.perf_counter() - started
        return hidden

    def batches(self, name: str, batch_size: int, **order):
        """classification_batches of split `name`, cut from the cached hidden states when there are some."""
        return classification_batches(self.splits[name], batch_size, inputs=self.inputs[name], **order)

    def train_step(self, inputs, lengths, labels) -> float:
        if self.cached:
            return self.backend.train_step_from_hidden(inputs, lengths, labels)
        return self.backend.train_step(inputs, lengths, labels)

    def logits(self, inputs, lengths) -> np.ndarray:
        if self.cached:
            return self.backend.logits_from_hidden(inputs, lengths)
        return self.backend.logits(inputs, lengths)

    def predict_logits(self, name: str, batch_size: int) -> np.ndarray:
        """(N, K) logits of every message of split `name`, in the data's order (eval mode)."""
        parts = [self.logits(inputs, lengths) for inputs, lengths, _ in self.batches(name, batch_size)]
        return np.concatenate(parts).astype(np.float64) if parts else np.zeros((0, self.backend.num_classes))

    def evaluate_loss(self, name: str, batch_size: int, max_batches: int, class_weights=None) -> float:
        """Mean of the per-batch losses of the first `max_batches` batches (in order); nan for no data."""
        losses = []
        for i, (inputs, lengths, labels) in enumerate(self.batches(name, batch_size)):
            if i >= max_batches:
                break
            logits = self.logits(inputs, lengths).astype(np.float64)
            losses.append(weighted_mean_loss(logits, labels, class_weights))
        return float(np.mean(losses)) if losses else math.nan


def predict_logits(backend, data: EncodedMessages, batch_size: int) -> np.ndarray:
    """(N, K) logits of every message, in the data's order (eval mode), through the whole model."""
    return ClassifierFeed(backend, {"data": data}, batch_size, cache=False).predict_logits("data", batch_size)


def evaluate_loss(backend, data: EncodedMessages, batch_size: int, max_batches: int, class_weights=None) -> float:
    """Mean of the per-batch losses of the first `max_batches` batches (in order); nan for no data."""
    feed = ClassifierFeed(backend, {"data": data}, batch_size, cache=False)
    return feed.evaluate_loss("data", batch_size, max_batches, class_weights)


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(logits.argmax(axis=-1) == labels)) if len(labels) else math.nan


def train_classifier(backend, train: EncodedMessages, val: EncodedMessages, test: EncodedMessages,
                     settings: ClassifierSettings, *, class_weights=None, progress: bool = True, on_log=None,
                     cache_frozen: bool = True) -> dict:
    """Trains the backend's model in place. Returns {"steps": [...], "epochs": [...], "test_logits": (N, K),
    "frozen_blocks": int, "cache_seconds": float}:

    steps:  one entry per optimizer step: {step, epoch, train_loss (that batch's), examples_seen,
            tokens_seen (padded batch tokens)}, plus {eval_train_loss, val_loss} at eval steps (means over
            eval_batches batches), plus {train_accuracy, val_accuracy, test_accuracy} (whole splits) at the
            last step of every epoch
    epochs: {epoch, step, examples_seen, train_accuracy, val_accuracy, test_accuracy, seconds} per epoch
    test_logits: the final model's logits on the test split (for precision/recall/F1).
    frozen_blocks, cache_seconds: how many bottom blocks ran once per message (ClassifierFeed; 0 when the
    whole model ran every step: cache_frozen=False, dropout, or the low blocks train) and what that pass took.
    on_log(entry) is called with every step entry (gptcore.formats.runs.RunLog.log fits).
    """
    steps_per_epoch = num_batches(train, settings.batch_size, drop_last=True)
    if steps_per_epoch == 0:
        raise ValueError(f"the training split has {len(train)} messages, fewer than one batch of "
                         f"{settings.batch_size}; use a smaller --batch-size")
    feed = ClassifierFeed(backend, {"train": train, "val": val, "test": test}, max(settings.batch_size, 32),
                          cache=cache_frozen, progress=progress)
    history = {"steps": [], "epochs": []}
    step, examples_seen, tokens_seen, test_logits = 0, 0, 0, None
    what = "top blocks" if feed.cached else "classify"
    bar = tqdm(total=settings.epochs * steps_per_epoch, desc=f"{backend.name} {what}", disable=not progress,
               unit="step")
    for epoch in range(1, settings.epochs + 1):
        epoch_started, epoch_tokens = time.perf_counter(), 0
        batches = feed.batches("train", settings.batch_size, shuffle=True, seed=settings.seed, epoch=epoch - 1,
                               drop_last=True)
        for index, (inputs, lengths, labels) in enumerate(batches):
            loss = feed.train_step(inputs, lengths, labels)
            if not math.isfinite(loss):
                raise NonFiniteLossError(f"the loss became {loss} at step {step + 1}; lower --lr or set --grad-clip")
            step += 1
            examples_seen += len(labels)
            tokens_seen += len(labels) * inputs.shape[1]
            epoch_tokens += int(lengths.sum())
            entry = {"step": step, "epoch": epoch, "train_loss": loss, "examples_seen": examples_seen,
                     "tokens_seen": tokens_seen}
            if step % settings.eval_interval == 0:
                entry["eval_train_loss"] = feed.evaluate_loss("train", settings.batch_size, settings.eval_batches,
                                                              class_weights)
                entry["val_loss"] = feed.evaluate_loss("val", settings.batch_size, settings.eval_batches,
                                                       class_weights)
                bar.set_postfix(train=f"{entry['eval_train_loss']:.3f}", val=f"{entry['val_loss']:.3f}",
                                tok_s=f"{epoch_tokens / max(time.perf_counter() - epoch_started, 1e-9):.0f}")
            if index == steps_per_epoch - 1:
                test_logits = feed.predict_logits("test", settings.batch_size)
                accuracies = {
                    "train_accuracy": accuracy(feed.predict_logits("train", settings.batch_size), train.labels),
                    "val_accuracy": accuracy(feed.predict_logits("val", settings.batch_size), val.labels),
                    "test_accuracy": accuracy(test_logits, test.labels)}
                entry.update(accuracies)
                seconds = time.perf_counter() - epoch_started
                history["epochs"].append({"epoch": epoch, "step": step, "examples_seen": examples_seen,
                                          **accuracies, "seconds": round(seconds, 3)})
                if progress:
                    bar.write(f"epoch {epoch}: accuracy train {accuracies['train_accuracy']:.2%}, "
                              f"val {accuracies['val_accuracy']:.2%}, test {accuracies['test_accuracy']:.2%} "
                              f"({seconds:.1f} s, {epoch_tokens / seconds:.0f} training tokens/s)")
            history["steps"].append(entry)
            if on_log:
                on_log(entry)
            bar.update(1)
    bar.close()
    history.update(test_logits=test_logits, frozen_blocks=feed.frozen_blocks,
                   cache_seconds=round(feed.cache_seconds, 3))
    return history
