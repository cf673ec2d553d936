"""Linear layer y = x W^T + b, W stored (out, in): exactly nn.Linear, which every model here uses.

Twin of npgpt/linear.py. Linear layers are plain nn.Linear modules (keys `.weight`, `.bias`) so they can be
wrapped later (LoRA) without changing parameter names.
"""
import torch
from torch import nn

Linear = nn.Linear


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """out = x @ weight.T + bias.   x: (..., in); weight: (out, in); bias: (out,) or None -> (..., out)."""
    out = x @ weight.T
    if bias is not None:
        out = out + bias
    return out
