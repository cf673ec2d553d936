"""Token and positional embeddings: a table lookup (torch differentiates the gather as a scatter-add).

Twin of npgpt/embedding.py. The model uses nn.Embedding (weight (V, C), state_dict key `.weight`);
these functional forms show the same lookup in one line each. check_token_ids (the twin of
npgpt.model.check_token_ids, re-exported by torchgpt.model) checks that ids can be looked up at all.
"""
from __future__ import annotations

import numpy as np
import torch

from gptcore.config import GPTConfig


def embedding(weight: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """out[b, t] = weight[idx[b, t]].   weight: (V, C); idx: (B, T) integer -> out: (B, T, C)."""
    return weight[idx]


def pos_embedding(weight: torch.Tensor, T: int) -> torch.Tensor:
    """out[t] = weight[t] for t < T.   weight: (T_max, C) -> out: (T, C), broadcast over the batch."""
    if T > weight.shape[0]:
        raise ValueError(f"sequence length {T} exceeds the context length {weight.shape[0]}")
    return weight[:T]


def check_token_ids(idx, config: GPTConfig, *, check_range: bool = True) -> torch.Tensor:
    """idx (a tensor, or anything NumPy reads) -> an integer (B, T) tensor with T <= context_length and every
    id in [0, V), or ValueError naming the problem and the fix. The tensor stays on its device.

    check_range=False skips the id range: reading idx.min()/max() is a host sync on a GPU, which a training
    loop that feeds known-good ids can spare (GPTModel.check_id_range).
    """
    if not isinstance(idx, torch.Tensor):
        idx = torch.as_tensor(np.asarray(idx))
    if idx.dtype.is_floating_point or idx.dtype.is_complex or idx.dtype == torch.bool:
        raise ValueError(f"token ids must be an integer tensor, got dtype {idx.dtype}; "
                         f"encode text with a tokenizer and pass torch.long ids")
    if idx.ndim != 2:
        raise ValueError(f"token ids must have shape (B, T), got {tuple(idx.shape)}; "
                         f"use idx.unsqueeze(0) for a single sequence")
    T = idx.shape[1]
    if T > config.context_length:
        raise ValueError(f"sequence length {T} exceeds the context length {config.context_length}; "
                         f"crop the input to its last {config.context_length} tokens")
    if check_range and idx.numel():
        low, high = int(idx.min()), int(idx.max())
        if low < 0 or high >= config.vocab_size:
            raise ValueError(f"token ids must be in [0, {config.vocab_size}), got values {low}..{high}; "
                             f"use a tokenizer whose vocabulary matches the model's vocab_size")
    return idx


def token_positions(idx, kv_cache=None, attention_mask=None) -> torch.Tensor:
    """The positions of checked token ids idx (B, T): 0..T-1, or with a KV cache (decoding) each new token's
    place after the cached ones (kv_cache.begin; attention_mask (B, T), 0 at left padding, goes with it).
    Both architectures' trunks use it: GPT-2 looks the positions up, Llama rotates by them."""
    T = idx.shape[1]
    if kv_cache is None and attention_mask is not None:
        raise ValueError("attention_mask (left padding) needs a kv_cache; see torchgpt.generate for batches")
    if kv_cache is None:
        return torch.arange(T, device=idx.device)                        # (T,)
    return kv_cache.begin(T, attention_mask)                             # (B, T), after the cached ones
