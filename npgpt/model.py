"""The GPT-2 model in NumPy: parameter layout, initialization, forward and backward.

    forward(params, idx, config) -> (logits, cache)        backward(dlogits, cache) -> grads

    x = dropout(tok_emb[idx] + pos_emb[:T])                 (B, T, C)
    x = block_i(x)  for i in 0 .. L-1                       (B, T, C)
    logits = final_norm(x) @ out_head.weight^T              (B, T, V)

The backward is the forward read in reverse. With tie_weights, out_head.weight IS tok_emb.weight (one array
under two names) and its gradient is the sum of the head's and the embedding's contributions.
"""
import numpy as np

from gptcore.arch import block_param_shapes, count_params_for, param_shapes, spec_for  # noqa: F401 (model API)
from gptcore.config import GPTConfig
from gptcore.params import check_param_shapes, prefixed, subdict, unique_arrays
from npgpt.block import block_backward, block_forward
from npgpt.dropout import dropout_backward, dropout_forward
from npgpt.embedding import embedding_backward, embedding_forward, pos_embedding_backward, pos_embedding_forward
from npgpt.layernorm import layernorm_backward, layernorm_forward
from npgpt.linear import linear_layer_backward, linear_layer_forward
from npgpt.loss import cross_entropy_loss_and_grad


def init_params(config: GPTConfig, seed=0, dtype=np.float32):
    """A fresh parameter dict by the architecture's init rule (gptcore.arch; GPT-2: weights ~ N(0, std),
    biases 0, LayerNorm scale 1 and shift 0).

    Values are drawn in float32 whatever `dtype` is, so a float64 model starts from the same numbers.
    """
    rng = np.random.default_rng(seed)
    head, embedding = spec_for(config).TIED_HEAD
    params = {}
    for name, shape in param_shapes(config).items():
        kind, value = spec_for(config).init_rule(name, config)
        if name == head and config.tie_weights:
            params[name] = params[embedding]
        elif kind == "ones":
            params[name] = np.ones(shape, dtype=dtype)
        elif kind == "zeros":
            params[name] = np.zeros(shape, dtype=dtype)
        else:
            draw = rng.standard_normal(shape, dtype=np.float32)
            draw *= np.float32(value)
            params[name] = draw.astype(dtype, copy=False)
    return params


def count_params(params):
    """Number of trainable numbers, counting a tied array once."""
    return sum(value.size for _, value in unique_arrays(params))


def check_params(params, config: GPTConfig):
    """Clear error when the dict does not match the config's canonical names and shapes."""
    check_param_shapes(params, param_shapes(config))


def check_token_ids(idx, config: GPTConfig):
    """Token ids must be a (B, T) integer array with T <= context_length and every id in [0, V)."""
    idx = np.asarray(idx)
    if not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"token ids must be integers, got dtype {idx.dtype}; encode text with a tokenizer first")
    if idx.ndim != 2:
        raise ValueError(f"token ids must have shape (B, T), got {idx.shape}; use idx[None] for a single sequence")
    if idx.shape[1] > config.context_length:
        raise ValueError(
            f"sequence length {idx.shape[1]} exceeds the context length {config.context_length}; "
            f"crop the input to its last {config.context_length} tokens"
        )
    if idx.size and (idx.min() < 0 or idx.max() >= config.vocab_size):
        raise ValueError(f"token ids must be in [0, {config.vocab_size}), got values {idx.min()}..{idx.max()}")
    return idx


def block_params(params, config: GPTConfig):
    """Each block's parameters under their names inside the block: [subdict(params, "blocks.i.") for each i]."""
    return [subdict(params, f"blocks.{i}.") for i in range(config.n_layers)]


def trunk_forward(params, idx, config: GPTConfig, *, train=False, rng=None, kv_cache=None, attention_mask=None,
                  blocks=None):
    """Everything but the output head: idx (B, T) -> final-normed hidden states x (B, T, C), cache.

    The classification head and LoRA reuse it; forward() adds the language-model head.
    kv_cache: an npgpt.kvcache.KVCache (decoding, inference only): idx are the NEW tokens, placed after the
    cached ones, whose keys and values the attention layers reuse; attention_mask (B, T), 0 at left
    padding, goes with it (see npgpt/kvcache.py). No backward through this path.
    blocks: block_params(params, config), for callers that run the trunk many times (decoding): splitting
    the flat dict costs more than a decoding step's small operations.
    """
    idx = check_token_ids(idx, config)
    T = idx.shape[1]
    drop_rate = config.drop_rate if train else 0.0
    if drop_rate > 0 and rng is None:
        raise ValueError("forward(train=True) with drop_rate > 0 needs rng=np.random.default_rng(seed)")
    if kv_cache is None and attention_mask is not None:
        raise ValueError("attention_mask (left padding) needs a kv_cache; see npgpt.generate for batches")
    if kv_cache is not None and train:
        raise ValueError("a KV cache is for inference: call trunk_forward(train=False)")
    tok, tok_cache = embedding_forward(params["tok_emb.weight"], idx)            # (B, T, C)
    if kv_cache is None:
        pos, pos_cache = pos_embedding_forward(params["pos_emb.weight"], T)      # (T, C)
    else:
        positions = kv_cache.begin(T, attention_mask)                           # (B, T), after the cached ones
        pos, pos_cache = embedding_forward(params["pos_emb.weight"], positions)  # (B, T, C)
    tok += pos
    x, drop_cache = dropout_forward(tok, drop_rate, rng=rng)
    block_caches = []
    for i, p in enumerate(blocks if blocks is not None else block_params(params, config)):
        x, block_cache = block_forward(x, p, config, train=train, rng=rng,
                                       kv_cache=None if kv_cache is None else kv_cache.layer(i))
        block_caches.append(block_cache)
    if kv_cache is not None:
        kv_cache.commit()
    x, norm_cache = layernorm_forward(x, params["final_norm.scale"], params["final_norm.shift"])
    return x, (config, params, tok_cache, pos_cache, drop_cache, block_caches, norm_cache)


def trunk_backward(dx, cache, grads, first_block=0):
    """dx: (B, T, C) gradient of the final-normed hidden states -> fills `grads` for every trunk parameter.

    If `grads` already holds "out_head.weight" and the head is tied, the embedding gradient is
    scatter-added into that same array (one array, one gradient = head part + embedding part).
    first_block > 0 stops the backward after block `first_block` (finetuning only the last blocks):
    the earlier blocks and the embeddings get no entry in `grads`, and their backward is never computed.
    """
    config, params, tok_cache, pos_cache, drop_cache, block_caches, norm_cache = cache
    if not 0 <= first_block <= config.n_layers:
        raise ValueError(f"first_block must be in [0, {config.n_layers}], got {first_block}")
    dx, grads["final_norm.scale"], grads["final_norm.shift"] = layernorm_backward(dx, norm_cache)
    for i in reversed(range(first_block, config.n_layers)):
        dx, block_grads = block_backward(dx, block_caches[i])
        grads.update(prefixed(block_grads, f"blocks.{i}."))
    if first_block > 0:
        return grads
    dx = dropout_backward(dx, drop_cache)
    grads["pos_emb.weight"] = pos_embedding_backward(dx, pos_cache)
    tied = params.get("out_head.weight") is params["tok_emb.weight"] and "out_head.weight" in grads
    grads["tok_emb.weight"] = embedding_backward(dx, tok_cache, dweight=grads["out_head.weight"] if tied else None)
    return grads


def forward(params, idx, config: GPTConfig, *, train=False, rng=None):
    """idx: (B, T) int token ids -> logits: (B, T, V), cache for backward.

    train=True applies dropout (config.drop_rate) with masks drawn from rng in a fixed order: the embedding
    dropout, then per block the attention-weight, post-attention and post-feed-forward dropouts.
    """
    x, trunk_cache = trunk_forward(params, idx, config, train=train, rng=rng)   # (B, T, C)
    logits, head_cache = linear_layer_forward(x, params, "out_head")            # (B, T, V), out_head.weight (V, C)
    return logits, (trunk_cache, head_cache)


def backward(dlogits, cache):
    """dlogits: (B, T, V) -> grads: dict with the same keys as params (a tied array's gradient under both).

    With LoRA adapters in params (npgpt/lora.py), an adapted layer's frozen weight and bias get no
    gradient and its lora_A / lora_B do; the adapters' constant lora_scaling gets none either.
    """
    trunk_cache, head_cache = cache
    params = trunk_cache[1]
    dx, grads = linear_layer_backward(dlogits, head_cache)                       # dx (B, T, C); dW (V, C)
    trunk_backward(dx, trunk_cache, grads)
    return {name: grads[name] for name in params if name in grads}


def loss_and_grads(params, idx, targets, config: GPTConfig, *, train=False, rng=None):
    """Mean cross-entropy of the next-token predictions and the gradient of every parameter."""
    logits, cache = forward(params, idx, config, train=train, rng=rng)
    # The fused loss turns the (B, T, V) logits buffer itself into dlogits: no second 196 MiB array at
    # GPT-2 size, and one softmax pass fewer than cross_entropy_forward + cross_entropy_backward.
    loss, dlogits = cross_entropy_loss_and_grad(logits, targets, overwrite_logits=True)
    grads = backward(dlogits, cache)
    return loss, grads
