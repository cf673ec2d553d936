"""Token and positional embeddings: a table lookup (torch differentiates the gather as a scatter-add).

Twin of npgpt/embedding.py. The model uses nn.Embedding (weight (V, C), state_dict key `.weight`);
these functional forms show the same lookup in one line each.
"""
import torch


def embedding(weight: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """out[b, t] = weight[idx[b, t]].   weight: (V, C); idx: (B, T) integer -> out: (B, T, C)."""
    return weight[idx]


def pos_embedding(weight: torch.Tensor, T: int) -> torch.Tensor:
    """out[t] = weight[t] for t < T.   weight: (T_max, C) -> out: (T, C), broadcast over the batch."""
    if T > weight.shape[0]:
        raise ValueError(f"sequence length {T} exceeds the context length {weight.shape[0]}")
    return weight[:T]
