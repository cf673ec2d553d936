"""LayerNorm over the last axis with a learned `scale` and `shift` (GPT-2: eps = 1e-5, biased variance).

Twin of npgpt/layernorm.py. The parameters are named `scale` and `shift` (not weight/bias) so the
state_dict keys are the canonical names `...norm1.scale`, `...norm1.shift`.
"""
import torch
import torch.nn.functional as F
from torch import nn


def layernorm(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """out = scale * (x - mean) / sqrt(var + eps) + shift, statistics over the last axis (written out).

    x: (..., C); scale, shift: (C,) -> out: (..., C). The variance is the biased one (divide by C).
    """
    mean = x.mean(dim=-1, keepdim=True)                          # (..., 1)
    var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)           # (..., 1), biased
    xhat = (x - mean) * torch.rsqrt(var + eps)                   # (..., C)
    return xhat * scale + shift


class LayerNorm(nn.Module):
    """nn.Module form; forward uses torch's fused F.layer_norm, which computes the same formula as
    `layernorm` above (tests/test_torchgpt.py checks the two agree)."""

    def __init__(self, emb_dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.scale = nn.Parameter(torch.ones(emb_dim))
        self.shift = nn.Parameter(torch.zeros(emb_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, (x.shape[-1],), self.scale, self.shift, self.eps)
