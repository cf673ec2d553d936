"""The NumPy backend of the classification loop (gptcore.engine.classification.train_classifier).

    backend = NumpyClassifierBackend(params, config, num_classes)      # or torchgpt's TorchClassifierBackend
    backend.prepare_training(trainable_names, settings, class_weights)
    history = train_classifier(backend, train, val, test, settings)
"""
from __future__ import annotations

import numpy as np

from gptcore.engine.classification import ClassifierSettings
from gptcore.lora import split_lora
from gptcore.tasks.classification import frozen_block_count
from npgpt import classifier
from npgpt.optim import AdamW, clip_grad_norm


class NumpyClassifierBackend:
    """The classifier in npgpt: hand-written forward/backward and npgpt.optim.AdamW over the trainable part."""

    name = "numpy"

    def __init__(self, params: dict, config, num_classes: int):
        # LoRA adapters (npgpt.lora) may ride along in params: the model's linear layers apply them.
        classifier.check_classifier_params(split_lora(params)[0], config, num_classes)
        self.params, self.config, self.num_classes = params, config, num_classes
        self.trainable_names = None
        self.frozen_blocks = 0      # set by prepare_training: bottom blocks that never change while training

    def prepare_training(self, trainable_names, settings: ClassifierSettings, class_weights=None):
        self.trainable_names = list(trainable_names)
        self.settings = settings
        self.class_weights = None if class_weights is None else np.asarray(class_weights, dtype=np.float64)
        # AdamW updates the arrays of this sub-dict in place: they are the model's own arrays.
        self.trainable = {name: self.params[name] for name in self.trainable_names}
        self.optimizer = AdamW(lr=settings.lr, weight_decay=settings.weight_decay)
        self.dropout_rng = np.random.default_rng(settings.seed)
        self.frozen_blocks = frozen_block_count(self.config, self.trainable_names)

    def train_step(self, ids, lengths, labels) -> float:
        loss, grads = classifier.loss_and_grads(
            self.params, ids, lengths, labels, self.config, class_weights=self.class_weights,
            trainable_names=self.trainable_names, train=True, rng=self.dropout_rng)
        self.update(grads)
        return loss

    def update(self, grads) -> None:
        """Optional clipping, then one AdamW step on the trainable arrays (in place)."""
        if self.settings.grad_clip is not None:
            clip_grad_norm(grads, self.settings.grad_clip)
        self.optimizer.step(self.trainable, grads)

    def logits(self, ids, lengths) -> np.ndarray:
        return classifier.forward(self.params, ids, lengths, self.config)[0]

    # the frozen bottom computed once per message (gptcore.engine.classification.ClassifierFeed)

    def frozen_hidden(self, ids, lengths) -> np.ndarray:
        """ids (B, T) -> (B, T, C): the output of the frozen blocks 0..frozen_blocks-1."""
        return classifier.frozen_hidden(self.params, ids, self.config, self.frozen_blocks)

    def train_step_from_hidden(self, hidden, lengths, labels) -> float:
        loss, grads = classifier.loss_and_grads_from_hidden(
            self.params, hidden, lengths, labels, self.config, self.frozen_blocks, class_weights=self.class_weights,
            trainable_names=self.trainable_names, train=True, rng=self.dropout_rng)
        self.update(grads)
        return loss

    def logits_from_hidden(self, hidden, lengths) -> np.ndarray:
        return classifier.forward_from_hidden(self.params, hidden, lengths, self.config, self.frozen_blocks)[0]

    def numpy_params(self) -> dict:
        return self.params


