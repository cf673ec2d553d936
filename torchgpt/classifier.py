"""A GPT as a text classifier (twin of npgpt/classifier.py):

    x = model.trunk(idx)                                         (B, T, C) final-normed hidden states
    h = x[b, lengths[b] - 1]                                     (B, C)    each message's last real token
    logits = cls_head(h)                                         (B, K)
    loss = F.cross_entropy(logits, y, weight=class_weights)      a weighted mean over the batch

GPTClassifier is a GPTModel whose language-model head `out_head` is replaced by `cls_head`, an
Linear(C, K) with bias; LlamaClassifier the same for a LlamaModel; build_classifier(config, K) picks the
one of config.arch. The state_dict holds exactly gptcore.tasks.classification.classifier_param_shapes'
names (the trunk's canonical names + cls_head.weight, cls_head.bias), so one parameter dict loads into
both backends. The prediction is read at the last real token, never at position -1 (see npgpt's
module docstring for why).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gptcore.tasks.classification import HEAD_INIT_STD, check_num_classes
from gptcore.config import GPTConfig
from torchgpt.gpt2 import GPTModel
from torchgpt.llama import LlamaModel
from torchgpt.linear import Linear


def last_token(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """x: (B, T, C), lengths: (B,) real tokens per row -> (B, C), row b taken at position lengths[b] - 1."""
    B, T = x.shape[:2]
    if tuple(lengths.shape) != (B,):
        raise ValueError(f"lengths must have shape ({B},) (one per message), got {tuple(lengths.shape)}")
    if B and (int(lengths.min()) < 1 or int(lengths.max()) > T):
        raise ValueError(f"lengths must be in [1, {T}] (real tokens per message, padding excluded), got "
                         f"{int(lengths.min())}..{int(lengths.max())}; empty messages cannot be classified")
    return x[torch.arange(B, device=x.device), lengths.to(x.device).long() - 1]


def class_weighted_cross_entropy(logits: torch.Tensor, labels: torch.Tensor,
                                 class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """sum_b w[y_b] CE_b / sum_b w[y_b] (w = None: the plain mean). logits (B, K), labels (B,) -> scalar."""
    if class_weights is not None:
        class_weights = class_weights.to(device=logits.device, dtype=logits.dtype)
    return F.cross_entropy(logits, labels.to(logits.device).long(), weight=class_weights)


class ClassifierHead:
    """What turns a language model class into a classifier: `out_head` removed, `cls_head` (Linear(C, K), with
    bias) added, forward(idx, lengths) -> logits (B, K) read at each row's last real token. Mixed in before the
    model class (GPTClassifier, LlamaClassifier), whose trunk() it calls.

    config.tie_weights is ignored (there is no LM head to tie); self.config has tie_weights=False.
    """

    def __init__(self, config: GPTConfig, num_classes: int, use_sdpa: bool = False, seed: int | None = None):
        # Built tied so the model allocates and initializes no separate (V, C) head, which is dropped anyway.
        super().__init__(config.replace(tie_weights=True), use_sdpa=use_sdpa, seed=seed)
        del self.out_head
        self.config = config.replace(tie_weights=False)
        self.num_classes = check_num_classes(num_classes)
        self.cls_head = Linear(config.emb_dim, self.num_classes)
        generator = None if seed is None else torch.Generator().manual_seed(int(seed) + 1)
        with torch.no_grad():
            self.cls_head.weight.copy_(torch.randn(self.cls_head.weight.shape, generator=generator) * HEAD_INIT_STD)
            self.cls_head.bias.zero_()

    def forward(self, idx, lengths) -> torch.Tensor:
        """idx: (B, T) right-padded token ids, lengths: (B,) real tokens per row -> logits (B, K)."""
        x = self.trunk(idx)                                             # (B, T, C)
        if not isinstance(lengths, torch.Tensor):
            lengths = torch.as_tensor(np.asarray(lengths))
        return self.cls_head(last_token(x, lengths))                     # (B, K)

    def forward_from_hidden(self, hidden: torch.Tensor, lengths, first_block: int) -> torch.Tensor:
        """forward() from the frozen bottom's output (trunk_bottom(idx, first_block)): hidden (B, T, C),
        lengths (B,) -> logits (B, K). Twin of npgpt.classifier.forward_from_hidden."""
        x = self.trunk_top(hidden, first_block)                          # (B, T, C)
        if not isinstance(lengths, torch.Tensor):
            lengths = torch.as_tensor(np.asarray(lengths))
        return self.cls_head(last_token(x, lengths))                     # (B, K)


class GPTClassifier(ClassifierHead, GPTModel):
    """GPT-2 as a classifier: GPTModel with `out_head` removed and `cls_head` added (see ClassifierHead)."""


class LlamaClassifier(ClassifierHead, LlamaModel):
    """Llama as a classifier: LlamaModel with `out_head` removed and `cls_head` added (see ClassifierHead)."""


# config.arch -> the classifier class (twin of torchgpt.model.ARCHITECTURES)
CLASSIFIERS = {"gpt2": GPTClassifier, "llama": LlamaClassifier}


def build_classifier(config: GPTConfig, num_classes: int, **kwargs) -> nn.Module:
    """The classifier of config.arch (GPT-2: GPTClassifier), built with kwargs (use_sdpa, seed)."""
    if config.arch not in CLASSIFIERS:
        raise ValueError(f"torchgpt has no classifier for architecture {config.arch!r}; it knows {sorted(CLASSIFIERS)}")
    return CLASSIFIERS[config.arch](config, num_classes, **kwargs)


def set_trainable(model: nn.Module, trainable_names) -> int:
    """requires_grad=True for exactly the parameters named in `trainable_names` (the rest frozen);
    returns the number of trainable numbers. Unknown names are an error."""
    names = set(trainable_names)
    known = dict(model.named_parameters())
    unknown = sorted(names - set(known))
    if unknown:
        raise ValueError(f"no parameters named {unknown[:5]} in the model")
    for name, param in known.items():
        param.requires_grad_(name in names)
    return sum(param.numel() for name, param in known.items() if name in names)
