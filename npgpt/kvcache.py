"""The key/value cache that makes decoding fast: each layer keeps the keys and values it has computed.

Without a cache, choosing token t+1 runs the whole model over all t+1 tokens again. Attention is the only
place where positions meet, and a new query needs the OLD keys and values, never the old queries, so
each attention layer can store its keys and values and the model runs on the new tokens only:

    cache = KVCache(config, batch_size=1, capacity=T_prompt + max_new_tokens, dtype=np.float32)
    x, _ = trunk_forward(params, prompt_ids, config, kv_cache=cache)     # prefill: stores T_prompt keys
    x, _ = trunk_forward(params, next_id, config, kv_cache=cache)        # one step: 1 position, 1 key more

Per layer, keys and values are preallocated (B, KV, T_cap, D) arrays (KV = n_kv_heads: H for GPT-2; Llama's
grouped-query attention caches only its key/value heads, after RoPE); positions [0, length) are filled.

Left padding (a batch of prompts of different lengths): the new tokens' `attention_mask` (B, T) marks real
tokens 1 and padding 0. Padding keys are hidden from every query, and positions count real tokens only,
so a padded row computes exactly what its prompt alone would (a padding query looks at itself only, so no
softmax row is empty; its output is never used).
"""
from __future__ import annotations

import numpy as np


def attention_layout(valid, T):
    """Positions of the T newest tokens and what their queries must not see.

    valid: (B, S) bool, the S = cached + new tokens, True for real tokens; the last T are the queries.
    -> positions (B, T) int: each new token's index among its row's real tokens (padding gets 0);
       hide (B, 1, T, S) bool (broadcast over heads): True where query t may not look at key s
       (future keys, padding keys), or None when nothing is hidden (one new token, no padding).
    """
    B, S = valid.shape
    start = S - T
    if T == 1 and valid.all():                                    # a decoding step without padding
        return np.full((B, 1), start), None
    key_index = np.arange(S)[None, :]                        # (1, S)
    query_index = start + np.arange(T)[:, None]              # (T, 1), absolute positions of the queries
    future = key_index > query_index                         # (T, S)
    if valid.all():
        positions = np.broadcast_to(np.arange(start, S), (B, T))
        return positions, (future[None, None] if T > 1 else None)
    positions = np.maximum(np.cumsum(valid, axis=1)[:, start:] - 1, 0)    # (B, T)
    hide = future[None] | ~valid[:, None, :]                 # (B, T, S)
    hide &= key_index != query_index                         # every query sees itself: no empty softmax row
    return positions, hide[:, None]


class LayerKV:
    """One layer's view of the cache during one forward call: append(k, v) and the shared `hide` mask."""

    def __init__(self, keys, values, start, hide):
        self.keys, self.values, self.start, self.hide = keys, values, start, hide

    def append(self, k, v):
        """Stores the new k, v (B, H, T, D) after the cached ones -> all keys, values (B, H, start + T, D)."""
        end = self.start + k.shape[2]
        self.keys[:, :, self.start:end] = k
        self.values[:, :, self.start:end] = v
        return self.keys[:, :, :end], self.values[:, :, :end]


class KVCache:
    """Keys and values of every layer, (B, H, T_cap, D) each, filled up to `length`.

    A forward pass with kv_cache=cache calls begin(T, attention_mask) once, layer(i) per block, then commit().
    """

    def __init__(self, config, batch_size, capacity, dtype=np.float32):
        if not 0 < capacity <= config.context_length:
            raise ValueError(f"KV cache capacity must be in [1, {config.context_length}] (the context length), "
                             f"got {capacity}")
        shape = (batch_size, config.n_kv_heads, capacity, config.head_dim)   # GQA: one per key/value head
        self.keys = [np.zeros(shape, dtype=dtype) for _ in range(config.n_layers)]
        self.values = [np.zeros(shape, dtype=dtype) for _ in range(config.n_layers)]
        self.valid = np.ones((batch_size, capacity), dtype=bool)   # False at left padding
        self.capacity = capacity
        self.length = 0
        self._pending = None

    def begin(self, T, attention_mask=None):
        """Reserves the next T positions -> (positions (B, T), hide mask or None) for this forward call."""
        start, end = self.length, self.length + T
        if end > self.capacity:
            raise ValueError(f"KV cache full: {self.length} cached + {T} new tokens > capacity {self.capacity}; "
                             f"make a larger cache (at most the context length) or crop the sequence")
        if attention_mask is not None:
            self.valid[:, start:end] = np.asarray(attention_mask, dtype=bool)
        positions, self._hide = attention_layout(self.valid[:, :end], T)
        self._pending = end
        return positions

    def layer(self, i):
        return LayerKV(self.keys[i], self.values[i], self.length, self._hide)

    def commit(self):
        """The reserved positions are filled: they become part of the cache."""
        self.length, self._pending, self._hide = self._pending, None, None

    def reorder(self, rows):
        """Keeps (and repeats) batch rows: row i of the result is old row rows[i] (beam search)."""
        rows = np.asarray(rows)
        self.keys = [k[rows] for k in self.keys]
        self.values = [v[rows] for v in self.values]
        self.valid = self.valid[rows]
