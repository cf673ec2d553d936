"""GELU, tanh approximation, as GPT-2 uses it (twin of npgpt/gelu.py)."""
import math

import torch
import torch.nn.functional as F
from torch import nn

SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
GELU_CUBIC = 0.044715


def gelu(x: torch.Tensor) -> torch.Tensor:
    """out = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).   x: any shape -> same shape.

    The same numbers as F.gelu(x, approximate="tanh") (checked in tests); written out to show the formula.
    """
    return 0.5 * x * (1.0 + torch.tanh(SQRT_2_OVER_PI * (x + GELU_CUBIC * x * x * x)))


class GELU(nn.Module):
    """nn.Module form; forward uses torch's fused F.gelu(approximate="tanh"), the same formula as `gelu`
    above in one kernel instead of seven (decoding runs it on one row per layer per token, where the
    per-operation cost dominates); parity_tests/test_gelu.py checks it against NumPy."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x, approximate="tanh")
