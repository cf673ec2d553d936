"""Grouped-query attention (Llama), twin of npgpt/gqa_attention.py: H query heads share n_kv_heads key/value
heads, causal, no biases, queries and keys rotated by RoPE at their absolute positions.

use_sdpa=True computes the same with F.scaled_dot_product_attention (the fast path); the explicit
attention_core is the reference the parity tests compare with NumPy.
"""
import torch
import torch.nn.functional as F
from torch import nn

from torchgpt.attention import attention_core, causal_mask
from torchgpt.linear import Linear, linear_together
from torchgpt.rope import rope


def repeat_kv(t: torch.Tensor, group: int) -> torch.Tensor:
    """(B, KV, S, D) -> (B, KV * G, S, D), head h a copy of head h // G."""
    return t if group == 1 else t.repeat_interleave(group, dim=1)


def gqa_attention(x, W_query, W_key, W_value, out_proj, n_heads, n_kv_heads, cos, sin):
    """The function form (weights as tensors, (out, in)): x (B, T, C) -> (B, T, C), causal, no cache."""
    B, T, _ = x.shape
    D = W_query.shape[0] // n_heads
    q = (x @ W_query.T).view(B, T, n_heads, D).transpose(1, 2)               # (B, H, T, D)
    k = (x @ W_key.T).view(B, T, n_kv_heads, D).transpose(1, 2)              # (B, KV, T, D)
    v = (x @ W_value.T).view(B, T, n_kv_heads, D).transpose(1, 2)
    q, k = rope(q, cos, sin), rope(k, cos, sin)
    group = n_heads // n_kv_heads
    context = attention_core(q, repeat_kv(k, group), repeat_kv(v, group), hide=causal_mask(T, x.device))
    return context.transpose(1, 2).reshape(B, T, -1) @ out_proj.T


class GroupedQueryAttention(nn.Module):
    """Keys W_query.weight (C, C), W_key.weight, W_value.weight (KV*D, C), out_proj.weight (C, C); no biases."""

    def __init__(self, config, use_sdpa: bool = False):
        super().__init__()
        C, KVD = config.emb_dim, config.kv_dim
        self.n_heads, self.n_kv_heads, self.head_dim = config.n_heads, config.n_kv_heads, config.head_dim
        self.use_sdpa = use_sdpa
        self.W_query = Linear(C, C, bias=False)
        self.W_key = Linear(C, KVD, bias=False)
        self.W_value = Linear(C, KVD, bias=False)
        self.out_proj = Linear(C, C, bias=False)

    def _split(self, t: torch.Tensor, heads: int) -> torch.Tensor:
        B, T, _ = t.shape
        return t.view(B, T, heads, self.head_dim).transpose(1, 2)             # (B, heads, T, D)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, kv_cache=None) -> torch.Tensor:
        """x: (B, T, C); cos, sin: torchgpt.rope.rope_tables of the T new positions -> (B, T, C).

        kv_cache: optional torchgpt.kvcache.LayerKV (decoding): the rotated keys and the values are stored per
        kv head after the cached ones and the queries attend over all of them.
        """
        B, T, _ = x.shape
        q, k, v = linear_together(x, (self.W_query, self.W_key, self.W_value))  # one product when side by side
        q = rope(self._split(q, self.n_heads), cos, sin)                      # (B, H, T, D)
        k = rope(self._split(k, self.n_kv_heads), cos, sin)                   # (B, KV, T, D)
        v = self._split(v, self.n_kv_heads)
        if kv_cache is not None:
            k, v = kv_cache.append(k, v)                                      # (B, KV, S, D)
            hide = kv_cache.hide
        else:
            hide = causal_mask(T, x.device)
        if self.use_sdpa:     # enable_gqa: SDPA reads each key/value head for its group, no (B, H, S, D) copies
            if kv_cache is None:
                context = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
            else:
                context = F.scaled_dot_product_attention(q, k, v, attn_mask=None if hide is None else ~hide,
                                                         enable_gqa=True)
        else:
            group = self.n_heads // self.n_kv_heads
            context = attention_core(q, repeat_kv(k, group), repeat_kv(v, group), hide=hide)   # (B, H, T, D)
        return self.out_proj(context.transpose(1, 2).reshape(B, T, -1))
