"""GPT-2 in PyTorch (twin of npgpt's GPT-2 composition): GPTModel.

    x = dropout(tok_emb(idx) + pos_emb(arange(T)))          (B, T, C)
    x = block_i(x)  for i in 0 .. L-1                       (B, T, C)
    logits = out_head(final_norm(x))                        (B, T, V)

state_dict() keys and shapes are exactly the canonical parameter names (gptcore.arch.gpt2), so a NumPy
parameter dict loads with torchgpt.model.load_numpy_params() and comes back with to_numpy_params().
torchgpt.model.build_model(config) builds it for config.arch == "gpt2".
"""
from __future__ import annotations

import torch
from torch import nn

from gptcore.config import GPTConfig
from torchgpt.block import TransformerBlock
from torchgpt.dropout import Dropout
from torchgpt.embedding import check_token_ids, token_positions
from torchgpt.layernorm import LayerNorm
from torchgpt.linear import Linear
from torchgpt.params import init_weights


class GPTModel(nn.Module):
    """GPT-2. Attributes (and state_dict prefixes): tok_emb, pos_emb, drop_emb, blocks, final_norm, out_head.

    use_sdpa: attention through F.scaled_dot_product_attention (fast path) instead of the explicit reference.
    seed: GPT-2 initialization from this seed (init_weights); None draws from torch's global generator.
    """

    def __init__(self, config: GPTConfig, use_sdpa: bool = False, seed: int | None = None):
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.emb_dim)
        self.pos_emb = nn.Embedding(config.context_length, config.emb_dim)
        self.drop_emb = Dropout(config.drop_rate)
        self.blocks = nn.ModuleList(TransformerBlock(config, use_sdpa=use_sdpa) for _ in range(config.n_layers))
        self.final_norm = LayerNorm(config.emb_dim)
        self.out_head = Linear(config.emb_dim, config.vocab_size, bias=False)
        if config.tie_weights:
            # One Parameter under two names: state_dict lists both keys, parameters() yields it once,
            # and its .grad is the sum of the embedding's and the head's contributions.
            self.out_head.weight = self.tok_emb.weight
        # Checking the id range reads idx.min()/max(), a host sync on GPUs; a training loop that feeds
        # known-good ids may switch it off.
        self.check_id_range = True
        init_weights(self, seed)

    def forward(self, idx, *, kv_cache=None, attention_mask=None) -> torch.Tensor:
        """idx: (B, T) integer token ids -> logits: (B, T, V).

        In training the dropouts run in npgpt's draw order: the embedding's, then each block's (attention
        weights, after attention, after feed-forward). kv_cache, attention_mask: decoding with a cache, see trunk().
        """
        x = self.trunk(idx, kv_cache=kv_cache, attention_mask=attention_mask)
        return self.out_head(x)                                          # (B, T, V)

    def trunk(self, idx, *, kv_cache=None, attention_mask=None) -> torch.Tensor:
        """Everything but the output head: idx (B, T) -> final-normed hidden states (B, T, C).

        Twin of npgpt's trunk_forward. kv_cache: a torchgpt.kvcache.KVCache (decoding): idx are the NEW
        tokens, placed after the cached ones; attention_mask (B, T), 0 at left padding, goes with it.
        """
        idx = check_token_ids(idx, self.config, check_range=self.check_id_range).to(self.tok_emb.weight.device)
        positions = token_positions(idx, kv_cache, attention_mask)       # (T,) or (B, T)
        x = self.tok_emb(idx) + self.pos_emb(positions)                  # (B, T, C)
        x = self.drop_emb(x)
        for i, block in enumerate(self.blocks):
            x = block(x, kv_cache=None if kv_cache is None else kv_cache.layer(i))
        if kv_cache is not None:
            kv_cache.commit()
        return self.final_norm(x)

    def trunk_bottom(self, idx, n_blocks: int) -> torch.Tensor:
        """The bottom of the trunk: embeddings (+ dropout) and blocks 0..n_blocks-1. idx (B, T) -> (B, T, C), the
        input of block n_blocks. Twin of npgpt.model.trunk_bottom_infer (run it under no_grad, in eval mode)."""
        idx = check_token_ids(idx, self.config, check_range=self.check_id_range).to(self.tok_emb.weight.device)
        x = self.drop_emb(self.tok_emb(idx) + self.pos_emb(token_positions(idx)))    # (B, T, C)
        for block in self.blocks[:n_blocks]:
            x = block(x)
        return x

    def trunk_top(self, x: torch.Tensor, first_block: int) -> torch.Tensor:
        """The rest of the trunk: x (B, T, C), trunk_bottom's output -> final-normed hidden states (B, T, C).
        Twin of npgpt.model.trunk_top_forward."""
        for block in self.blocks[first_block:]:
            x = block(x)
        return self.final_norm(x)
