"""The torch backend of classification finetuning (twin of npgpt.classifier_train.NumpyClassifierBackend).

The epoch loop, the evaluation and the metrics are gptcore.engine.classification's, shared by both backends;
this class supplies train_step / logits / numpy_params with GPTClassifier, autograd and torch's AdamW.
"""
from __future__ import annotations

import numpy as np
import torch

from gptcore.tasks.classification import check_classifier_params, frozen_block_count
from gptcore.lora import split_lora
from torchgpt.classifier import build_classifier, class_weighted_cross_entropy, set_trainable
from torchgpt.lora import attach_lora
from torchgpt.model import load_numpy_params, to_numpy_params
from torchgpt.optim import clip_grad_norm, make_adamw
from torchgpt.train import to_device


class TorchClassifierBackend:
    """GPTClassifier on `device`, loaded from a NumPy parameter dict (pretrained, from scratch or a checkpoint)."""

    name = "torch"

    def __init__(self, params: dict, config, num_classes: int, device="cpu", use_sdpa: bool = True):
        base, adapters = split_lora(params)           # LoRA adapters (npgpt.lora names) may ride along
        check_classifier_params(base, config, num_classes)
        self.config, self.num_classes, self.device = config, num_classes, torch.device(device)
        # Built on the meta device: no time spent drawing initial weights that the params replace at once.
        with torch.device("meta"):
            model = build_classifier(config, num_classes, use_sdpa=use_sdpa)
        model = model.to_empty(device="cpu")
        model = load_numpy_params(model, base)
        if adapters:
            attach_lora(model, adapters)          # LoRALinear layers with exactly these adapter values
        self.model = model.to(self.device)
        self.model.check_id_range = False   # the data pipeline makes the ids; skip the per-batch host sync
        self.optimizer = None
        self.frozen_blocks = 0      # set by prepare_training: bottom blocks that never change while training

    def prepare_training(self, trainable_names, settings, class_weights=None):
        self.settings = settings
        set_trainable(self.model, trainable_names)
        self.class_weights = None if class_weights is None else torch.tensor(
            np.asarray(class_weights), dtype=torch.float32, device=self.device)
        self.optimizer = make_adamw(self.model, lr=settings.lr, weight_decay=settings.weight_decay)
        torch.manual_seed(settings.seed)   # dropout masks
        self.frozen_blocks = frozen_block_count(self.config, trainable_names)

    def train_step(self, ids, lengths, labels) -> float:
        self.model.train()
        ids, lengths, labels = to_device((ids, lengths, labels), self.device)
        return self.update(class_weighted_cross_entropy(self.model(ids, lengths), labels, self.class_weights))

    def update(self, loss: torch.Tensor) -> float:
        """Backward of `loss`, optional clipping, one AdamW step; returns the loss as a float."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.settings.grad_clip is not None:
            clip_grad_norm([p for p in self.model.parameters() if p.requires_grad], self.settings.grad_clip)
        self.optimizer.step()
        return loss.item()

    @torch.no_grad()
    def logits(self, ids, lengths) -> np.ndarray:
        self.model.eval()
        ids, lengths = to_device((ids, lengths), self.device)
        return self.model(ids, lengths).float().cpu().numpy()

    # the frozen bottom computed once per message (gptcore.engine.classification.ClassifierFeed)

    @torch.no_grad()
    def frozen_hidden(self, ids, lengths) -> np.ndarray:
        """ids (B, T) -> (B, T, C) NumPy: the output of the frozen blocks 0..frozen_blocks-1."""
        self.model.eval()
        ids = to_device(ids, self.device)
        return self.model.trunk_bottom(ids, self.frozen_blocks).cpu().numpy()

    def train_step_from_hidden(self, hidden, lengths, labels) -> float:
        self.model.train()
        hidden, lengths, labels = to_device((torch.from_numpy(hidden), lengths, labels), self.device)
        logits = self.model.forward_from_hidden(hidden, lengths, self.frozen_blocks)
        return self.update(class_weighted_cross_entropy(logits, labels, self.class_weights))

    @torch.no_grad()
    def logits_from_hidden(self, hidden, lengths) -> np.ndarray:
        self.model.eval()
        hidden, lengths = to_device((torch.from_numpy(hidden), lengths), self.device)
        return self.model.forward_from_hidden(hidden, lengths, self.frozen_blocks).float().cpu().numpy()

    def numpy_params(self) -> dict:
        return to_numpy_params(self.model)
