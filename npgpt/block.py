"""The pre-LayerNorm transformer block of GPT-2:

    x = x + dropout(attention(norm1(x)))
    x = x + dropout(feedforward(norm2(x)))
"""
from typing import NamedTuple, Optional

from gptcore.params import prefixed, subdict
from npgpt.attention import (MultiheadAttentionCache, multihead_attention_backward, multihead_attention_forward,
                             multihead_attention_infer)
from npgpt.dropout import DropoutCache, dropout_backward, dropout_forward
from npgpt.feedforward import FeedForwardCache, feedforward_backward, feedforward_forward, feedforward_infer
from npgpt.layernorm import LayerNormCache, layernorm_backward, layernorm_forward, layernorm_infer


class BlockCache(NamedTuple):
    """The caches of the block's six steps, in forward order (a dropout's is None when it is off)."""
    norm1: LayerNormCache
    att: MultiheadAttentionCache
    drop1: Optional[DropoutCache]    # on the attention's output, before residual 1
    norm2: LayerNormCache
    ff: FeedForwardCache
    drop2: Optional[DropoutCache]    # on the feed-forward's output, before residual 2


def block_forward(x, p, config, *, train=False, rng=None, kv_cache=None):
    """x: (B, T, C); p: this block's parameters (keys "norm1.scale", "att.W_query.weight", "ff.fc1.weight", ...)
    -> out: (B, T, C), BlockCache.  With train=True, the dropout masks are drawn from rng in this order:
    attention weights, residual after attention, residual after feed-forward.
    kv_cache: this layer's npgpt.kvcache.LayerKV when decoding with a cache (inference only).
    """
    drop_rate = config.drop_rate if train else 0.0
    h, norm1_cache = layernorm_forward(x, p["norm1.scale"], p["norm1.shift"])
    a, att_cache = multihead_attention_forward(h, subdict(p, "att."), config.n_heads, drop_rate=drop_rate, rng=rng,
                                               kv_cache=kv_cache)
    a, drop1_cache = dropout_forward(a, drop_rate, rng=rng)
    x = x + a                                        # residual 1, (B, T, C)
    h, norm2_cache = layernorm_forward(x, p["norm2.scale"], p["norm2.shift"])
    f, ff_cache = feedforward_forward(h, subdict(p, "ff."))
    f, drop2_cache = dropout_forward(f, drop_rate, rng=rng)
    out = x + f                                      # residual 2, (B, T, C)
    return out, BlockCache(norm1=norm1_cache, att=att_cache, drop1=drop1_cache,
                           norm2=norm2_cache, ff=ff_cache, drop2=drop2_cache)


def block_infer(x, p, config, *, kv_cache=None):
    """block_forward's output without caches or dropout (inference): every intermediate is dropped as soon
    as the next one exists, and the residual sums go into the branch outputs' own buffers (x is not
    written).   x: (B, T, C) -> out: (B, T, C)."""
    a = multihead_attention_infer(layernorm_infer(x, p["norm1.scale"], p["norm1.shift"]), subdict(p, "att."),
                                  config.n_heads, kv_cache=kv_cache)
    a += x                                           # residual 1: x + attention (a is this call's own array)
    f = feedforward_infer(layernorm_infer(a, p["norm2.scale"], p["norm2.shift"]), subdict(p, "ff."))
    f += a                                           # residual 2
    return f


def block_backward(dout, cache):
    """dout: (B, T, C) -> dx: (B, T, C), grads under p's keys.

    A residual x + f(x) passes dout straight through and adds f's input gradient:
        dx = dout + df/dx^T dout
    """
    # residual 2: out = x1 + dropout(ff(norm2(x1)))
    df = dropout_backward(dout, cache.drop2)
    dh, ff_grads = feedforward_backward(df, cache.ff)
    dh, dscale2, dshift2 = layernorm_backward(dh, cache.norm2)
    dx1 = dh
    dx1 += dout
    # residual 1: x1 = x + dropout(att(norm1(x)))
    da = dropout_backward(dx1, cache.drop1)
    dh, att_grads = multihead_attention_backward(da, cache.att)
    dh, dscale1, dshift1 = layernorm_backward(dh, cache.norm1)
    dx = dh
    dx += dx1
    grads = {"norm1.scale": dscale1, "norm1.shift": dshift1, "norm2.scale": dscale2, "norm2.shift": dshift2}
    grads.update(prefixed(att_grads, "att."))
    grads.update(prefixed(ff_grads, "ff."))
    return dx, grads
