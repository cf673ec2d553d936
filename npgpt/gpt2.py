"""GPT-2's trunk in NumPy: learned token + position embeddings, pre-LayerNorm blocks, a final LayerNorm.

    x = dropout(tok_emb[idx] + pos_emb[:T])                 (B, T, C)
    x = block_i(x)  for i in 0 .. L-1                       (B, T, C)   npgpt/block.py
    x = final_norm(x)                                       (B, T, C)

The language-model head (x @ out_head.weight^T) and the loss are the same for every architecture and
live in npgpt/model.py, which calls this module through its ARCHITECTURES registry; call npgpt.model, not
this module (model.trunk_forward checks the token ids and the train / dropout / KV-cache arguments first).
The names and shapes are gptcore/arch/gpt2.py's.

Every architecture's trunk cache carries `config` and `params`: npgpt.model reads them to dispatch the
backward and to name the gradients.
"""
from typing import List, NamedTuple, Optional, Union

from gptcore.config import GPTConfig
from gptcore.params import prefixed, subdict
from npgpt.block import BlockCache, block_backward, block_forward, block_infer
from npgpt.dropout import DropoutCache, dropout_backward, dropout_forward
from npgpt.embedding import (EmbeddingCache, PositionCache, embedding_backward, embedding_forward,
                             pos_embedding_backward, pos_embedding_forward)
from npgpt.layernorm import LayerNormCache, layernorm_backward, layernorm_forward, layernorm_infer


class TrunkCache(NamedTuple):
    """The caches of GPT-2's trunk, in forward order, with the config and the parameter dict it ran on."""
    config: GPTConfig
    params: dict                               # the caller's dict (the tied-head check reads its arrays)
    tok_emb: EmbeddingCache
    pos_emb: Union[PositionCache, EmbeddingCache]   # rows 0..T-1, or with a KV cache each token's position
    emb_dropout: Optional[DropoutCache]
    blocks: List[BlockCache]                   # one per block, in order
    final_norm: LayerNormCache


def block_params(params, config: GPTConfig):
    """Each block's parameters under their names inside the block: [subdict(params, "blocks.i.") for each i]."""
    return [subdict(params, f"blocks.{i}.") for i in range(config.n_layers)]


def embed(params, idx, kv_cache=None, attention_mask=None):
    """tok_emb[idx] + pos_emb[positions] -> (B, T, C) and the two lookups' caches.

    Positions are 0..T-1, or with a KV cache (decoding) each new token's index among its row's real tokens
    after the cached ones: kv_cache.begin reserves them (attention_mask (B, T): 0 at left padding).
    """
    T = idx.shape[1]
    tok, tok_cache = embedding_forward(params["tok_emb.weight"], idx)            # (B, T, C)
    if kv_cache is None:
        pos, pos_cache = pos_embedding_forward(params["pos_emb.weight"], T)      # (T, C), broadcast over B
    else:
        positions = kv_cache.begin(T, attention_mask)                           # (B, T), after the cached ones
        pos, pos_cache = embedding_forward(params["pos_emb.weight"], positions)  # (B, T, C)
    tok += pos                                       # tok is the gather's own copy: adding in place is safe
    return tok, tok_cache, pos_cache


def trunk_forward(params, idx, config: GPTConfig, *, train=False, rng=None, kv_cache=None, attention_mask=None,
                  blocks=None):
    """idx: (B, T) token ids, checked by npgpt.model -> final-normed hidden states x (B, T, C), TrunkCache.

    kv_cache, attention_mask, blocks: as npgpt.model.trunk_forward describes them (decoding, inference only).
    """
    drop_rate = config.drop_rate if train else 0.0
    x, tok_cache, pos_cache = embed(params, idx, kv_cache, attention_mask)
    x, drop_cache = dropout_forward(x, drop_rate, rng=rng)
    block_caches = []
    for i, p in enumerate(blocks if blocks is not None else block_params(params, config)):
        x, block_cache = block_forward(x, p, config, train=train, rng=rng,
                                       kv_cache=None if kv_cache is None else kv_cache.layer(i))
        block_caches.append(block_cache)
    if kv_cache is not None:
        kv_cache.commit()
    x, norm_cache = layernorm_forward(x, params["final_norm.scale"], params["final_norm.shift"])
    return x, TrunkCache(config=config, params=params, tok_emb=tok_cache, pos_emb=pos_cache,
                         emb_dropout=drop_cache, blocks=block_caches, final_norm=norm_cache)


def trunk_infer(params, idx, config: GPTConfig, *, kv_cache=None, attention_mask=None, blocks=None):
    """trunk_forward's hidden states without any cache or dropout (inference): each block's input is dropped
    once its output exists.   idx: (B, T) -> x: (B, T, C)."""
    x, _, _ = embed(params, idx, kv_cache, attention_mask)
    for i, p in enumerate(blocks if blocks is not None else block_params(params, config)):
        x = block_infer(x, p, config, kv_cache=None if kv_cache is None else kv_cache.layer(i))
    if kv_cache is not None:
        kv_cache.commit()
    return layernorm_infer(x, params["final_norm.scale"], params["final_norm.shift"])


def trunk_bottom_infer(params, idx, config: GPTConfig, n_blocks: int):
    """The frozen bottom of the trunk for inference: embeddings, then blocks 0..n_blocks-1, no dropout, no
    cache.   idx: (B, T) -> x: (B, T, C), the input of block n_blocks (trunk_top_forward's x)."""
    x, _, _ = embed(params, idx)
    for p in block_params(params, config)[:n_blocks]:
        x = block_infer(x, p, config)
    return x


def trunk_top_forward(params, x, config: GPTConfig, first_block: int, *, train=False, rng=None):
    """The trunk from block `first_block` on: x (B, T, C), the bottom's output -> final-normed hidden states
    (B, T, C), TrunkCache. The cache has no embedding caches and None for the blocks below first_block, so
    trunk_backward(..., first_block=first_block) (which never reads them) runs on it unchanged."""
    block_caches = [None] * first_block
    for p in block_params(params, config)[first_block:]:
        x, block_cache = block_forward(x, p, config, train=train, rng=rng)
        block_caches.append(block_cache)
    x, norm_cache = layernorm_forward(x, params["final_norm.scale"], params["final_norm.shift"])
    return x, TrunkCache(config=config, params=params, tok_emb=None, pos_emb=None, emb_dropout=None,
                         blocks=block_caches, final_norm=norm_cache)


def trunk_backward(dx, cache, grads, first_block=0):
    """dx: (B, T, C) gradient of the final-normed hidden states -> fills `grads` for every trunk parameter.

    The forward read in reverse. If `grads` already holds "out_head.weight" and the head is tied
    (out_head.weight IS tok_emb.weight), the embedding gradient is scatter-added into that same array:
    one array, one gradient = head part + embedding part.
    first_block > 0 stops after block `first_block` (finetuning only the last blocks): the earlier blocks
    and the embeddings get no entry in `grads`, and their backward is never computed.
    """
    config, params = cache.config, cache.params
    if not 0 <= first_block <= config.n_layers:
        raise ValueError(f"first_block must be in [0, {config.n_layers}], got {first_block}")
    dx, grads["final_norm.scale"], grads["final_norm.shift"] = layernorm_backward(dx, cache.final_norm)
    for i in reversed(range(first_block, config.n_layers)):
        dx, block_grads = block_backward(dx, cache.blocks[i])
        grads.update(prefixed(block_grads, f"blocks.{i}."))
    if first_block > 0:
        return grads
    dx = dropout_backward(dx, cache.emb_dropout)
    grads["pos_emb.weight"] = pos_embedding_backward(dx, cache.pos_emb)
    tied = params.get("out_head.weight") is params["tok_emb.weight"] and "out_head.weight" in grads
    grads["tok_emb.weight"] = embedding_backward(dx, cache.tok_emb, dweight=grads["out_head.weight"] if tied else None)
    return grads
