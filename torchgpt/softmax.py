"""Softmax along one axis, numerically stable (twin of npgpt/softmax.py)."""
import torch


def softmax(x: torch.Tensor, axis: int = -1) -> torch.Tensor:
    """out = exp(x - max x) / sum exp(x - max x) along `axis`.   x: any shape -> same shape.

    Subtracting the row maximum changes nothing mathematically and keeps exp() from overflowing.
    torch.softmax computes the same thing fused; the attention layers use that.
    """
    shifted = x - x.amax(dim=axis, keepdim=True)
    exps = torch.exp(shifted)
    return exps / exps.sum(dim=axis, keepdim=True)
