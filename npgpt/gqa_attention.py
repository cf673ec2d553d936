"""Grouped-query attention (Llama): H query heads share KV = n_kv_heads key/value heads, causal, no biases,
queries and keys rotated by RoPE.

    q = x Wq^T (B, T, H*D),  k = x Wk^T, v = x Wv^T (B, T, KV*D)      split into heads
    q, k = rope(q), rope(k)                                           rotated at their positions
    k, v repeated G = H / KV times along the heads (B, H, S, D)       query head h reads kv head h // G
    context = softmax(q k^T / sqrt(D) + causal mask) v               (B, H, T, D), attention.py's core
    out = merge(context) Wo^T                                         (B, T, C)

KV = H is multi-head attention, KV = 1 multi-query attention. The backward is the forward read in reverse;
the repeat is a copy, so its backward sums the gradients of the G query heads that read one kv head.

In the code the repeat is not made: the query heads are grouped by the kv head they read, (B, KV, G, T, D)
(group_heads), against keys and values with a size-1 axis there, (B, KV, 1, S, D). attention.py's core then
takes one kv head at a time with its G query heads stacked, (G*T, D) rows: one product gives the scores of all G
heads, and in the backward one product of the stacked rows gives the summed gradient,
dk = sum_g dscores_g^T q_g = [dscores_1; ...; dscores_G]^T [q_1; ...; q_G] (attention.summed_over_group).
repeat_kv, the copy, is the reference the tests compare with.
"""
from typing import NamedTuple

import numpy as np

from npgpt.attention import (AttentionCoreCache, QKVCache, _attention_core_backward, _attention_core_forward,
                             _causal_attention_infer, _merge_heads, _project_qkv, _project_qkv_backward,
                             _split_heads)
from npgpt.linear import LinearLayerCache, linear_layer_backward, linear_layer_forward, linear_layers_together
from npgpt.rope import RopeCache, rope_backward, rope_forward


class GQACache(NamedTuple):
    """The projections' caches, the two rotations', the attention core's over the grouped heads, out_proj's."""
    n_heads: int
    n_kv_heads: int
    qkv: QKVCache
    rope_q: RopeCache
    rope_k: RopeCache
    core: AttentionCoreCache         # q (B, KV, G, T, D), k and v (B, KV, 1, T, D), weights (B, KV, G, T, T)
    out_proj: LinearLayerCache


def repeat_kv(t, group):
    """(B, KV, S, D) -> (B, KV * G, S, D), head h a copy of head h // G (Hugging Face's repeat_kv)."""
    return t if group == 1 else np.repeat(t, group, axis=1)


def gqa_attention_forward(x, p, n_heads, n_kv_heads, cos, sin, *, kv_cache=None):
    """x: (B, T, C); p: W_query.weight (C, C), W_key.weight, W_value.weight (KV*D, C), out_proj.weight (C, C)
    (+ LoRA adapters); cos, sin: npgpt.rope.rope_tables for the T new positions (absolute: after a KV cache's)
    kv_cache: optional npgpt.kvcache.LayerKV (decoding, inference only): the new rotated keys and the values
    are stored per kv head after the cached ones; no backward through this path
    -> out: (B, T, C), GQACache.
    """
    group = n_heads // n_kv_heads
    (q, k, v), qkv_cache = _project_qkv(x, p)                     # (B, T, C), (B, T, KV*D) x 2
    q, k, v = _split_heads(q, n_heads), _split_heads(k, n_kv_heads), _split_heads(v, n_kv_heads)
    q, rope_q = rope_forward(q, cos, sin)                         # (B, H, T, D)
    k, rope_k = rope_forward(k, cos, sin)                         # (B, KV, T, D)
    hide = None
    if kv_cache is not None:
        k, v = kv_cache.append(k, v)                              # (B, KV, S, D): cached, then the new ones
        hide = kv_cache.hide
    context, core_cache = _grouped_core_forward(q, k, v, group, causal=kv_cache is None, hide=hide)   # (B, H, T, D)
    out, out_cache = linear_layer_forward(_merge_heads(context), p, "out_proj")
    return out, GQACache(n_heads=n_heads, n_kv_heads=n_kv_heads, qkv=qkv_cache, rope_q=rope_q, rope_k=rope_k,
                         core=core_cache, out_proj=out_cache)


def gqa_attention_infer(x, p, n_heads, n_kv_heads, cos, sin, *, kv_cache=None):
    """gqa_attention_forward's output without a cache (inference).   x: (B, T, C) -> out: (B, T, C).

    Without a KV cache the causal attention skips most of the masked half (npgpt.attention's
    _causal_attention_infer, equal to the full computation to ~1e-16 relative); with one (decoding) the
    queries attend over the cached and the new keys. No rotation cache, no attention weights kept.
    """
    group = n_heads // n_kv_heads
    q, k, v = linear_layers_together(x, p, ("W_query", "W_key", "W_value"))      # one product if side by side
    q = _split_heads(q, n_heads)                                                    # (B, H, T, D)
    k = _split_heads(k, n_kv_heads)                                                 # (B, KV, T, D)
    v = _split_heads(v, n_kv_heads)
    q, _ = rope_forward(q, cos, sin)
    k, _ = rope_forward(k, cos, sin)
    if kv_cache is None:
        context = _causal_attention_infer(q, repeat_kv(k, group), repeat_kv(v, group))
    else:
        k, v = kv_cache.append(k, v)                                                # (B, KV, S, D)
        context = _grouped_attention(q, k, v, group, kv_cache.hide)
    return linear_layer_forward(_merge_heads(context), p, "out_proj")[0]           # (B, T, C)


def _grouped_attention(q, k, v, group, hide):
    """Attention of H = KV * G query heads over KV key/value heads without repeating the keys and values
    (decoding): the G query heads of kv head j are one (G, T) stack against j's keys,
    (B, KV, G, T, D) @ (B, KV, 1, D, S), which matmul broadcasts (no copy: a decoding step would otherwise copy
    the whole cache G times per layer). q: (B, H, T, D); k, v: (B, KV, S, D); hide: None or bool broadcastable
    to (B, 1, T, S) -> (B, H, T, D). The same products and softmax as over repeat_kv's copies, so the same values."""
    return _grouped_core_forward(q, k, v, group, causal=False, hide=hide)[0]


def _grouped_core_forward(q, k, v, group, *, causal, hide):
    """attention.py's core over the query heads grouped by their kv head, (B, KV, G, T, D), and the keys and
    values with a size-1 axis there, (B, KV, 1, S, D): no copies of k, v.
    q: (B, H, T, D); k, v: (B, KV, S, D); hide: None or bool broadcastable to (B, 1, T, S)
    -> context (B, H, T, D), the core's cache (over the grouped shapes)."""
    context, core_cache = _attention_core_forward(group_heads(q, group), k[:, :, None], v[:, :, None],
                                                  causal=causal, drop_rate=0.0, rng=None, dropout_mask=None,
                                                  hide=None if hide is None else hide[:, :, None])
    return ungroup_heads(context), core_cache


def group_heads(t, group):
    """(B, H, T, D) -> (B, KV, G, T, D), query head h = kv * G + g at [:, kv, g] (a view when t's heads allow)."""
    B, H, T, D = t.shape
    return t.reshape(B, H // group, group, T, D)


def ungroup_heads(t):
    """group_heads' inverse: (B, KV, G, T, D) -> (B, H, T, D)."""
    B, KV, G, T, D = t.shape
    return t.reshape(B, KV * G, T, D)


def gqa_attention_backward(dout, cache):
    """dout: (B, T, C) -> dx: (B, T, C), grads under p's keys.

        dcontext = dout Wo                            (B, T, C) -> heads (B, H, T, D)
        dq, dk_rep, dv_rep = attention core backward  (B, H, T, D) each
        dk = sum over the G query heads of a group of dk_rep    (B, KV, T, D), likewise dv
                                                      (the core sums them: attention.summed_over_group)
        dq, dk = rope_backward(dq), rope_backward(dk)           rotation by -angle
        dx = dq Wq + dk Wk + dv Wv
    """
    group = cache.n_heads // cache.n_kv_heads
    dcontext, grads = linear_layer_backward(dout, cache.out_proj)             # (B, T, C)
    dq, dk, dv = _attention_core_backward(group_heads(_split_heads(dcontext, cache.n_heads), group), cache.core)
    dq = ungroup_heads(dq)                                                    # (B, H, T, D)
    dk, dv = dk[:, :, 0], dv[:, :, 0]                                         # (B, KV, T, D): summed over G
    dq = rope_backward(dq, cache.rope_q)
    dk = rope_backward(dk, cache.rope_k)
    dx = _project_qkv_backward(*(_merge_heads(t) for t in (dq, dk, dv)), cache.qkv, grads)
    return dx, grads
