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
            dropout=config.drop_rate, num_heads=config.n_heads, qkv_bias=config.qkv_bias, use_sdpa=use_sdpa,
        )
        self.norm2 = LayerNorm(config.emb_dim)
        self.ff = FeedForward(config)
        self.drop_resid = Dropout(config.drop_rate)   # no parameters: not in the state_dict

    def forward(self, x: torch.Tensor, dropout_masks=None, kv_cache=None) -> torch.Tensor:
        """x: (B, T, C) -> (B, T, C).

        dropout_masks: optional `MaskFeed` (see torchgpt.model) giving explicit keep-masks in npgpt's draw
        order: attention weights (B, H, T, T), residual after attention (B, T, C), after feed-forward (B, T, C).
        kv_cache: this layer's torchgpt.kvcache.LayerKV when decoding with a cache.
        """
        take = dropout_masks.take if dropout_masks is not None else (lambda shape, where: None)
        B, T, C = x.shape
        att_mask = take((B, self.att.num_heads, T, T), "attention weights")
        a = self.drop_resid(self.att(self.norm1(x), dropout_mask=att_mask, kv_cache=kv_cache),
                            mask=take((B, T, C), "after attention"))
        x = x + a
        f = self.drop_resid(self.ff(self.norm2(x)), mask=take((B, T, C), "after feed-forward"))
        return x + f
