"""The key/value cache for fast decoding (twin of npgpt/kvcache.py; read that docstring for the idea).

    cache = KVCache(config, batch_size=1, capacity=T_prompt + max_new_tokens, dtype=torch.float32)
    x = model.trunk(prompt_ids, kv_cache=cache)      # prefill
    x = model.trunk(next_id, kv_cache=cache)         # one step

Per layer, keys and values are preallocated (B, KV, T_cap, D) tensors (KV = n_kv_heads) on the model's device.
"""
from __future__ import annotations

import torch


def attention_layout(valid: torch.Tensor, T: int):
    """valid: (B, S) bool, True for real tokens; the last T are the queries.

    -> positions (B, T) long: each new token's index among its row's real tokens (padding gets 0);
       hide (B, 1, T, S) bool: True where query t may not look at key s (future, padding; a query always
       sees itself), or None when nothing is hidden (one new token, no padding).
    """
    B, S = valid.shape
    start = S - T
    if T == 1 and bool(valid.all()):                                          # a decoding step without padding
        return torch.full((B, 1), start, device=valid.device), None
    key_index = torch.arange(S, device=valid.device)[None, :]                  # (1, S)
    query_index = start + torch.arange(T, device=valid.device)[:, None]       # (T, 1)
    future = key_index > query_index                                          # (T, S)
    if bool(valid.all()):
        positions = torch.arange(start, S, device=valid.device).expand(B, T)
        return positions, (future[None, None] if T > 1 else None)
    positions = (torch.cumsum(valid.long(), dim=1)[:, start:] - 1).clamp(min=0)   # (B, T)
    hide = future[None] | ~valid[:, None, :]                                  # (B, T, S)
    hide &= key_index != query_index
    return positions, hide[:, None]


class LayerKV:
    """One layer's view of the cache during one forward call: append(k, v) and the shared `hide` mask."""

    def __init__(self, keys, values, start, hide):
        self.keys, self.values, self.start, self.hide = keys, values, start, hide

    def append(self, k: torch.Tensor, v: torch.Tensor):
        """Stores the new k, v (B, H, T, D) after the cached ones -> all keys, values (B, H, start + T, D)."""
        end = self.start + k.shape[2]
        self.keys[:, :, self.start:end] = k
        self.values[:, :, self.start:end] = v
        return self.keys[:, :, :end], self.values[:, :, :end]


class KVCache:
    """Keys and values of every layer, (B, H, T_cap, D) each, filled up to `length`.

    A forward pass with kv_cache=cache calls begin(T, attention_mask) once, layer(i) per block, then commit().
    """

    def __init__(self, config, batch_size: int, capacity: int, dtype=torch.float32, device=None):
        if not 0 < capacity <= config.context_length:
            raise ValueError(f"KV cache capacity must be in [1, {config.context_length}] (the context length), "
                             f"got {capacity}")
        shape = (batch_size, config.n_kv_heads, capacity, config.head_dim)   # GQA: one per key/value head
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.n_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.n_layers)]
        self.valid = torch.ones((batch_size, capacity), dtype=torch.bool, device=device)
        self.capacity = capacity
        self.length = 0
        self._pending = None

    def begin(self, T: int, attention_mask=None) -> torch.Tensor:
        """Reserves the next T positions -> positions (B, T) for this forward call (the mask is kept for layer())."""
        start, end = self.length, self.length + T
        if end > self.capacity:
            raise ValueError(f"KV cache full: {self.length} cached + {T} new tokens > capacity {self.capacity}; "
                             f"make a larger cache (at most the context length) or crop the sequence")
        if attention_mask is not None:
            self.valid[:, start:end] = torch.as_tensor(attention_mask, device=self.valid.device).bool()
        positions, self._hide = attention_layout(self.valid[:, :end], T)
        self._pending = end
        return positions

    def layer(self, i: int) -> LayerKV:
        return LayerKV(self.keys[i], self.values[i], self.length, self._hide)

    def commit(self):
        """The reserved positions are filled: they become part of the cache."""
        self.length, self._pending, self._hide = self._pending, None, None

    def reorder(self, rows):
        """Keeps (and repeats) batch rows: row i of the result is old row rows[i] (beam search)."""
        rows = torch.as_tensor(rows, dtype=torch.long, device=self.valid.device)
        self.keys = [k[rows] for k in self.keys]
        self.values = [v[rows] for v in self.values]
        self.valid = self.valid[rows]
