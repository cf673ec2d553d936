"""Self-attention in the book's teaching steps, then the causal multi-head attention GPT-2 uses.

Twin of npgpt/attention.py:
    simple_attention        no weights: scores are dot products of the inputs themselves
    SelfAttentionV1         trainable query/key/value matrices as raw nn.Parameters
    SelfAttentionV2         the same with nn.Linear layers (keys W_query.weight, ...)
    CausalAttention         one head, causal mask, dropout on the attention weights
    MultiHeadAttention      H heads of width D = C // H in parallel, output projection; GPT-2's layer

The explicit computation (scores, mask, softmax, dropout, weighted sum) is the reference that the parity
tests compare with NumPy. MultiHeadAttention(use_sdpa=True) computes the same thing with
F.scaled_dot_product_attention (a fused kernel, much faster on GPUs); tests check both paths agree.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from torchgpt.dropout import Dropout
from torchgpt.linear import Linear, linear_together


def simple_attention(x: torch.Tensor) -> torch.Tensor:
    """context_t = sum_s softmax_s(x_t . x_s) x_s, no trainable weights.   x: (T, C) -> (T, C)."""
    scores = x @ x.T                                 # (T, T)
    weights = torch.softmax(scores, dim=-1)          # (T, T), rows sum to 1
    return weights @ x                               # (T, C)


def causal_mask(T: int, device=None) -> torch.Tensor:
    """(T, T) bool, True above the diagonal: the future positions s > t that query t may not see."""
    return torch.triu(torch.ones(T, T, dtype=torch.bool, device=device), diagonal=1)


def attention_core(q, k, v, *, hide=None, dropout: Dropout | None = None):
    """context = dropout(softmax(q k^T / sqrt(D) with the hidden keys at -inf)) v.

    q: (..., T, D); k, v: (..., S, D); hide: bool, broadcastable to (..., T, S), True where query t may not
    see key s (the causal mask's future, or a KV cache's future and padding), or None (every key seen)
    -> context: (..., T, D)
    """
    scores = q @ k.transpose(-2, -1)                 # (..., T, S)
    scores = scores * (1.0 / math.sqrt(q.shape[-1]))
    if hide is not None:
        scores = scores.masked_fill(hide, float("-inf"))
    weights = torch.softmax(scores, dim=-1)          # (..., T, S)
    if dropout is not None:
        weights = dropout(weights)
    return weights @ v                               # (..., T, D)


class SelfAttentionV1(nn.Module):
    """Step 2: trainable projections as raw matrices, stored (out, in) = (D, C) like nn.Linear weights."""

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.W_query = nn.Parameter(torch.randn(d_out, d_in) * 0.02)
        self.W_key = nn.Parameter(torch.randn(d_out, d_in) * 0.02)
        self.W_value = nn.Parameter(torch.randn(d_out, d_in) * 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., T, C) -> (..., T, D); every position sees every other (no mask)."""
        q, k, v = x @ self.W_query.T, x @ self.W_key.T, x @ self.W_value.T
        return attention_core(q, k, v)


class SelfAttentionV2(nn.Module):
    """Step 3: the same with nn.Linear (better init, optional bias); keys W_query.weight, ..."""

    def __init__(self, d_in: int, d_out: int, qkv_bias: bool = False):
        super().__init__()
        self.W_query = Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = Linear(d_in, d_out, bias=qkv_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., T, C) -> (..., T, D), no mask."""
        return attention_core(self.W_query(x), self.W_key(x), self.W_value(x))


class CausalAttention(nn.Module):
    """Step 4: one head that only looks back (s <= t), with dropout on the attention weights.

    Twin of npgpt single_head_attention_forward(causal=True).
    """

    def __init__(self, d_in: int, d_out: int, context_length: int, drop_rate: float, qkv_bias: bool = False):
        super().__init__()
        self.W_query = Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = Linear(d_in, d_out, bias=qkv_bias)
        self.dropout = Dropout(drop_rate)
        # A buffer follows .to(device) but is not a parameter; persistent=False keeps it out of state_dict.
        self.register_buffer("mask", causal_mask(context_length), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, T, C) -> (B, T, D)."""
        T = x.shape[-2]
        return attention_core(self.W_query(x), self.W_key(x), self.W_value(x),
                              hide=self.mask[:T, :T], dropout=self.dropout)


class MultiHeadAttention(nn.Module):
    """Causal multi-head self-attention as in GPT-2 (twin of npgpt multihead_attention_forward).

    All heads are computed at once: project to (B, T, C), split into (B, H, T, D), attend, merge back,
    then out_proj. use_sdpa=True uses the fused F.scaled_dot_product_attention (same math; in training its
    dropout draws its mask inside the kernel, so `self.dropout` then runs only on the explicit path).
    """

    def __init__(self, d_in: int, d_out: int, context_length: int, drop_rate: float, n_heads: int,
                 qkv_bias: bool = False, use_sdpa: bool = False):
        super().__init__()
        if d_out % n_heads != 0:
            raise ValueError(f"d_out ({d_out}) must be divisible by n_heads ({n_heads})")
        self.d_out, self.n_heads, self.head_dim = d_out, n_heads, d_out // n_heads
        self.use_sdpa = use_sdpa
        self.W_query = Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = Linear(d_in, d_out, bias=qkv_bias)
        self.out_proj = Linear(d_out, d_out)
        self.dropout = Dropout(drop_rate)
        self.register_buffer("mask", causal_mask(context_length), persistent=False)

    def _split_heads(self, t: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> (B, H, T, D)."""
        B, T, _ = t.shape
        return t.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, kv_cache=None) -> torch.Tensor:
        """x: (B, T, C) -> (B, T, C).

        kv_cache: optional torchgpt.kvcache.LayerKV (decoding, inference): the new keys and values are stored
        after the cached ones and the queries attend over all of them.
        """
        B, T, _ = x.shape
        q, k, v = (self._split_heads(t)              # (B, H, T, D) each; one product when stored side by side
                   for t in linear_together(x, (self.W_query, self.W_key, self.W_value)))
        if kv_cache is not None:
            k, v = kv_cache.append(k, v)             # (B, H, S, D): cached keys/values, then the new ones
            hide = kv_cache.hide                     # (B, 1, T, S) bool or None
            if self.use_sdpa:
                context = F.scaled_dot_product_attention(q, k, v, attn_mask=None if hide is None else ~hide)
            else:
                context = attention_core(q, k, v, hide=hide)
        elif self.use_sdpa:
            p = self.dropout.p if self.training else 0.0
            context = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        else:
            context = attention_core(q, k, v, hide=self.mask[:T, :T], dropout=self.dropout)
        context = context.transpose(1, 2).contiguous().view(B, T, self.d_out)   # (B, T, C), heads merged
        return self.out_proj(context)
