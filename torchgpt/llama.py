"""Llama in PyTorch (twin of npgpt/llama.py): LlamaBlock and LlamaModel.

    x = tok_emb(idx)                                        (B, T, C)   no position table
    block_i:  x = x + att(norm1(x), cos, sin)               (B, T, C)   RoPE at the tokens' positions
              x = x + ff(norm2(x))                          (B, T, C)   SwiGLU
    logits = out_head(final_norm(x))                        (B, T, V)   RMSNorm, tied or untied head

state_dict() keys and shapes are exactly the canonical parameter names (gptcore.arch.llama), so a NumPy
parameter dict loads with torchgpt.model.load_numpy_params(); torchgpt.model.build_model(config) builds it
for config.arch == "llama".
"""
from __future__ import annotations

import torch
from torch import nn

from gptcore.config import GPTConfig
from torchgpt.embedding import check_token_ids, token_positions
from torchgpt.gqa_attention import GroupedQueryAttention
from torchgpt.linear import Linear
from torchgpt.params import init_weights
from torchgpt.rmsnorm import RMSNorm
from torchgpt.rope import rope_tables
from torchgpt.swiglu import SwiGLU


class LlamaBlock(nn.Module):
    """Keys: norm1.scale, att.W_query.weight, att.W_key.weight, att.W_value.weight, att.out_proj.weight,
    norm2.scale, ff.gate.weight, ff.up.weight, ff.down.weight."""

    def __init__(self, config: GPTConfig, use_sdpa: bool = False):
        super().__init__()
        self.norm1 = RMSNorm(config.emb_dim, config.norm_eps)
        self.att = GroupedQueryAttention(config, use_sdpa=use_sdpa)
        self.norm2 = RMSNorm(config.emb_dim, config.norm_eps)
        self.ff = SwiGLU(config)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, kv_cache=None) -> torch.Tensor:
        """x: (B, T, C); cos, sin: the RoPE tables of these positions -> (B, T, C)."""
        x = x + self.att(self.norm1(x), cos, sin, kv_cache=kv_cache)     # residual 1
        return x + self.ff(self.norm2(x))                                # residual 2


class LlamaModel(nn.Module):
    """Llama. Attributes (and state_dict prefixes): tok_emb, blocks, final_norm, out_head.

    use_sdpa: attention through F.scaled_dot_product_attention (fast path) instead of the explicit reference.
    seed: the spec's initialization from this seed (init_weights); None draws from torch's global generator.
    """

    def __init__(self, config: GPTConfig, use_sdpa: bool = False, seed: int | None = None):
        super().__init__()
        if config.arch != "llama":
            raise ValueError(f"LlamaModel needs a config with arch='llama', got {config.arch!r}; "
                             f"use torchgpt.build_model(config)")
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.emb_dim)
        self.blocks = nn.ModuleList(LlamaBlock(config, use_sdpa=use_sdpa) for _ in range(config.n_layers))
        self.final_norm = RMSNorm(config.emb_dim, config.norm_eps)
        self.out_head = Linear(config.emb_dim, config.vocab_size, bias=False)
        if config.tie_weights:
            self.out_head.weight = self.tok_emb.weight      # one Parameter under two names, as in GPTModel
        self.check_id_range = True
        init_weights(self, seed)

    def forward(self, idx, *, kv_cache=None, attention_mask=None) -> torch.Tensor:
        """idx: (B, T) integer token ids -> logits: (B, T, V). kv_cache, attention_mask: see trunk()."""
        return self.out_head(self.trunk(idx, kv_cache=kv_cache, attention_mask=attention_mask))

    def trunk(self, idx, *, kv_cache=None, attention_mask=None) -> torch.Tensor:
        """Everything but the output head: idx (B, T) -> final-normed hidden states (B, T, C).

        kv_cache: a torchgpt.kvcache.KVCache (decoding): idx are the NEW tokens, placed (and rotated) after
        the cached ones; attention_mask (B, T), 0 at left padding, goes with it.
        """
        idx = check_token_ids(idx, self.config, check_range=self.check_id_range).to(self.tok_emb.weight.device)
        positions = token_positions(idx, kv_cache, attention_mask)       # (T,) or (B, T)
        x = self.tok_emb(idx)                                            # (B, T, C)
        cos, sin = rope_tables(positions, self.config.head_dim, self.config.rope_theta, x.dtype,
                               scaling=self.config.rope_scaling)
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, kv_cache=None if kv_cache is None else kv_cache.layer(i))
        if kv_cache is not None:
            kv_cache.commit()
        return self.final_norm(x)

    def rope_for(self, x: torch.Tensor):
        """RoPE's cos, sin at positions 0..T-1 of hidden states x (B, T, C)."""
        positions = torch.arange(x.shape[1], device=x.device)
        return rope_tables(positions, self.config.head_dim, self.config.rope_theta, x.dtype,
                           scaling=self.config.rope_scaling)

    def trunk_bottom(self, idx, n_blocks: int) -> torch.Tensor:
        """The bottom of the trunk: the token embedding and blocks 0..n_blocks-1. idx (B, T) -> (B, T, C), the
        input of block n_blocks. Twin of npgpt.model.trunk_bottom_infer (run it under no_grad)."""
        idx = check_token_ids(idx, self.config, check_range=self.check_id_range).to(self.tok_emb.weight.device)
        x = self.tok_emb(idx)                                            # (B, T, C)
        cos, sin = self.rope_for(x)
        for block in self.blocks[:n_blocks]:
            x = block(x, cos, sin)
        return x

    def trunk_top(self, x: torch.Tensor, first_block: int) -> torch.Tensor:
        """The rest of the trunk: x (B, T, C), trunk_bottom's output -> final-normed hidden states (B, T, C).
        Twin of npgpt.model.trunk_top_forward."""
        cos, sin = self.rope_for(x)
        for block in self.blocks[first_block:]:
            x = block(x, cos, sin)
        return self.final_norm(x)
