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
numpy_params() -> the parameter dict. Losses and accuracies are computed here from those logits in
NumPy, so both backends are measured by the same code.
"""
from __future__ import annotations

import math
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


def predict_logits(backend, data: EncodedMessages, batch_size: int) -> np.ndarray:
    """(N, K) logits of every message, in the data's order (eval mode)."""
    parts = [backend.logits(ids, lengths) for ids, lengths, _ in classification_batches(data, batch_size)]
    return np.concatenate(parts).astype(np.float64) if parts else np.zeros((0, backend.num_classes))


def evaluate_loss(backend, data: EncodedMessages, batch_size: int, max_batches: int, class_weights=None) -> float:
    """Mean of the per-batch losses of the first `max_batches` batches (in order); nan for no data."""
    losses = []
    for i, (ids, lengths, labels) in enumerate(classification_batches(data, batch_size)):
        if i >= max_batches:
            break
        logits = backend.logits(ids, lengths).astype(np.float64)
        losses.append(weighted_mean_loss(logits, labels, class_weights))
    return float(np.mean(losses)) if losses else math.nan


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(logits.argmax(axis=-1) == labels)) if len(labels) else math.nan


def train_classifier(backend, train: EncodedMessages, val: EncodedMessages, test: EncodedMessages,
                     settings: ClassifierSettings, *, class_weights=None, progress: bool = True, on_log=None) -> dict:
    """Trains the backend's model in place. Returns {"steps": [...], "epochs": [...], "test_logits": (N, K)}:

    steps:  one entry per optimizer step: {step, epoch, train_loss (that batch's), examples_seen,
            tokens_seen (padded batch tokens)}, plus {eval_train_loss, val_loss} at eval steps (means over
            eval_batches batches), plus {train_accuracy, val_accuracy, test_accuracy} (whole splits) at the
            last step of every epoch
    epochs: {epoch, step, examples_seen, train_accuracy, val_accuracy, test_accuracy} per epoch
    test_logits: the final model's logits on the test split (for precision/recall/F1).
    on_log(entry) is called with every step entry (gptcore.formats.runs.RunLog.log fits).
    """
    steps_per_epoch = num_batches(train, settings.batch_size, drop_last=True)
    if steps_per_epoch == 0:
        raise ValueError(f"the training split has {len(train)} messages, fewer than one batch of "
                         f"{settings.batch_size}; use a smaller --batch-size")
    history = {"steps": [], "epochs": []}
    step, examples_seen, tokens_seen, test_logits = 0, 0, 0, None
    bar = tqdm(total=settings.epochs * steps_per_epoch, desc=f"{backend.name} classify", disable=not progress,
               unit="step")
    for epoch in range(1, settings.epochs + 1):
        batches = classification_batches(train, settings.batch_size, shuffle=True, seed=settings.seed,
                                         epoch=epoch - 1, drop_last=True)
        for index, (ids, lengths, labels) in enumerate(batches):
            loss = backend.train_step(ids, lengths, labels)
            if not math.isfinite(loss):
                raise NonFiniteLossError(f"the loss became {loss} at step {step + 1}; lower --lr or set --grad-clip")
            step += 1
            examples_seen += len(labels)
            tokens_seen += ids.size
            entry = {"step": step, "epoch": epoch, "train_loss": loss, "examples_seen": examples_seen,
                     "tokens_seen": tokens_seen}
            if step % settings.eval_interval == 0:
                entry["eval_train_loss"] = evaluate_loss(backend, train, settings.batch_size,
                                                         settings.eval_batches, class_weights)
                entry["val_loss"] = evaluate_loss(backend, val, settings.batch_size, settings.eval_batches,
                                                  class_weights)
                bar.set_postfix(train=f"{entry['eval_train_loss']:.3f}", val=f"{entry['val_loss']:.3f}")
            if index == steps_per_epoch - 1:
                test_logits = predict_logits(backend, test, settings.batch_size)
                accuracies = {
                    "train_accuracy": accuracy(predict_logits(backend, train, settings.batch_size), train.labels),
                    "val_accuracy": accuracy(predict_logits(backend, val, settings.batch_size), val.labels),
                    "test_accuracy": accuracy(test_logits, test.labels)}
                entry.update(accuracies)
                history["epochs"].append({"epoch": epoch, "step": step, "examples_seen": examples_seen, **accuracies})
                if progress:
                    bar.write(f"epoch {epoch}: accuracy train {accuracies['train_accuracy']:.2%}, "
                              f"val {accuracies['val_accuracy']:.2%}, test {accuracies['test_accuracy']:.2%}")
            history["steps"].append(entry)
            if on_log:
                on_log(entry)
            bar.update(1)
    bar.close()
    history["test_logits"] = test_logits
    return history
