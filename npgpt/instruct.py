"""Instruction finetuning in NumPy (the twin of torchgpt/instruct.py and torchgpt.train.Trainer for this task):
the backend that gptcore.engine.training.TrainingLoop drives, the loss over a whole split, and the answers.

    backend = InstructionBackend(params, config, make_batches, settings, trainable=names, eval_sets=...)
    history = TrainingLoop(backend, settings, run_log=RunLog("runs/instruct")).fit()

One step: the next batch of padded (inputs, targets) from make_batches(epoch) (gptcore.tasks.instruct.
instruction_batches: the same order the torch backend trains on), npgpt.model.loss_and_grads (the prompt's
and padding's targets are -100, left out of the mean), the gradients of the trainable parameters only
(LoRA: every lora_A and lora_B; full finetuning: every parameter), global-norm clipping over them, AdamW.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from gptcore.engine.training import TrainingBackend, TrainSettings
from gptcore.formats.checkpoint import save_checkpoint
from gptcore.tasks import instruct as core_instruct
from gptcore.tasks.instruct import IGNORE_INDEX
from npgpt import model
from npgpt.generate import stream_generate
from npgpt.loss import cross_entropy_forward, perplexity
from npgpt.optim import AdamW, clip_grad_norm
from npgpt.train import NumpyOptimizerState


def mean_loss(params, config, batches) -> float:
    """The mean cross-entropy over every target token of `batches` ((inputs, targets) arrays; -100 left out):
    the token-weighted mean over the whole split (torchgpt.instruct.mean_loss gives the same number)."""
    total, count = 0.0, 0
    for inputs, targets in batches:
        kept = int((targets != IGNORE_INDEX).sum())
        if kept:
            logits = model.infer(params, inputs, config)                    # (B, T, V), no backward cache
            total += float(cross_entropy_forward(logits, targets, overwrite_logits=True)[0]) * kept
            count += kept
    return total / count if count else math.nan


class InstructionBackend(NumpyOptimizerState, TrainingBackend):
    """The parameter dict (base, and LoRA adapters when given; trained in place), AdamW over the `trainable`
    names only, the dropout generator and the position in the batch order (epoch, batches used in it).

    make_batches(epoch) -> iterable of (inputs, targets); eval_sets: {name: () -> iterable of batches}, each
    evaluation logs <name>_loss (the mean over the first settings.eval_batches batches' target tokens)."""

    name = "numpy"

    def __init__(self, params: dict, config, make_batches, settings: TrainSettings, *, trainable, eval_sets=None,
                 metadata: dict | None = None):
        # One layout whatever the weights came from, as npgpt.train.NumpyBackend (a resumed run repeats the
        # original's products bit for bit); the dict's entries are replaced, not its values.
        self.params = model.relay_in_place(params, config)
        self.config, self.settings = config, settings
        self.make_batches, self.eval_sets = make_batches, dict(eval_sets or {})
        self.trainable = sorted(trainable)
        missing = [name for name in self.trainable if name not in params]
        if missing:
            raise ValueError(f"trainable parameters {missing[:3]} are not in the model's parameters")
        self.metadata = dict(metadata or {})
        self.optimizer = AdamW(lr=settings.lr, betas=settings.betas, weight_decay=settings.weight_decay)
        self.dropout_rng = np.random.default_rng(settings.seed)
        self._epoch, self.position, self._iterator = 0, 0, None
        self.grads: dict | None = None          # between compute_gradients and apply_update

    @property
    def epoch(self) -> int:
        return self._epoch

    def _next_batch(self):
        for _ in range(2):
            if self._iterator is None:
                self._iterator = iter(self.make_batches(self._epoch))
                for _ in range(self.position):      # resuming inside an epoch: skip what was used
                    next(self._iterator)
            batch = next(self._iterator, None)
            if batch is not None:
                self.position += 1
                return batch
            self._epoch, self.position, self._iterator = self._epoch + 1, 0, None
        raise ValueError(f"epoch {self._epoch} has no batches; give more records or a smaller --batch-size")

    # ----- one step ----------------------------------------------------------------------------------------

    def compute_gradients(self) -> tuple[float, int]:
        inputs, targets = self._next_batch()
        loss, self.grads = model.loss_and_grads(self.params, inputs, targets, self.config, train=True,
                                                rng=self.dropout_rng, trainable_names=self.trainable)
        return float(loss), int(inputs.size)

    def clip_gradients(self, max_norm: float) -> float:
        return clip_grad_norm(self.grads, max_norm)

    def apply_update(self, lr: float) -> None:
        self.optimizer.step({name: self.params[name] for name in self.trainable}, self.grads, lr=lr)
        self.grads = None

    def discard_gradients(self) -> None:
        self.grads = None

    # ----- measuring ---------------------------------------------------------------------------------------

    def evaluate(self) -> dict:
        results = {}
        for name, make_batches in self.eval_sets.items():
            batches = (batch for i, batch in zip(range(self.settings.eval_batches), make_batches()))
            results[f"{name}_loss"] = mean_loss(self.params, self.config, batches)
            results[f"{name}_perplexity"] = perplexity(results[f"{name}_loss"])
        return results

    # ----- state -------------------------------------------------------------------------------------------

    def data_state(self) -> dict:
        return {"epoch": self._epoch, "position": self.position}

    def load_data_state(self, state: dict) -> None:
        self._epoch, self.position, self._iterator = int(state["epoch"]), int(state["position"]), None

    def write_checkpoint(self, path: Path, training_state: dict) -> Path:
        return save_checkpoint(path, self.params, self.config, training_state=training_state,
                               metadata={"backend": "numpy", **self.metadata})


def answer_records(params, config, records: list[dict], tokenizer, *, max_new_tokens: int = 256,
                   progress: bool = True, key: str = core_instruct.RESPONSE_KEY,
                   instruction_format: core_instruct.InstructionFormat = core_instruct.InstructionFormat()):
    """Copies of `records` with the model's greedy answer under "model_response": the rules of
    torchgpt.instruct.answer_records (the same tokens for the same weights)."""
    answered = []
    for record in tqdm(records, desc="answering", unit="record", disable=not progress):
        stream = stream_generate(params, config, instruction_format.prompt_ids(record, tokenizer), max_new_tokens,
                                 temperature=0.0, stop_ids=instruction_format.stop_ids)
        answered.append({**record, key: instruction_format.answer_from_stream(stream, tokenizer)})
    return answered
