"""The position-wise feed-forward network: C -> F = 4C -> C with a GELU between (twin of npgpt/feedforward.py)."""
import torch
from torch import nn

from torchgpt.gelu import GELU
from torchgpt.linear import Linear


class FeedForward(nn.Module):
    """out = fc2(gelu(fc1(x))).   x: (B, T, C) -> (B, T, C); keys fc1.weight (F, C), fc1.bias, fc2.weight (C, F), fc2.bias."""

    def __init__(self, config):
        super().__init__()
        self.fc1 = Linear(config.emb_dim, config.ff_dim)
        self.gelu = GELU()
        self.fc2 = Linear(config.ff_dim, config.emb_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.gelu(self.fc1(x)))
