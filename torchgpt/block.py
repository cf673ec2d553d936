"""The pre-LayerNorm transformer block of GPT-2 (twin of npgpt/block.py):

    x = x + dropout(attention(norm1(x)))
    x = x + dropout(feedforward(norm2(x)))
"""
import torch
from torch import nn

from torchgpt.attention import MultiHeadAttention
from torchgpt.dropout import Dropout
from torchgpt.feedforward import FeedForward
from torchgpt.layernorm import LayerNorm


class TransformerBlock(nn.Module):
    """Keys: norm1.scale/shift, att.W_query.weight ..., att.out_proj.*, norm2.*, ff.fc1.*, ff.fc2.*."""

    def __init__(self, config, use_sdpa: bool = False):
        super().__init__()
        self.norm1 = LayerNorm(config.emb_dim)
        self.att = MultiHeadAttention(
            d_in=config.emb_dim, d_out=config.emb_dim, context_length=config.context_length,
            drop_rate=config.drop_rate, n_heads=config.n_heads, qkv_bias=config.qkv_bias, use_sdpa=use_sdpa,
        )
        self.norm2 = LayerNorm(config.emb_dim)
        self.ff = FeedForward(config)
        self.drop_resid = Dropout(config.drop_rate)   # no parameters: not in the state_dict

    def forward(self, x: torch.Tensor, kv_cache=None) -> torch.Tensor:
        """x: (B, T, C) -> (B, T, C). kv_cache: this layer's torchgpt.kvcache.LayerKV when decoding with a cache.

        In training the dropouts run in npgpt's draw order: attention weights (inside att), the residual
        after attention, the residual after feed-forward (drop_resid serves both residuals).
        """
        x = x + self.drop_resid(self.att(self.norm1(x), kv_cache=kv_cache))   # residual 1, (B, T, C)
        x = x + self.drop_resid(self.ff(self.norm2(x)))                       # residual 2, (B, T, C)
        return x
