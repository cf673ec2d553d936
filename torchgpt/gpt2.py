"""The GPT-2 model in PyTorch (twin of npgpt/model.py):

    x = dropout(tok_emb(idx) + pos_emb(arange(T)))          (B, T, C)
    x = block_i(x)  for i in 0 .. L-1                       (B, T, C)
    logits = out_head(final_norm(x))                        (B, T, V)

state_dict() keys and shapes are exactly the canonical parameter names, so a NumPy parameter dict loads
with load_numpy_params() and comes back with to_numpy_params().
"""
from __future__ import annotations


import numpy as np
import torch
from torch import nn

from gptcore.arch import spec_for
from gptcore.config import GPTConfig
from torchgpt.block import TransformerBlock
from torchgpt.dropout import Dropout
from torchgpt.layernorm import LayerNorm


class MaskFeed:
    """Hands out explicit dropout keep-masks in npgpt's draw order (parity tests).

    Order in a forward pass: embedding dropout (B, T, C); then per block: attention weights (B, H, T, T),
    residual after attention (B, T, C), residual after feed-forward (B, T, C). Like npgpt, which draws no
    mask when drop_rate == 0, nothing is taken then.
    """

    def __init__(self, masks, drop_rate: float):
        self._masks = iter(masks)
        self.drop_rate = drop_rate
        self.taken = 0

    def take(self, shape, where: str):
        if self.drop_rate == 0.0:
            return None
        mask = next(self._masks, None)
        if mask is None:
            raise ValueError(f"dropout_masks ran out at mask {self.taken} ({where}); pass one mask per dropout "
                             f"in the order embedding, then per block: attention weights, after attention, "
                             f"after feed-forward")
        if tuple(mask.shape) != tuple(shape):
            raise ValueError(f"dropout mask {self.taken} ({where}) has shape {tuple(mask.shape)}, "
                             f"expected {tuple(shape)}")
        self.taken += 1
        return mask


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
        self.out_head = nn.Linear(config.emb_dim, config.vocab_size, bias=False)
        if config.tie_weights:
            # One Parameter under two names: state_dict lists both keys, parameters() yields it once,
            # and its .grad is the sum of the embedding's and the head's contributions.
            self.out_head.weight = self.tok_emb.weight
        # Checking id ranges reads idx.min()/max(), a host sync on GPUs; a training loop that feeds
        # known-good ids may switch it off.
        self.check_token_ids = True
        init_weights(self, seed)

    def validate_idx(self, idx) -> torch.Tensor:
        """idx -> an integer (B, T) tensor on the model's device, or ValueError naming the problem and fix."""
        if not isinstance(idx, torch.Tensor):
            idx = torch.as_tensor(np.asarray(idx))
        if idx.dtype.is_floating_point or idx.dtype.is_complex or idx.dtype == torch.bool:
            raise ValueError(f"token ids must be an integer tensor, got dtype {idx.dtype}; "
                             f"encode text with a tokenizer and pass torch.long ids")
        if idx.ndim != 2:
            raise ValueError(f"token ids must have shape (B, T), got {tuple(idx.shape)}; "
                             f"use idx.unsqueeze(0) for a single sequence")
        T = idx.shape[1]
        if T > self.config.context_length:
            raise ValueError(f"sequence length {T} exceeds the context length {self.config.context_length}; "
                             f"crop the input to its last {self.config.context_length} tokens")
        if self.check_token_ids and idx.numel():
            low, high = int(idx.min()), int(idx.max())
            if low < 0 or high >= self.config.vocab_size:
                raise ValueError(f"token ids must be in [0, {self.config.vocab_size}), got values {low}..{high}; "
                                 f"use a tokenizer whose vocabulary matches the model's vocab_size")
        return idx.to(self.tok_emb.weight.device)

    def forward(self, idx, dropout_masks=None, *, kv_cache=None, attention_mask=None) -> torch.Tensor:
        """idx: (B, T) integer token ids -> logits: (B, T, V).

        dropout_masks: optional list/iterator of bool keep-masks for train mode, consumed in npgpt's draw
        order (see MaskFeed), so a parity test can apply the same dropout as npgpt.
        kv_cache, attention_mask: decoding with a cache, see trunk().
        """
        x = self.trunk(idx, dropout_masks, kv_cache=kv_cache, attention_mask=attention_mask)
        return self.out_head(x)                                          # (B, T, V)

    def trunk(self, idx, dropout_masks=None, *, kv_cache=None, attention_mask=None) -> torch.Tensor:
        """Everything but the output head: idx (B, T) -> final-normed hidden states (B, T, C).

        Twin of npgpt.model.trunk_forward. kv_cache: a torchgpt.kvcache.KVCache (decoding): idx are the NEW
        tokens, placed after the cached ones; attention_mask (B, T), 0 at left padding, goes with it.
        """
        idx = self.validate_idx(idx)
        B, T = idx.shape
        feed = None
        if dropout_masks is not None:
            if not self.training:
                raise ValueError("dropout_masks were given but the model is in eval mode (no dropout); "
                                 "call model.train() first or leave dropout_masks out")
            feed = MaskFeed(dropout_masks, self.config.drop_rate)
        if kv_cache is None and attention_mask is not None:
            raise ValueError("attention_mask (left padding) needs a kv_cache; see torchgpt.generate for batches")
        if kv_cache is None:
            positions = torch.arange(T, device=idx.device)               # (T,)
        else:
            positions = kv_cache.begin(T, attention_mask)                # (B, T), after the cached ones
        x = self.tok_emb(idx) + self.pos_emb(positions)                  # (B, T, C)
        x = self.drop_emb(x, mask=feed.take((B, T, self.config.emb_dim), "embedding") if feed else None)
        for i, block in enumerate(self.blocks):
            x = block(x, dropout_masks=feed, kv_cache=None if kv_cache is None else kv_cache.layer(i))
        if kv_cache is not None:
            kv_cache.commit()
        return self.final_norm(x)


@torch.no_grad()
def init_weights(model: GPTModel, seed: int | None = None) -> GPTModel:
    """The architecture's init in place (gptcore.arch: init_rule; GPT-2: weights ~ N(0, std), biases 0,
    LayerNorm scale 1 and shift 0).

    Draws on the CPU from one torch.Generator seeded with `seed` (None: the global generator), in
    named_parameters() order with a tied weight drawn once, so the values do not depend on the device.
    """
    generator = None
    if seed is not None:
        generator = torch.Generator().manual_seed(int(seed))
    for name, param in model.named_parameters():    # a tied Parameter appears once
        kind, value = spec_for(model.config).init_rule(name, model.config)
        if kind == "ones":
            param.fill_(1.0)
        elif kind == "zeros":
            param.zero_()
        else:
            draw = torch.randn(param.shape, generator=generator, dtype=torch.float32)
            param.copy_(draw * value)
    return model


def count_params(model: nn.Module) -> int:
    """Number of trainable numbers, a tied weight counted once (parameters() already deduplicates)."""
    return sum(p.numel() for p in model.parameters())


def load_numpy_params(model: nn.Module, params: dict) -> nn.Module:
    """Copies a dict of NumPy arrays under the canonical names into the model (in its dtype and device).

    Raises ValueError listing missing/unexpected names or mismatched shapes, and when a tied model is
    given two different arrays for tok_emb.weight and out_head.weight.
    """
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    missing = sorted(set(expected) - set(params))
    unexpected = sorted(set(params) - set(expected))
    if missing or unexpected:
        raise ValueError(f"parameter names do not match the model: missing {missing[:5]}, unexpected "
                         f"{unexpected[:5]}; build the model with the config the parameters were made for")
    for name, shape in expected.items():
        if tuple(np.shape(params[name])) != shape:
            raise ValueError(f"parameter {name} has shape {tuple(np.shape(params[name]))}, the model needs "
                             f"{shape}; check the config (emb_dim, vocab_size, context_length, ...)")
    tied = getattr(getattr(model, "config", None), "tie_weights", False)
    if tied and params["out_head.weight"] is not params["tok_emb.weight"] and not np.array_equal(
            params["out_head.weight"], params["tok_emb.weight"]):
        raise ValueError("the model ties out_head.weight to tok_emb.weight but the parameters hold two "
                         "different arrays; build the model with tie_weights=False")
    model.load_state_dict({name: torch.from_numpy(np.ascontiguousarray(value)) for name, value in params.items()})
    return model


def to_numpy_params(model: nn.Module) -> dict:
    """The model's state_dict as NumPy arrays (copies, on the CPU); tied keys hold the SAME array object."""
    arrays, by_storage = {}, {}
    for name, tensor in model.state_dict().items():
        key = (tensor.device, tensor.data_ptr(), tuple(tensor.shape), tuple(tensor.stride()))
        if key not in by_storage:
            value = tensor.detach().cpu()
            if value.dtype == torch.bfloat16:        # NumPy has no bfloat16: widen (exactly) to float32
                value = value.float()
            by_storage[key] = value.numpy().copy()
        arrays[name] = by_storage[key]
    return arrays
