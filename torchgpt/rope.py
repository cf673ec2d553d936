"""Rotary position embedding (RoPE), the rotate-half convention of Hugging Face's Llama. Twin of
npgpt/rope.py (read its docstring for the math):

    out = x * cos + rotate_half(x) * sin,   rotate_half(x) = (-x2, x1),   angle = position * theta^(-2j/D)

The frequencies (with Llama 3's "llama3" scaling) are one shared formula, gptcore.arch.llama.inverse_frequencies.
"""
import torch
from torch import nn

from gptcore.arch.llama import inverse_frequencies


def rope_inverse_frequencies(head_dim: int, theta: float, device=None, scaling=None) -> torch.Tensor:
    """inv_freq_j = theta^(-2j / D), j = 0 .. D/2 - 1, float64: (D/2,); Llama 3's scaling when `scaling` is
    a "llama3" dict (config.rope_scaling)."""
    return torch.from_numpy(inverse_frequencies(head_dim, theta, scaling)).to(device)


def rope_tables(positions: torch.Tensor, head_dim: int, theta: float, dtype=torch.float32, scaling=None):
    """positions (T,) or (B, T) -> cos, sin (T, D) or (B, 1, T, D) in `dtype` (angles in float64, rounded once).
    scaling: config.rope_scaling (None, or Llama 3's "llama3" dict)."""
    inv_freq = rope_inverse_frequencies(head_dim, theta, device=positions.device, scaling=scaling)
    angles = positions[..., None].to(torch.float64) * inv_freq                # (..., T, D/2)
    angles = torch.cat([angles, angles], dim=-1)                              # (..., T, D)
    if angles.dim() == 3:
        angles = angles[:, None]                                              # (B, 1, T, D)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) on the last axis."""
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, H, T, D); cos, sin: rope_tables(...) -> x rotated, (B, H, T, D)."""
    return x * cos + rotate_half(x) * sin


class RotaryEmbedding(nn.Module):
    """No parameters: rotates queries or keys at the given positions with base `theta`."""

    def __init__(self, head_dim: int, theta: float, scaling: dict | None = None):
        super().__init__()
        self.head_dim, self.theta, self.scaling = head_dim, theta, scaling

    def tables(self, positions: torch.Tensor, dtype=torch.float32):
        return rope_tables(positions, self.head_dim, self.theta, dtype, scaling=self.scaling)

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        cos, sin = self.tables(positions, x.dtype)
        return rope(x, cos, sin)
