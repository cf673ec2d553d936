"""RMSNorm over the last axis with a learned `scale` and no shift (Llama). Twin of npgpt/rmsnorm.py.

The parameter is named `scale` (not weight) so the state_dict keys are the canonical `...norm1.scale`.
"""
import torch
from torch import nn


def rmsnorm(x: torch.Tensor, scale: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """out = scale * x / sqrt(mean(x^2) + eps), the mean over the last axis.   x: (..., C); scale: (C,)."""
    rstd = torch.rsqrt((x * x).mean(dim=-1, keepdim=True) + eps)    # (..., 1)
    return x * rstd * scale


class RMSNorm(nn.Module):
    """nn.Module form of rmsnorm; eps is the config's norm_eps."""

    def __init__(self, emb_dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.scale = nn.Parameter(torch.ones(emb_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rmsnorm(x, self.scale, self.eps)
