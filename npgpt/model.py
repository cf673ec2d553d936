"""The model API in NumPy, the same for every architecture: parameters, forward, backward, loss.

    forward(params, idx, config) -> (logits, cache)        backward(dlogits, cache) -> grads

    x, trunk_cache = trunk_forward(params, idx, config)     (B, T, C)  the architecture's trunk
    logits = x @ out_head.weight^T                          (B, T, V)  the language-model head

config.arch picks the trunk from ARCHITECTURES (GPT-2's is npgpt/gpt2.py: embeddings with a learned
position table, blocks, final LayerNorm); nothing here knows how a trunk embeds positions or normalizes.
The head, the loss, the parameter checks and the initialization are shared: the names, shapes and init
rule come from the architecture's spec in gptcore.arch. Adding an architecture = one trunk module here
(trunk_forward, trunk_backward, block_params) and one line in ARCHITECTURES.

The backward is the forward read in reverse. With tie_weights, out_head.weight IS the token embedding
(one array under two names) and its gradient is the sum of the head's and the embedding's contributions:
the trunk's backward adds its part into the head's gradient array.
"""
from typing import NamedTuple

import numpy as np

from gptcore.arch import block_param_shapes, count_params_for, param_shapes, spec_for
from gptcore.config import GPTConfig
from gptcore.engine.decoding import reads_faster_transposed
from gptcore.lora import A_SUFFIX, split_lora
from gptcore.params import check_param_shapes, unique_arrays
from npgpt import gpt2, llama
from npgpt.linear import (LinearLayerCache, linear_layer_backward, linear_layer_forward, side_by_side,
                          stored_transposed)
from npgpt.loss import cross_entropy_loss_and_grad

__all__ = ["ARCHITECTURES", "ModelCache", "architecture", "init_params", "LAYOUTS", "fast_layout", "torch_layout",
           "param_shapes", "block_param_shapes", "count_params", "count_params_for", "check_params", "check_token_ids",
           "block_params",
           "trunk_forward", "trunk_backward", "trunk_infer", "forward", "backward", "infer", "loss_and_grads"]

# config.arch -> the module with that architecture's trunk_forward / trunk_backward / block_params.
ARCHITECTURES = {"gpt2": gpt2, "llama": llama}


class ModelCache(NamedTuple):
    """forward's cache: the trunk's (an architecture's TrunkCache, which carries config and params) and the
    language-model head's."""
    trunk: tuple                     # the architecture's TrunkCache (npgpt.gpt2.TrunkCache for GPT-2)
    out_head: LinearLayerCache       # input: the final-normed hidden states (B, T, C)


def architecture(config: GPTConfig):
    """The module that composes config.arch's trunk (npgpt/gpt2.py for "gpt2")."""
    if config.arch not in ARCHITECTURES:
        raise ValueError(f"npgpt has no model for architecture {config.arch!r}; it has {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[config.arch]


# ---------------------------------------------------------------------------------------------------
# parameters
# ---------------------------------------------------------------------------------------------------

def init_params(config: GPTConfig, seed=0, dtype=np.float32, layout="fast"):
    """A fresh parameter dict by the architecture's init rule (gptcore.arch; GPT-2: weights ~ N(0, std),
    biases 0, LayerNorm scale 1 and shift 0).

    Values are drawn in float32 whatever `dtype` is, so a float64 model starts from the same numbers.
    layout: how the matrices lie in memory, never their names, shapes or values (see LAYOUTS and fast_layout):
    "fast" (the default) decodes fastest and trains as fast as "torch", every array row by row as torch
    stores it.
    """
    check_layout(layout)
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
    return relay_in_place(params, config) if layout == "fast" else params


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
    """Each block's parameters under their names inside the block (GPT-2: subdict(params, "blocks.i."))."""
    return architecture(config).block_params(params, config)


# ---------------------------------------------------------------------------------------------------
# the memory layout of the parameters
# ---------------------------------------------------------------------------------------------------
# "fast": the matrices that a batch-1 product x @ W^T reads faster as the (in, out) matrix W^T in row order
#   (gptcore.engine.decoding.reads_faster_transposed: out >= in, and a tied head with its embedding) are
#   stored so, W an (out, in) view of the contiguous W^T; and each block's layers that read one input (the
#   spec's SHARED_INPUT_LAYERS: the query, key and value projections, Llama's gate and up) side by side, as
#   views of the column blocks of one (in, out_1 + ... + out_n) matrix that decoding reads with one product
#   (npgpt.linear.linear_layers_together). Same names, shapes, values and ties. Decoding reads every weight
#   once per token, so the layout sets its speed (GPT-2 124M here: 56 against 50 tokens/s). Training reads
#   either layout: a gradient comes out in its weight's layout (npgpt.linear.linear_backward) and AdamW
#   steps it block by block (npgpt.optim.blockable_views).
# "torch": every array C-contiguous, W (out, in) row by row, as torch stores it.
LAYOUTS = ("fast", "torch")


def check_layout(layout):
    if layout not in LAYOUTS:
        raise ValueError(f"unknown parameter layout {layout!r}; choose one of {LAYOUTS}")


def fast_layout(params, config: GPTConfig):
    """The same parameters (names, shapes, values, ties) in the "fast" layout, as a new dict: W becomes an
    (out, in) view of the contiguous W^T, a shared-input group views of one matrix's column blocks (a group
    with a LoRA adapter stays apart). Arrays that stay as they are (biases, norms, embeddings read by rows,
    fc2) are the same objects. The input dict is not touched; its matrices are freed once the caller drops it."""
    check_params(split_lora(params)[0], config)
    return relay_in_place(dict(params), config)


def torch_layout(params):
    """The same parameters (names, shapes, values, ties) with every array C-contiguous, as torch stores it
    (arrays already so are the same objects), as a new dict."""
    copies = {}                                      # id(old array) -> its copy: a tied pair is copied once
    for array in params.values():
        if not array.flags.c_contiguous and id(array) not in copies:
            copies[id(array)] = np.ascontiguousarray(array)
    return {name: copies.get(id(array), array) for name, array in params.items()}


def relay_in_place(params, config: GPTConfig):
    """fast_layout on `params` itself, entry by entry, so that each old matrix is freed as soon as its copy
    is made (peak memory: the model plus its largest matrix, not two models). Every other array ends up
    C-contiguous. Arrays already in that layout stay the same objects. Returns `params`."""
    groups = shared_input_groups(params, config)
    grouped = {name for names in groups for name in names}
    relaid = {}                                      # id(old array) -> new array, so tied names stay one array
    for name, array in list(params.items()):
        if name in grouped:
            continue
        if reads_faster_transposed(name, array.shape, config):
            if not stored_transposed(array) and id(array) not in relaid:
                relaid[id(array)] = np.ascontiguousarray(array.T).T      # (out, in) view of a contiguous (in, out)
        elif not array.flags.c_contiguous and id(array) not in relaid:  # e.g. an embedding untied from a
            relaid[id(array)] = np.ascontiguousarray(array)              # transposed head: back to rows
        params[name] = relaid.get(id(array), array)
    del relaid
    for names in groups:
        if side_by_side([params[name] for name in names]) is None:       # not already so
            params.update(stored_side_by_side({name: params[name] for name in names}))
    return params


def shared_input_groups(params, config: GPTConfig) -> list[tuple[str, ...]]:
    """The weight names of every block's linear layers that read the same input (the spec's
    SHARED_INPUT_LAYERS), leaving out a group with a LoRA adapter on any of its layers."""
    groups = []
    for i in range(config.n_layers):
        for layers in spec_for(config).SHARED_INPUT_LAYERS:
            if not any(f"blocks.{i}.{layer}{A_SUFFIX}" in params for layer in layers):
                groups.append(tuple(f"blocks.{i}.{layer}.weight" for layer in layers))
    return groups


def stored_side_by_side(weights: dict) -> dict:
    """name -> the same (out_i, in) values as views of the column blocks of one contiguous
    (in, out_1 + ... + out_n) array, in the given order (npgpt.linear.side_by_side reads it back)."""
    first = next(iter(weights.values()))
    together = np.empty((first.shape[1], sum(w.shape[0] for w in weights.values())), dtype=first.dtype)
    out, start = {}, 0
    for name, w in weights.items():
        block = together[:, start:start + w.shape[0]]                              # (in, out_i) column block
        block[...] = w.T
        out[name] = block.T
        start += w.shape[0]
    return out


# ---------------------------------------------------------------------------------------------------
# the trunk: everything but the output head
# ---------------------------------------------------------------------------------------------------

def trunk_forward(params, idx, config: GPTConfig, *, train=False, rng=None, kv_cache=None, attention_mask=None,
                  blocks=None):
    """Everything but the output head: idx (B, T) -> final-normed hidden states x (B, T, C), the
    architecture's TrunkCache.

    The classification head and LoRA reuse it; forward() adds the language-model head.
    kv_cache: an npgpt.kvcache.KVCache (decoding, inference only): idx are the NEW tokens, placed after the
    cached ones, whose keys and values the attention layers reuse; attention_mask (B, T), 0 at left
    padding, goes with it (see npgpt/kvcache.py). No backward through this path.
    blocks: block_params(params, config), for callers that run the trunk many times (decoding): splitting
    the flat dict costs more than a decoding step's small operations.
    """
    idx = check_token_ids(idx, config)
    if train and config.drop_rate > 0 and rng is None:
        raise ValueError("forward(train=True) with drop_rate > 0 needs rng=np.random.default_rng(seed)")
    if kv_cache is None and attention_mask is not None:
        raise ValueError("attention_mask (left padding) needs a kv_cache; see npgpt.generate for batches")
    if kv_cache is not None and train:
        raise ValueError("a KV cache is for inference: call trunk_forward(train=False)")
    return architecture(config).trunk_forward(params, idx, config, train=train, rng=rng, kv_cache=kv_cache,
                                              attention_mask=attention_mask, blocks=blocks)


def trunk_infer(params, idx, config: GPTConfig, *, kv_cache=None, attention_mask=None, blocks=None):
    """The trunk for inference: idx (B, T) -> final-normed hidden states x (B, T, C), no cache, no dropout.

    Equal to trunk_forward(train=False)'s x, but nothing is kept for a backward: each block's activations
    are freed as soon as the next block has its input. kv_cache, attention_mask, blocks: as trunk_forward.
    An architecture module without its own trunk_infer runs its trunk_forward and drops the caches at the end
    (correct, but holding every block's cache until then).
    """
    idx = check_token_ids(idx, config)
    if kv_cache is None and attention_mask is not None:
        raise ValueError("attention_mask (left padding) needs a kv_cache; see npgpt.generate for batches")
    trunk = architecture(config)
    run = getattr(trunk, "trunk_infer", None)
    if run is None:
        return trunk.trunk_forward(params, idx, config, kv_cache=kv_cache, attention_mask=attention_mask,
                                   blocks=blocks)[0]
    return run(params, idx, config, kv_cache=kv_cache, attention_mask=attention_mask, blocks=blocks)


def check_block_split(config: GPTConfig, first_block: int) -> int:
    """first_block: where the trunk is cut into a frozen bottom and a trained top, 0..n_layers."""
    if isinstance(first_block, bool) or not isinstance(first_block, (int, np.integer)) \
            or not 0 <= first_block <= config.n_layers:
        raise ValueError(f"first_block must be an integer in [0, {config.n_layers}], got {first_block!r}")
    return int(first_block)


def trunk_bottom_infer(params, idx, config: GPTConfig, n_blocks: int):
    """The bottom of the trunk, for inference: embeddings and blocks 0..n_blocks-1 (no dropout, no cache).

    idx: (B, T) -> x: (B, T, C), the input of block n_blocks. With trunk_top_forward(params, x, config,
    n_blocks) it makes trunk_forward (train=False): classification finetuning that trains only the last
    blocks computes this frozen part once per message and reuses it every epoch.
    """
    idx = check_token_ids(idx, config)
    return architecture(config).trunk_bottom_infer(params, idx, config, check_block_split(config, n_blocks))


def trunk_top_forward(params, x, config: GPTConfig, first_block: int, *, train=False, rng=None):
    """The top of the trunk: x (B, T, C), trunk_bottom_infer's output -> final-normed hidden states (B, T, C),
    the architecture's TrunkCache, for trunk_backward(dx, cache, grads, first_block=first_block)."""
    if train and config.drop_rate > 0 and rng is None:
        raise ValueError("trunk_top_forward(train=True) with drop_rate > 0 needs rng=np.random.default_rng(seed)")
    first_block = check_block_split(config, first_block)
    return architecture(config).trunk_top_forward(params, x, config, first_block, train=train, rng=rng)


def trunk_backward(dx, cache, grads, first_block=0):
    """dx: (B, T, C) gradient of the final-normed hidden states -> fills `grads` for every trunk parameter.

    If `grads` already holds "out_head.weight" and the head is tied, the embedding gradient is
    scatter-added into that same array (one array, one gradient = head part + embedding part).
    first_block > 0 stops the backward after block `first_block` (finetuning only the last blocks):
    the earlier blocks and the embeddings get no entry in `grads`, and their backward is never computed.
    """
    return architecture(cache.config).trunk_backward(dx, cache, grads, first_block=first_block)


# ---------------------------------------------------------------------------------------------------
# the language model: trunk + head
# ---------------------------------------------------------------------------------------------------

def forward(params, idx, config: GPTConfig, *, train=False, rng=None):
    """idx: (B, T) int token ids -> logits: (B, T, V), ModelCache(trunk, out_head) for backward.

    train=True applies dropout (config.drop_rate) with masks drawn from rng in a fixed order: for GPT-2 the
    embedding dropout, then per block the attention-weight, post-attention and post-feed-forward dropouts.
    """
    x, trunk_cache = trunk_forward(params, idx, config, train=train, rng=rng)   # (B, T, C)
    logits, head_cache = linear_layer_forward(x, params, "out_head")            # (B, T, V), out_head.weight (V, C)
    return logits, ModelCache(trunk=trunk_cache, out_head=head_cache)


def infer(params, idx, config: GPTConfig):
    """idx: (B, T) int token ids -> logits: (B, T, V), for inference: equal to forward(...)[0] (train=False),
    keeping no cache for a backward and freeing each block's activations as it goes (trunk_infer).

    At GPT-2 124M, B=4, T=256 the forward's caches hold ~1.3 GB; infer holds the parameters, one block's
    activations and the logits. Generation's prompt pass and npgpt.train.evaluate_loss use it.
    """
    x = trunk_infer(params, idx, config)                                       # (B, T, C)
    return linear_layer_forward(x, params, "out_head")[0]                      # (B, T, V)


def backward(dlogits, cache, trainable_names=None):
    """dlogits: (B, T, V) -> grads: dict with the same keys as params (a tied array's gradient under both).

    With LoRA adapters in params (npgpt/lora.py), an adapted layer's frozen weight and bias get no
    gradient and its lora_A / lora_B do; the adapters' constant lora_scaling gets none either.
    trainable_names: only these gradients are returned (None: all). When the head's weight is not among
    them (nor, for a tied head, the token embedding), its weight gradient dW = dlogits^T x, a (V, C) GEMM as
    costly as the head's forward, is not computed (measured here: a LoRA step on attention and feed-forward
    at B=4, T=256 takes 0.91 of the time at GPT-2 124M, 0.95 at SmolLM2-135M, whose head is a smaller share).
    """
    frozen_head = trainable_names is not None and not _head_trained(cache.trunk.params, set(trainable_names))
    dx, grads = linear_layer_backward(dlogits, cache.out_head, frozen=frozen_head)   # dx (B, T, C); dW (V, C)
    trunk_backward(dx, cache.trunk, grads)
    if trainable_names is None:
        return {name: grads[name] for name in cache.trunk.params if name in grads}
    missing = [name for name in trainable_names if name not in grads]
    if missing:
        raise ValueError(f"trainable_names has no gradient for {missing[:3]}: not a parameter of the model, or "
                         f"one that does not train (a LoRA-adapted layer's frozen weight or bias, lora_scaling)")
    return {name: grads[name] for name in trainable_names}


def _head_trained(params, trainable: set) -> bool:
    """Does any trained name need the head's weight gradient: the head's own, or the embedding it is tied to?"""
    tied = params.get("out_head.weight") is params.get("tok_emb.weight")
    return "out_head.weight" in trainable or (tied and "tok_emb.weight" in trainable)


def loss_and_grads(params, idx, targets, config: GPTConfig, *, train=False, rng=None, trainable_names=None):
    """Mean cross-entropy of the next-token predictions and the gradient of every parameter (of
    trainable_names only, when given: see backward)."""
    logits, cache = forward(params, idx, config, train=train, rng=rng)
    # The fused loss turns the (B, T, V) logits buffer itself into dlogits: no second 196 MiB array at
    # GPT-2 size, and one softmax pass fewer than cross_entropy_forward + cross_entropy_backward.
    loss, dlogits = cross_entropy_loss_and_grad(logits, targets, overwrite_logits=True)
    grads = backward(dlogits, cache, trainable_names=trainable_names)
    return loss, grads
