"""Classification finetuning, backend-neutral: the head's names and shapes, which parameters train, class
weights, and the metrics (confusion matrix, precision/recall/F1) both backends are measured by.

The model math is in npgpt/classifier.py and torchgpt/classifier.py.
"""
from __future__ import annotations

import numpy as np

from gptcore.arch import embedding_names, param_shapes
from gptcore.config import GPTConfig
from gptcore.params import check_param_shapes

HEAD_NAMES = ("cls_head.weight", "cls_head.bias")
LM_HEAD_NAME = "out_head.weight"
TRAINABLE_CHOICES = ("head", "last-k", "all")
HEAD_INIT_STD = 0.02


def classifier_param_shapes(config: GPTConfig, num_classes: int) -> dict[str, tuple[int, ...]]:
    """Every parameter name of a classifier -> shape: the trunk's canonical names, then the head."""
    check_num_classes(num_classes)
    shapes = {name: shape for name, shape in param_shapes(config).items() if name != LM_HEAD_NAME}
    shapes.update({"cls_head.weight": (num_classes, config.emb_dim), "cls_head.bias": (num_classes,)})
    return shapes


def check_num_classes(num_classes) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    return int(num_classes)


def check_classifier_params(params: dict[str, np.ndarray], config: GPTConfig, num_classes: int) -> None:
    """Clear error when the dict does not match a classifier of this config and number of classes."""
    check_param_shapes(params, classifier_param_shapes(config, num_classes), what="classifier parameters",
                       fix="; build them with classifier_from_lm_params")


def trainable_param_names(config: GPTConfig, trainable: str = "last-k", last_k: int = 1) -> list[str]:
    """The parameter names that train, in parameter order (both backends use this one rule):

        "head":   cls_head only
        "last-k": the last `last_k` blocks + final_norm + cls_head (the book: last_k=1)
        "all":    everything, embeddings included
    """
    names = list(classifier_param_shapes(config, 2))   # the names do not depend on K
    if trainable == "head":
        return [name for name in names if name in HEAD_NAMES]
    if trainable == "all":
        return names
    if trainable != "last-k":
        raise ValueError(f"trainable must be one of {', '.join(TRAINABLE_CHOICES)}, got {trainable!r}")
    if isinstance(last_k, bool) or not isinstance(last_k, (int, np.integer)) or not 1 <= last_k <= config.n_layers:
        raise ValueError(f"last_k must be between 1 and the number of blocks ({config.n_layers}), got {last_k!r}")
    first = config.n_layers - last_k
    keep = tuple(f"blocks.{i}." for i in range(first, config.n_layers)) + ("final_norm.", "cls_head.")
    return [name for name in names if name.startswith(keep)]


def first_trained_block(config: GPTConfig, trainable_names) -> int | None:
    """Lowest block index the backward must reach: 0 when an embedding of the architecture trains (GPT-2's
    token and position tables, Llama's token table), None when only the head does."""
    names = set(trainable_names)
    if names & set(embedding_names(config)):
        return 0
    blocks = [i for i in range(config.n_layers) if any(n.startswith(f"blocks.{i}.") for n in names)]
    if blocks:
        return min(blocks)
    return config.n_layers if any(n.startswith("final_norm.") for n in names) else None


def frozen_block_count(config: GPTConfig, trainable_names) -> int:
    """How many blocks at the bottom of the trunk stay exactly the same during training, so that their output
    can be computed once per message and reused every epoch: the blocks below the lowest trained one (all of
    them when only the final norm and the head train). 0 when nothing can be cached: an embedding or the
    first block trains (LoRA on every block too), or dropout is on (the bottom's output would change at each
    pass; GPT-2's embedding dropout sits there)."""
    if config.drop_rate > 0:
        return 0
    lowest = first_trained_block(config, trainable_names)
    return config.n_layers if lowest is None else lowest


def balanced_class_weights(labels, num_classes: int) -> np.ndarray:
    """w_c = N / (K * n_c): every class weighs as much in the loss as the others (float64, (K,)).

    A class missing from `labels` would need an infinite weight: refused, with the fix.
    """
    labels = check_labels(labels, len(np.asarray(labels)), num_classes)
    counts = np.bincount(labels, minlength=num_classes)
    if np.any(counts == 0):
        raise ValueError(f"class counts {counts.tolist()}: every class needs at least one training example "
                         f"for class weights; use more data or the balanced set")
    return len(labels) / (num_classes * counts.astype(np.float64))


def softmax_probabilities(logits) -> np.ndarray:
    """Row-wise softmax of (B, K) logits (for reporting a prediction's probability)."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    probs = np.exp(shifted)
    return probs / probs.sum(axis=-1, keepdims=True)


def confusion_matrix(true_labels, predicted_labels, num_classes: int) -> np.ndarray:
    """(K, K) counts: row = true class, column = predicted class."""
    true_labels = np.asarray(true_labels, dtype=np.int64)
    predicted_labels = np.asarray(predicted_labels, dtype=np.int64)
    if true_labels.shape != predicted_labels.shape:
        raise ValueError(f"{true_labels.shape[0]} true labels but {predicted_labels.shape[0]} predictions")
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (true_labels, predicted_labels), 1)
    return matrix


def classification_metrics(true_labels, predicted_labels, num_classes: int = 2, positive: int = 1) -> dict:
    """accuracy, and precision / recall / F1 of the `positive` class (spam), plus the confusion matrix.

        precision = TP / (TP + FP)     recall = TP / (TP + FN)     F1 = 2 P R / (P + R)
    A ratio with nothing to count (no predicted or no true positives) is 0.0, as scikit-learn reports it.
    """
    matrix = confusion_matrix(true_labels, predicted_labels, num_classes)
    total = int(matrix.sum())
    tp = int(matrix[positive, positive])
    fp = int(matrix[:, positive].sum()) - tp
    fn = int(matrix[positive, :].sum()) - tp
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    accuracy = float(np.trace(matrix)) / total if total else float("nan")
    return {"accuracy": accuracy, "precision": precision, "recall": recall, "f1": f1,
            "confusion_matrix": matrix.tolist()}
def check_labels(labels, batch: int, num_classes: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.shape != (batch,) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be {batch} integers (one per message), got shape {labels.shape} "
                         f"dtype {labels.dtype}")
    if batch and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must be class indices in [0, {num_classes}), got {labels.min()}..{labels.max()}")
    return labels




def weighted_mean_loss(logits, labels, class_weights=None) -> float:
    """The evaluation loss of (B, K) logits, in float64: sum_b w[y_b] * (-log softmax(logits_b)[y_b]) / sum_b w[y_b]
    (w = 1: the plain mean). Both backends' logits are measured by this one function; the training losses
    are each backend's own (npgpt.classifier.class_weighted_cross_entropy_forward and its torch twin)."""
    logits = np.asarray(logits, dtype=np.float64)
    labels = check_labels(labels, logits.shape[0], logits.shape[1])
    if labels.size == 0:
        raise ValueError("the loss of an empty batch is undefined; give at least one message")
    weights = np.ones(labels.size) if class_weights is None else np.asarray(class_weights, dtype=np.float64)[labels]
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_p_label = shifted[np.arange(labels.size), labels] - np.log(np.exp(shifted).sum(axis=-1))
    return -float(np.dot(weights, log_p_label)) / float(weights.sum())
