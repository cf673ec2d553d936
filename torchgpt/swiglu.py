"""The SwiGLU feed-forward of Llama (twin of npgpt/swiglu.py): down(silu(gate(x)) * up(x)), no biases."""
import torch
import torch.nn.functional as F
from torch import nn

from torchgpt.linear import Linear, linear_together


def swiglu(x: torch.Tensor, gate_weight, up_weight, down_weight) -> torch.Tensor:
    """x: (..., C); gate_weight, up_weight: (F, C); down_weight: (C, F) -> (..., C)."""
    return (F.silu(x @ gate_weight.T) * (x @ up_weight.T)) @ down_weight.T


class SwiGLU(nn.Module):
    """Keys gate.weight, up.weight (F, C), down.weight (C, F): plain nn.Linear layers, so LoRA can wrap them."""

    def __init__(self, config):
        super().__init__()
        self.gate = Linear(config.emb_dim, config.ff_dim, bias=False)
        self.up = Linear(config.emb_dim, config.ff_dim, bias=False)
        self.down = Linear(config.ff_dim, config.emb_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = linear_together(x, (self.gate, self.up))       # one product when stored side by side
        return self.down(F.silu(gate) * up)
