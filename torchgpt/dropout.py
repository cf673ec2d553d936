"""Inverted dropout: out = x * keep / (1 - p) (twin of npgpt/dropout.py).

For parity tests every dropout here can take an explicit boolean keep-mask, so torch and NumPy can be
fed the SAME mask; without one, torch draws its own (nn.Dropout) in training mode.
"""
import torch
import torch.nn.functional as F
from torch import nn


def dropout_mask(shape, p: float, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """Boolean keep-mask: True where a uniform draw is >= p (each element kept with probability 1 - p)."""
    return torch.rand(shape, generator=generator, device=device) >= p


def dropout(x: torch.Tensor, p: float, mask=None, training: bool = True) -> torch.Tensor:
    """out = x * keep / (1 - p).

    x: any shape; mask: optional bool keep-mask of x's shape (torch tensor or NumPy array). With a mask it is
    applied as given (whatever `training` says); without one, torch's own dropout when training and p > 0,
    else the identity.
    """
    if mask is None:
        if not training or p == 0.0:
            return x
        return F.dropout(x, p, training=True)
    mask = torch.as_tensor(mask, device=x.device)
    if tuple(mask.shape) != tuple(x.shape):
        raise ValueError(f"dropout mask shape {tuple(mask.shape)} does not match input shape {tuple(x.shape)}")
    return x * mask * (1.0 / (1.0 - p))


class Dropout(nn.Dropout):
    """nn.Dropout whose forward also accepts an explicit keep-mask: forward(x, mask=None)."""

    def forward(self, x: torch.Tensor, mask=None) -> torch.Tensor:
        if mask is None:
            return super().forward(x)
        return dropout(x, self.p, mask=mask)
