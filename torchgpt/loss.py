"""Cross-entropy over logits and perplexity (twin of npgpt/loss.py), plus the book's batch/loader losses."""
import math

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """loss = -mean over kept positions of log softmax(logits)[target].

    logits: (..., V); targets: (...) integer, entries equal to ignore_index left out of the mean
    -> scalar tensor (nan when every target is ignored, as in npgpt).
    """
    if tuple(targets.shape) != tuple(logits.shape[:-1]):
        raise ValueError(f"targets shape {tuple(targets.shape)} does not match logits shape {tuple(logits.shape[:-1])}")
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1).long(), ignore_index=ignore_index)


def perplexity(loss) -> float:
    """exp(loss): the effective number of equally likely next tokens."""
    loss = float(loss)
    return math.exp(loss) if loss < 700 else math.inf


def calc_loss_batch(input_batch: torch.Tensor, target_batch: torch.Tensor, model, device) -> torch.Tensor:
    """Mean next-token cross-entropy of one (B, T) batch, moved to `device`."""
    input_batch, target_batch = input_batch.to(device), target_batch.to(device)
    return cross_entropy(model(input_batch), target_batch)


@torch.no_grad()
def calc_loss_loader(data_loader, model, device, num_batches: int | None = None) -> float:
    """Average of the per-batch losses over the first `num_batches` batches (all when None).

    Returns nan for an empty loader (nothing to average).
    """
    if len(data_loader) == 0:
        return float("nan")
    num_batches = len(data_loader) if num_batches is None else min(num_batches, len(data_loader))
    total = 0.0
    for i, (input_batch, target_batch) in enumerate(data_loader):
        if i >= num_batches:
            break
        total += calc_loss_batch(input_batch, target_batch, model, device).item()
    return total / num_batches
