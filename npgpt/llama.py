"""Llama's block and trunk in NumPy: token embedding (no position table), pre-RMSNorm blocks with
grouped-query attention under RoPE and a SwiGLU feed-forward, a final RMSNorm.

    x = tok_emb[idx]                                        (B, T, C)
    cos, sin = rope_tables(positions)                       (T, D)     positions 0..T-1, or after a KV cache's
    block_i:  x = x + attention(rmsnorm1(x), cos, sin)      (B, T, C)  npgpt/gqa_attention.py
              x = x + swiglu(rmsnorm2(x))                   (B, T, C)  npgpt/swiglu.py
    x = final_norm(x)                                       (B, T, C)  npgpt/rmsnorm.py

The language-model head and the loss are shared by every architecture and live in npgpt/model.py, which
calls this module through its ARCHITECTURES registry (call npgpt.model, not this module). Names and shapes
are gptcore/arch/llama.py's. No dropout (the config refuses drop_rate > 0 for Llama).
"""
from typing import List, NamedTuple

import numpy as np

from gptcore.config import GPTConfig
from gptcore.params import prefixed, subdict
from npgpt.embedding import EmbeddingCache, embedding_backward, embedding_forward
from npgpt.gqa_attention import GQACache, gqa_attention_backward, gqa_attention_forward, gqa_attention_infer
from npgpt.rmsnorm import RMSNormCache, rmsnorm_backward, rmsnorm_forward, rmsnorm_infer
from npgpt.rope import rope_tables
from npgpt.swiglu import SwiGLUCache, swiglu_backward, swiglu_forward, swiglu_infer


class LlamaBlockCache(NamedTuple):
    """The caches of the block's four steps, in forward order."""
    norm1: RMSNormCache
    att: GQACache
    norm2: RMSNormCache
    ff: SwiGLUCache


class TrunkCache(NamedTuple):
    """The caches of Llama's trunk, in forward order, with the config and the parameter dict it ran on."""
    config: GPTConfig
    params: dict                     # the caller's dict (the tied-head check reads its arrays)
    tok_emb: EmbeddingCache
    positions: np.ndarray            # (T,) or (B, T): where RoPE placed the tokens
    blocks: List[LlamaBlockCache]    # one per block, in order
    final_norm: RMSNormCache


def llama_block_forward(x, p, config: GPTConfig, cos, sin, *, kv_cache=None):
    """x: (B, T, C); p: this block's parameters ("norm1.scale", "att.W_query.weight", "ff.gate.weight", ...);
    cos, sin: the RoPE tables of these T positions -> out: (B, T, C), LlamaBlockCache.
    kv_cache: this layer's npgpt.kvcache.LayerKV when decoding with a cache (inference only).
    """
    h, norm1_cache = rmsnorm_forward(x, p["norm1.scale"], config.norm_eps)
    a, att_cache = gqa_attention_forward(h, subdict(p, "att."), config.n_heads, config.n_kv_heads, cos, sin,
                                         kv_cache=kv_cache)
    x = x + a                                        # residual 1, (B, T, C)
    h, norm2_cache = rmsnorm_forward(x, p["norm2.scale"], config.norm_eps)
    f, ff_cache = swiglu_forward(h, subdict(p, "ff."))
    out = x + f                                      # residual 2, (B, T, C)
    return out, LlamaBlockCache(norm1=norm1_cache, att=att_cache, norm2=norm2_cache, ff=ff_cache)


def llama_block_infer(x, p, config: GPTConfig, cos, sin, *, kv_cache=None):
    """llama_block_forward's output without caches (inference): every intermediate is dropped as soon as the
    next step has its input.   x: (B, T, C) -> out: (B, T, C); x itself is not written."""
    a = gqa_attention_infer(rmsnorm_infer(x, p["norm1.scale"], config.norm_eps), subdict(p, "att."),
                            config.n_heads, config.n_kv_heads, cos, sin, kv_cache=kv_cache)
    a += x                                           # residual 1, in the attention output's own buffer
    f = swiglu_infer(rmsnorm_infer(a, p["norm2.scale"], config.norm_eps), subdict(p, "ff."))
    f += a                                           # residual 2
    return f


def llama_block_backward(dout, cache):
    """dout: (B, T, C) -> dx: (B, T, C), grads under p's keys.

    Each residual x + f(x) passes dout straight through and adds f's input gradient: dx = dout + df/dx^T dout.
    """
    # residual 2: out = x1 + swiglu(rmsnorm2(x1))
    dh, ff_grads = swiglu_backward(dout, cache.ff)
    dh, dscale2 = rmsnorm_backward(dh, cache.norm2)
    dx1 = dh
    dx1 += dout
    # residual 1: x1 = x + attention(rmsnorm1(x))
    dh, att_grads = gqa_attention_backward(dx1, cache.att)
    dh, dscale1 = rmsnorm_backward(dh, cache.norm1)
    dx = dh
    dx += dx1
    grads = {"norm1.scale": dscale1, "norm2.scale": dscale2}
    grads.update(prefixed(att_grads, "att."))
    grads.update(prefixed(ff_grads, "ff."))
    return dx, grads


def block_params(params, config: GPTConfig):
    """Each block's parameters under their names inside the block: [subdict(params, "blocks.i.") for each i]."""
    return [subdict(params, f"blocks.{i}.") for i in range(config.n_layers)]


def trunk_forward(params, idx, config: GPTConfig, *, train=False, rng=None, kv_cache=None, attention_mask=None,
                  blocks=None):
    """idx: (B, T) token ids, checked by npgpt.model -> final-normed hidden states x (B, T, C), TrunkCache.

    Positions are 0..T-1, or with a KV cache (decoding) each new token's index among its row's real tokens
    after the cached ones (kv_cache.begin; attention_mask (B, T): 0 at left padding); RoPE rotates the queries
    and keys at them. train and rng are accepted for the shared signature: Llama has no dropout.
    """
    T = idx.shape[1]
    x, tok_cache = embedding_forward(params["tok_emb.weight"], idx)       # (B, T, C), its own copy
    positions = np.arange(T) if kv_cache is None else kv_cache.begin(T, attention_mask)   # (T,) or (B, T)
    cos, sin = rope_tables(positions, config.head_dim, config.rope_theta, x.dtype,
                           scaling=config.rope_scaling)                                # (T, D) or (B, 1, T, D)
    block_caches = []
    for i, p in enumerate(blocks if blocks is not None else block_params(params, config)):
        x, block_cache = llama_block_forward(x, p, config, cos, sin,
                                             kv_cache=None if kv_cache is None else kv_cache.layer(i))
        block_caches.append(block_cache)
    if kv_cache is not None:
        kv_cache.commit()
    x, norm_cache = rmsnorm_forward(x, params["final_norm.scale"], config.norm_eps)
    return x, TrunkCache(config=config, params=params, tok_emb=tok_cache, positions=positions,
                         blocks=block_caches, final_norm=norm_cache)


def trunk_infer(params, idx, config: GPTConfig, *, kv_cache=None, attention_mask=None, blocks=None):
    """trunk_forward's hidden states without any cache (inference): each block's input is dropped once its
    output exists.   idx: (B, T) -> x: (B, T, C)."""
    T = idx.shape[1]
    x, _ = embedding_forward(params["tok_emb.weight"], idx)                       # (B, T, C)
    positions = np.arange(T) if kv_cache is None else kv_cache.begin(T, attention_mask)
    cos, sin = rope_tables(positions, config.head_dim, config.rope_theta, x.dtype, scaling=config.rope_scaling)
    for i, p in enumerate(blocks if blocks is not None else block_params(params, config)):
        x = llama_block_infer(x, p, config, cos, sin, kv_cache=None if kv_cache is None else kv_cache.layer(i))
    if kv_cache is not None:
        kv_cache.commit()
    return rmsnorm_infer(x, params["final_norm.scale"], config.norm_eps)


def trunk_bottom_infer(params, idx, config: GPTConfig, n_blocks: int):
    """The frozen bottom of the trunk for inference: the token embedding, then blocks 0..n_blocks-1 (RoPE at
    positions 0..T-1), through the inference blocks (no caches kept).   idx: (B, T) -> x: (B, T, C), the input of block
    n_blocks (trunk_top_forward's x)."""
    x, _ = embedding_forward(params["tok_emb.weight"], idx)                               # (B, T, C)
    cos, sin = rope_tables(np.arange(idx.shape[1]), config.head_dim, config.rope_theta, x.dtype,
                           scaling=config.rope_scaling)                                   # (T, D)
    for p in block_params(params, config)[:n_blocks]:
        x = llama_block_infer(x, p, config, cos, sin)
    return x


def trunk_top_forward(params, x, config: GPTConfig, first_block: int, *, train=False, rng=None):
    """The trunk from block `first_block` on: x (B, T, C), the bottom's output -> final-normed hidden states
    (B, T, C), TrunkCache. RoPE's positions are 0..T-1 again (the rotation is applied inside each block). The
    cache has no embedding cache and None for the blocks below first_block, so trunk_backward(...,
    first_block=first_block) (which never reads them) runs on it unchanged. train, rng: the shared signature."""
    positions = np.arange(x.shape[1])
    cos, sin = rope_tables(positions, config.head_dim, config.rope_theta, x.dtype, scaling=config.rope_scaling)
    block_caches = [None] * first_block
    for p in block_params(params, config)[first_block:]:
        x, block_cache = llama_block_forward(x, p, config, cos, sin)
        block_caches.append(block_cache)
    x, norm_cache = rmsnorm_forward(x, params["final_norm.scale"], config.norm_eps)
    return x, TrunkCache(config=config, params=params, tok_emb=None, positions=positions, blocks=block_caches,
                         final_norm=norm_cache)


def trunk_backward(dx, cache, grads, first_block=0):
    """dx: (B, T, C) gradient of the final-normed hidden states -> fills `grads` for every trunk parameter.

    The forward read in reverse. If `grads` already holds "out_head.weight" and the head is tied
    (out_head.weight IS tok_emb.weight), the embedding gradient is scatter-added into that same array.
    first_block > 0 stops after block `first_block`: the earlier blocks and the embedding get no gradient.
    """
    config, params = cache.config, cache.params
    if not 0 <= first_block <= config.n_layers:
        raise ValueError(f"first_block must be in [0, {config.n_layers}], got {first_block}")
    dx, grads["final_norm.scale"] = rmsnorm_backward(dx, cache.final_norm)
    for i in reversed(range(first_block, config.n_layers)):
        dx, block_grads = llama_block_backward(dx, cache.blocks[i])
        grads.update(prefixed(block_grads, f"blocks.{i}."))
    if first_block > 0:
        return grads
    tied = params.get("out_head.weight") is params["tok_emb.weight"] and "out_head.weight" in grads
    grads["tok_emb.weight"] = embedding_backward(dx, cache.tok_emb, dweight=grads["out_head.weight"] if tied else None)
    return grads
