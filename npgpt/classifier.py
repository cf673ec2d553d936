"""A GPT as a text classifier (NumPy): the trunk, the last real token, a num_classes linear head.

    x, trunk_cache = trunk_forward(params, idx, config)          (B, T, C) final-normed hidden states
    h = x[b, lengths[b] - 1]                                     (B, C)    each message's last real token
    logits = h @ cls_head.weight^T + cls_head.bias               (B, K)    K = num_classes
    loss = sum_b w[y_b] CE_b / sum_b w[y_b]                      CE_b = -log softmax(logits_b)[y_b]

Why the last REAL token: attention is causal, so position t sees tokens 0..t only. The last token of
the message is the one position that has read the whole message, and the padding after it cannot
change it. Position -1 would be a padding token whenever a shorter message shares a batch with a longer
one, and its logits would then depend on how much padding follows (the bug the book's readers report).

Parameter names: the trunk's canonical names (tok_emb, pos_emb, blocks.*, final_norm) plus the head
    cls_head.weight (K, C)    cls_head.bias (K,)
A classifier has no `out_head.weight`: the language-model head is dropped, so a classifier's state
dict can never be mistaken for a language model's (and vice versa), and a tied embedding is just the
embedding. The same names are the state_dict of torchgpt.classifier.GPTClassifier.

Class weights w (one per class) follow torch.nn.functional.cross_entropy(weight=w): a weighted mean, so
w = 1 for every class is the plain mean. balanced_class_weights gives w_c = N / (K n_c), which makes
each class count as much as the others in the loss (used with the unbalanced data set).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from gptcore.config import GPTConfig
from gptcore.tasks.classification import (HEAD_INIT_STD, HEAD_NAMES, LM_HEAD_NAME, check_classifier_params, check_labels,
                                          check_num_classes, first_trained_block)
from npgpt import model as lm
from npgpt.linear import LinearLayerCache, linear_layer_backward, linear_layer_forward

# ---------------------------------------------------------------------------------------------------
# parameters
# ---------------------------------------------------------------------------------------------------

def init_head(config: GPTConfig, num_classes: int, seed: int = 0, dtype=np.float32) -> dict[str, np.ndarray]:
    """A fresh head: weight ~ N(0, 0.02) like every GPT-2 linear layer, bias 0."""
    check_num_classes(num_classes)
    rng = np.random.default_rng([seed, 1])   # its own stream: the trunk's init draws from [seed]
    weight = rng.standard_normal((num_classes, config.emb_dim), dtype=np.float32) * np.float32(HEAD_INIT_STD)
    return {"cls_head.weight": weight.astype(dtype, copy=False), "cls_head.bias": np.zeros(num_classes, dtype=dtype)}


def classifier_from_lm_params(lm_params: dict[str, np.ndarray], config: GPTConfig, num_classes: int,
                              seed: int = 0) -> tuple[GPTConfig, dict[str, np.ndarray]]:
    """(classifier config, params) from a language model's params (pretrained or freshly initialized).

    The LM head is dropped and a fresh head added; a params dict that already has a head of the right
    shape (a classifier checkpoint) keeps it. The config gets tie_weights=False: a classifier has no LM
    head to tie, and its checkpoint must not promise one.
    """
    config = config.replace(tie_weights=False)
    params = {name: value for name, value in lm_params.items() if name not in (LM_HEAD_NAME, *HEAD_NAMES)}
    head = init_head(config, num_classes, seed, dtype=params["tok_emb.weight"].dtype)
    for name in HEAD_NAMES:
        if name in lm_params and lm_params[name].shape == head[name].shape:
            head[name] = lm_params[name]
    params.update(head)
    check_classifier_params(params, config, num_classes)
    return config, lm.relay_in_place(params, config)      # the untied embedding back to rows (npgpt.model.LAYOUTS)


# ---------------------------------------------------------------------------------------------------
# the head: last real token + linear
# ---------------------------------------------------------------------------------------------------

class LastTokenCache(NamedTuple):
    """What last_token_backward needs to scatter dh back: the input's shape and dtype, the picked rows."""
    x_shape: tuple                   # (B, T, C)
    dtype: np.dtype
    positions: np.ndarray            # (B,) lengths - 1


class ClassifierHeadCache(NamedTuple):
    last_token: LastTokenCache
    cls_head: LinearLayerCache       # input: the last real tokens' hidden states h (B, C)


def check_lengths(lengths, batch: int, time: int) -> np.ndarray:
    """lengths: (B,) integers, 1 <= lengths[b] <= T (a message has at least one real token)."""
    lengths = np.asarray(lengths)
    if lengths.shape != (batch,) or not np.issubdtype(lengths.dtype, np.integer):
        raise ValueError(f"lengths must be {batch} integers (one per message), got shape {lengths.shape} "
                         f"dtype {lengths.dtype}")
    if batch and (lengths.min() < 1 or lengths.max() > time):
        raise ValueError(f"lengths must be in [1, {time}] (real tokens per message, padding excluded), got "
                         f"{lengths.min()}..{lengths.max()}; empty messages cannot be classified")
    return lengths


def last_token_forward(x, lengths):
    """h[b] = x[b, lengths[b] - 1]: each sequence's last real (non-padding) position.

    x: (B, T, C); lengths: (B,) -> h: (B, C), LastTokenCache.
    """
    B, T, _ = x.shape
    positions = check_lengths(lengths, B, T) - 1                     # (B,)
    h = x[np.arange(B), positions]                                   # (B, C), a copy (fancy indexing)
    return h, LastTokenCache(x_shape=x.shape, dtype=x.dtype, positions=positions)


def last_token_backward(dh, cache):
    """dh: (B, C) -> dx: (B, T, C), zero everywhere except dx[b, lengths[b] - 1] = dh[b].

    The selection is a gather; its gradient is the scatter back (each b picks one row, so no row is
    hit twice and plain assignment is the sum).
    """
    dx = np.zeros(cache.x_shape, dtype=cache.dtype)
    dx[np.arange(cache.x_shape[0]), cache.positions] = dh
    return dx


def classifier_head_forward(x, lengths, params, name="cls_head"):
    """logits = x[b, lengths[b] - 1] @ W^T + b with W = params[name.weight] (K, C), b = params[name.bias] (K,).

    x: (B, T, C); lengths: (B,) -> logits: (B, K), ClassifierHeadCache(last_token, cls_head). The head is npgpt.linear's linear layer, so a
    LoRA adapter on it (npgpt/lora.py) is honoured like on any other layer.
    """
    h, select_cache = last_token_forward(x, lengths)                 # (B, C)
    logits, linear_cache = linear_layer_forward(h, params, name)     # (B, K)
    return logits, ClassifierHeadCache(last_token=select_cache, cls_head=linear_cache)


def classifier_head_backward(dlogits, cache):
    """dlogits: (B, K) -> dx: (B, T, C), grads {name.weight: (K, C), name.bias: (K,)}

        dh = dlogits @ W     dW = dlogits^T @ h     db = sum_b dlogits     dx[b, lengths[b] - 1] = dh[b]
    """
    dh, grads = linear_layer_backward(dlogits, cache.cls_head)       # (B, C), {weight (K, C), bias (K,)}
    return last_token_backward(dh, cache.last_token), grads


# ---------------------------------------------------------------------------------------------------
# the loss: (class-weighted) cross-entropy over K classes
# ---------------------------------------------------------------------------------------------------

class WeightedCrossEntropyCache(NamedTuple):
    probs: np.ndarray                # (B, K) softmax(logits)
    labels: np.ndarray               # (B,)
    sample_weights: np.ndarray       # (B,) w[y_b]
    total_weight: float              # sum_b w[y_b]


def class_weighted_cross_entropy_forward(logits, labels, class_weights=None):
    """loss = sum_b w[y_b] * (-log softmax(logits_b)[y_b]) / sum_b w[y_b]   (w = 1: the plain mean).

    logits: (B, K); labels: (B,) ints in [0, K); class_weights: (K,) positive or None.
    Returns (loss as a Python float, WeightedCrossEntropyCache).
    """
    B, K = logits.shape
    labels = check_labels(labels, B, K)
    if B == 0:
        raise ValueError("the loss of an empty batch is undefined; give at least one message")
    if class_weights is None:
        sample_weights = np.ones(B, dtype=logits.dtype)
    else:
        class_weights = np.asarray(class_weights, dtype=logits.dtype)
        if class_weights.shape != (K,) or not np.all(class_weights > 0):
            raise ValueError(f"class_weights must be {K} positive numbers, got {class_weights}")
        sample_weights = class_weights[labels]                       # (B,) w[y_b]
    shifted = logits - logits.max(axis=-1, keepdims=True)            # (B, K), max 0 per row: exp cannot overflow
    probs = np.exp(shifted)
    row_sum = probs.sum(axis=-1, keepdims=True)                      # (B, 1)
    probs /= row_sum
    log_p_label = shifted[np.arange(B), labels] - np.log(row_sum[:, 0])     # (B,)
    total_weight = float(sample_weights.sum(dtype=np.float64))
    loss = -float(np.dot(sample_weights.astype(np.float64), log_p_label.astype(np.float64))) / total_weight
    return loss, WeightedCrossEntropyCache(probs=probs, labels=labels, sample_weights=sample_weights,
                                           total_weight=total_weight)


def class_weighted_cross_entropy_backward(cache, dloss=1.0):
    """dlogits[b] = dloss * w[y_b] * (softmax(logits_b) - onehot(y_b)) / sum_b w[y_b]    (B, K)."""
    dlogits = cache.probs.copy()
    dlogits[np.arange(len(cache.labels)), cache.labels] -= 1.0
    dlogits *= (cache.sample_weights * (dloss / cache.total_weight))[:, None].astype(dlogits.dtype)
    return dlogits


# ---------------------------------------------------------------------------------------------------
# the whole classifier
# ---------------------------------------------------------------------------------------------------

class ClassifierCache(NamedTuple):
    config: GPTConfig
    trunk: tuple                     # the architecture's TrunkCache (carries the params)
    head: ClassifierHeadCache


def forward(params, idx, lengths, config: GPTConfig, *, train=False, rng=None):
    """idx: (B, T) token ids (right-padded), lengths: (B,) real tokens per row -> logits (B, K),
    ClassifierCache(config, trunk, head)."""
    x, trunk_cache = lm.trunk_forward(params, idx, config, train=train, rng=rng)        # (B, T, C)
    logits, head_cache = classifier_head_forward(x, lengths, params)                    # (B, K)
    return logits, ClassifierCache(config=config, trunk=trunk_cache, head=head_cache)


def backward(dlogits, cache, trainable_names=None):
    """dlogits: (B, K) -> grads for `trainable_names` (None: every parameter).

    The backward goes only as deep as the lowest trained block (first_trained_block): finetuning the
    head alone costs no trunk backward at all, the last block alone one block's backward.
    """
    dx, grads = classifier_head_backward(dlogits, cache.head)
    names = list(cache.trunk.params) if trainable_names is None else list(trainable_names)
    first_block = first_trained_block(cache.config, names)
    if first_block is not None:
        lm.trunk_backward(dx, cache.trunk, grads, first_block=first_block)
    unknown = [name for name in names if name not in grads]
    if unknown:
        raise ValueError(f"no gradient for {unknown[:5]}: not parameters of this classifier")
    return {name: grads[name] for name in names}


def loss_and_grads(params, idx, lengths, labels, config: GPTConfig, *, class_weights=None,
                   trainable_names=None, train=False, rng=None):
    """(class-weighted) cross-entropy of the predictions at the last real tokens, and its gradients."""
    logits, cache = forward(params, idx, lengths, config, train=train, rng=rng)
    loss, loss_cache = class_weighted_cross_entropy_forward(logits, labels, class_weights)
    return loss, backward(class_weighted_cross_entropy_backward(loss_cache), cache, trainable_names)


# ---------------------------------------------------------------------------------------------------
# the classifier cut in two: a frozen bottom computed once, a trained top (only the last blocks train)
# ---------------------------------------------------------------------------------------------------

def frozen_hidden(params, idx, config: GPTConfig, first_block: int):
    """The frozen bottom's output: idx (B, T) -> (B, T, C), the input of block `first_block` (inference).

    When only blocks first_block.. (and the final norm and head) train and dropout is 0, this part's weights
    never change: finetuning computes it once per message and feeds forward_from_hidden every epoch."""
    return lm.trunk_bottom_infer(params, idx, config, first_block)


def forward_from_hidden(params, hidden, lengths, config: GPTConfig, first_block: int, *, train=False, rng=None):
    """forward() from the frozen bottom's output: hidden (B, T, C), lengths (B,) -> logits (B, K),
    ClassifierCache whose trunk part starts at block first_block (backward stops there)."""
    x, trunk_cache = lm.trunk_top_forward(params, hidden, config, first_block, train=train, rng=rng)
    logits, head_cache = classifier_head_forward(x, lengths, params)                    # (B, K)
    return logits, ClassifierCache(config=config, trunk=trunk_cache, head=head_cache)


def loss_and_grads_from_hidden(params, hidden, lengths, labels, config: GPTConfig, first_block: int, *,
                               class_weights=None, trainable_names=None, train=False, rng=None):
    """loss_and_grads from the frozen bottom's output hidden (B, T, C): the same loss and gradients, for
    trainable names that all sit at block first_block or above (anything lower would need the bottom)."""
    names = list(trainable_names) if trainable_names is not None else list(params)
    lowest = first_trained_block(config, names)
    if lowest is not None and lowest < first_block:
        raise ValueError(f"parameters below block {first_block} train ({names[:3]}...); the frozen bottom "
                         f"cannot be cached for them")
    logits, cache = forward_from_hidden(params, hidden, lengths, config, first_block, train=train, rng=rng)
    loss, loss_cache = class_weighted_cross_entropy_forward(logits, labels, class_weights)
    return loss, backward(class_weighted_cross_entropy_backward(loss_cache), cache, names)


# ---------------------------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------------------------

