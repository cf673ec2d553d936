"""Inverted dropout: out = x * keep / (1 - p) (twin of npgpt/dropout.py).

dropout_mask and dropout(x, p, mask=...) are the twins of npgpt's dropout_mask and dropout_forward: with an
explicit keep-mask, torch and NumPy apply the SAME dropout. The models use `Dropout` (nn.Dropout), which draws
its own mask in training mode and is the identity in eval mode; the parity tests feed it npgpt's masks from
outside (parity_tests/conftest.py: fed_dropout_masks), so no model forward carries a mask argument.
"""
import torch
import torch.nn.functional as F
from torch import nn

Dropout = nn.Dropout


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
