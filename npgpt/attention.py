"""Self-attention, built up in the book's teaching steps, then the causal multi-head version GPT-2 uses.

    simple_attention_*            no weights: scores are dot products of the inputs themselves
    single_head_attention_*       trainable query/key/value projections, one head, optional causal mask
    multihead_attention_*         H heads of width D = C // H in parallel, causal, dropout, output projection
"""
import math
from typing import NamedTuple, Optional

import numpy as np

from npgpt.dropout import DropoutCache, dropout_backward, dropout_forward
from npgpt.linear import LinearLayerCache, linear_layer_backward, linear_layer_forward, linear_layers_together
from npgpt.speed.parallel import for_each_matrix, matmul_stack, parallel_for, rows_per_block
from npgpt.softmax import SoftmaxCache, softmax_backward, softmax_forward


class SimpleAttentionCache(NamedTuple):
    """simple_attention_backward's inputs: x (queries, keys and values at once) and the softmax's cache."""
    x: np.ndarray                    # (T, C)
    softmax: SoftmaxCache            # its probs are the attention weights (T, T)


class AttentionCoreCache(NamedTuple):
    """What the backward of context = dropout(softmax(q k^T * scale)) v needs (llm.c's preatt is not kept:
    the softmax ran in its buffer, so `att` holds the weights)."""
    q: np.ndarray                    # (..., T, D)
    k: np.ndarray                    # (..., S, D)
    v: np.ndarray                    # (..., S, D)
    att: np.ndarray                  # (..., T, S) softmax weights, 0 at masked positions
    att_dropped: np.ndarray          # (..., T, S) the weights after dropout (att itself without dropout)
    scale: float                     # 1 / sqrt(D)
    dropout: Optional[DropoutCache]  # None without dropout
    causal: bool = False             # weights from _causal_heads_forward: the backward may skip the future's block


class QKVCache(NamedTuple):
    """The three input projections' caches."""
    query: LinearLayerCache
    key: LinearLayerCache
    value: LinearLayerCache


class SingleHeadAttentionCache(NamedTuple):
    """The projections' caches, then the attention core's."""
    qkv: QKVCache
    core: AttentionCoreCache


class MultiheadAttentionCache(NamedTuple):
    """The projections' caches, the attention core's over the split heads, the output projection's."""
    n_heads: int
    qkv: QKVCache
    core: AttentionCoreCache         # per head: arrays (B, H, T, D) and (B, H, T, S)
    out_proj: LinearLayerCache


def causal_mask(T):
    """(T, T) bool, True above the diagonal: the future positions s > t that query t may not see."""
    return np.triu(np.ones((T, T), dtype=bool), k=1)


def simple_attention(x):
    """The first step: context_t = sum_s softmax_s(x_t . x_s) x_s, no trainable weights.

    x: (T, C) -> context: (T, C). simple_attention_forward also returns the cache for the backward.
    """
    return simple_attention_forward(x)[0]


def simple_attention_forward(x):
    """simple_attention with its cache.   x: (T, C) -> context: (T, C), SimpleAttentionCache(x, softmax)."""
    scores = x @ x.T                                             # (T, T)
    weights, softmax_cache = softmax_forward(scores, axis=-1)    # (T, T), rows sum to 1
    return weights @ x, SimpleAttentionCache(x=x, softmax=softmax_cache)     # (T, C)


def simple_attention_backward(dout, cache):
    """dout: (T, C) -> dx: (T, C).

    x is used three times (as queries, keys and values), so dx sums three paths:
        in the forward: context = weights x           dweights = dout x^T,  dx_value = weights^T dout
        weights = softmax(scores)                     dscores = weights * (dweights - rowsum(dweights * weights))
        scores = x x^T                                dx_query = dscores x,  dx_key = dscores^T x
        dx = weights^T dout + (dscores + dscores^T) x
    Nothing is trained here; the gradient is what a layer below the attention would receive.
    """
    x, weights = cache.x, cache.softmax.probs                    # (T, C), (T, T)
    dweights = dout @ x.T                                        # (T, T)
    dscores = softmax_backward(dweights, cache.softmax)          # (T, T)
    dx = weights.T @ dout                                        # value path
    dx += (dscores + dscores.T) @ x                              # query and key paths
    return dx


def _masked_scaled_softmax(scores, causal, scale, hide=None):
    """softmax(scale * scores) with the future masked out; scores: (..., T, S), overwritten in place and returned.

    hide: an explicit bool mask broadcastable to scores (True = not seen), used instead of the causal one
    (decoding with a KV cache, where queries and keys differ in number, and left padding).

    Speed: without `hide`, the scaling, the mask and the softmax's passes run per (T, S) matrix, so one
    matrix stays in the CPU cache through all of them, and the matrices are shared among the cores
    (npgpt.speed.parallel). With `hide` (small decoding steps) the passes run over the whole array.
    """
    if hide is not None:
        scores *= scale
        np.copyto(scores, -np.inf, where=hide)
        return softmax_forward(scores, axis=-1, out=scores)[0]
    T, S = scores.shape[-2:]
    matrices = scores.reshape(-1, T, S)              # (B*H, T, S) view
    future = causal_mask(T) if causal else None

    def softmax_block(start, stop):
        _scaled_masked_softmax_into(matrices[start:stop], scale, future)

    parallel_for(softmax_block, matrices.shape[0], rows_per_block(T * S))
    return scores


def _scaled_masked_softmax_into(scores, scale, future):
    """scores <- softmax(scale * scores) along the last axis, with -inf first where the bool mask `future`
    (broadcastable; None: no mask) is True. One matrix or a block of them, in this thread."""
    scores *= scale
    if future is not None:
        np.copyto(scores, -np.inf, where=future)
    softmax_forward(scores, axis=-1, out=scores)


def _scaled_softmax_backward_into(dweights, weights, scale, out):
    """out = scale * softmax_backward(dweights) for the softmax output `weights` (out may be dweights)."""
    softmax_backward(dweights, SoftmaxCache(probs=weights, axis=-1), out=out)
    out *= scale


def _scaled_softmax_backward(dweights, weights, scale):
    """dscores = scale * softmax_backward(dweights) for the softmax output `weights` (..., T, S), one (T, S)
    matrix at a time on all cores."""
    T, S = weights.shape[-2:]
    dweights = np.ascontiguousarray(dweights)
    dscores = np.empty(weights.shape, dtype=np.result_type(dweights, weights))
    w, dw, ds = (a.reshape(-1, T, S) for a in (np.ascontiguousarray(weights), dweights, dscores))

    def backward_block(start, stop):
        _scaled_softmax_backward_into(dw[start:stop], w[start:stop], scale, ds[start:stop])

    parallel_for(backward_block, w.shape[0], rows_per_block(T * S))
    return dscores


def _attention_core_forward(q, k, v, *, causal, drop_rate, rng, dropout_mask, hide=None):
    """weights = dropout(softmax(q k^T / sqrt(D) + mask)); context = weights v.

    q: (..., T, D), k, v: (..., S, D) (S = T without a KV cache) -> context: (..., T, D), AttentionCoreCache.
    One matmul per head (matmul_stack: the heads shared among the cores), not einsum. Causal attention without
    dropout or another mask (Llama, GPT-2 without dropout) runs each key/value head start to end in one worker
    instead (_causal_heads_forward: the same operations, less the all-future block it may skip, so the same
    values to ~1e-16).
    """
    scale = 1.0 / math.sqrt(q.shape[-1])
    if (causal and hide is None and dropout_mask is None and drop_rate == 0.0 and q.shape[-2] == k.shape[-2]
            and _one_kv_head_each(q, k, v)):
        context, att = _causal_heads_forward(q, k, v, scale)
        return context, AttentionCoreCache(q=q, k=k, v=v, att=att, att_dropped=att, scale=scale, dropout=None,
                                           causal=True)
    scores = matmul_stack(q, np.swapaxes(k, -1, -2))    # (..., T, S)
    att = _masked_scaled_softmax(scores, causal, scale, hide)                   # (..., T, S), in scores' buffer
    att_dropped, dropout_cache = dropout_forward(att, drop_rate, rng=rng, mask=dropout_mask)
    context = matmul_stack(att_dropped, v)           # (..., T, D)
    return context, AttentionCoreCache(q=q, k=k, v=v, att=att, att_dropped=att_dropped, scale=scale,
                                       dropout=dropout_cache)


def _attention_core_backward(dcontext, cache):
    """Backward of context = dropout(softmax(q k^T * scale)) v.

        dv = att_dropped^T dcontext    ddropped = dcontext v^T
        dweights = dropout_backward(ddropped)          dscores = softmax_backward(dweights) * scale
        dq = dscores k                 dk = dscores^T q
    Masked positions have weight 0, so softmax_backward already gives them zero gradient.
    """
    if (cache.dropout is None and cache.att.ndim > 2 and math.prod(cache.att.shape[:-2]) > 1
            and _one_kv_head_each(cache.q, cache.k, cache.v)):
        return _heads_backward(dcontext, cache)
    dv = matmul_stack(np.swapaxes(cache.att_dropped, -1, -2), dcontext)    # (..., T, D)
    ddropped = matmul_stack(dcontext, np.swapaxes(cache.v, -1, -2))        # (..., T, T)
    dweights = dropout_backward(ddropped, cache.dropout)
    dscores = _scaled_softmax_backward(dweights, cache.att, cache.scale)
    dq = matmul_stack(dscores, cache.k)                                    # (..., T, D)
    dk = matmul_stack(np.swapaxes(dscores, -1, -2), cache.q)               # (..., T, D)
    dk, dv = _summed_to(dk, cache.k.shape), _summed_to(dv, cache.v.shape)  # grouped k, v: over their G readers
    return dq, dk, dv


def _kv_head_groups(q, k, v, *outputs):
    """The arrays seen one key/value head at a time: (q, k, v, *outputs) as (..., G, T, X) query-side arrays and
    (..., S, D) key/value arrays, G the query heads that read one key/value head.

    Grouped-query attention passes k and v with a size-1 axis where q has its G heads, (B, KV, 1, S, D) against
    (B, KV, G, T, D) (npgpt.gqa_attention), and matmul's broadcasting would give every query head the same keys;
    here that axis is dropped. Otherwise every query head has its own keys and values (G = 1, a new axis of views).
    outputs: arrays shaped like q's side (the weights, the context, dq), viewed the same way as q."""
    if _grouped(q, k):
        return (q, k[..., 0, :, :], v[..., 0, :, :], *outputs)
    return (q[..., None, :, :], k, v, *(t[..., None, :, :] for t in outputs))


def _grouped(q, k):
    """Grouped-query layout: k (..., 1, S, D) against q (..., G, T, D), G > 1, the leading axes alike."""
    return k.ndim == q.ndim >= 3 and k.shape[-3] == 1 < q.shape[-3] and k.shape[:-3] == q.shape[:-3]


def _one_kv_head_each(q, k, v):
    """Can the head kernels take these shapes: k and v with q's leading axes (one key/value head per query
    head) or grouped (_grouped)? Other broadcasts (a batch axis of 1 in k, say) go the general path, whose
    products broadcast any leading axes."""
    return k.shape[:-2] == v.shape[:-2] and (k.shape[:-2] == q.shape[:-2] or _grouped(q, k))


def _stacked_rows(t):
    """(G, T, X) -> (G * T, X): a group's G query heads one below the other, so that one product serves them all
    (a view when t is contiguous)."""
    return t.reshape(-1, t.shape[-1])


def summed_over_group(a, b, out):
    """out = sum over the group's G heads of a[g]^T b[g]:   a (G, T, S), b (G, T, D) -> out (S, D).

    The gradient of a key/value head read by G query heads is the sum of what each of them sends back
    (dk = sum_g dscores_g^T q_g, dv = sum_g weights_g^T dcontext_g); as one product of the stacked rows,
    (S, G*T) @ (G*T, D), BLAS does the sum."""
    np.matmul(_stacked_rows(a).T, _stacked_rows(b), out=out)


def _summed_to(t, shape):
    """t summed over the axes where `shape` has size 1 and t has more: the gradient of an input that the products
    broadcast (grouped-query attention's (..., 1, S, D) keys and values, read by G query heads)."""
    axes = tuple(axis for axis, (n, m) in enumerate(zip(t.shape, shape)) if m == 1 < n)
    return t.sum(axis=axes, keepdims=True) if axes else t


# The causal split (_row_blocks) doubles the NumPy calls per key/value head; it pays when the quarter it skips
# holds at least this many weights (G query heads x (T/2)^2). Measured here, 2 threads, forward + backward of one
# layer's core, split / not split: SmolLM2 (G = 3) at T = 256 (49K skipped) 0.87; GPT-2 (G = 1) at T = 512 and
# 1024 (65K, 262K) 0.85 and 0.84; GPT-2 at T = 256 (16K) 1.05 and at T = 128 (4K) 1.55: the calls too small.
CAUSAL_SPLIT_MIN_SKIPPED = 1 << 15


def _row_blocks(T, S, causal, group):
    """The query rows in blocks (start, stop, keys): rows [start, stop) read the keys [0, keys).

    Causal attention (S = T) goes in two halves when that skips enough (CAUSAL_SPLIT_MIN_SKIPPED, counted over
    the `group` query heads each call covers): the first half's rows see only the first half's keys (the block
    right of them is all future: weight 0, gradient 0), so a quarter of the (T, T) weights is never computed.
    Otherwise one block of every row and key."""
    half = T // 2
    if not causal or half == 0 or group * half * half < CAUSAL_SPLIT_MIN_SKIPPED:
        return [(0, T, S)]
    return [(0, half, half), (half, T, T)]


def _causal_heads_forward(q, k, v, scale):
    """Causal softmax attention without dropout, one key/value head at a time.

    q: (..., T, D) with k, v: (..., T, D), or grouped (..., G, T, D) with k, v: (..., 1, T, D) (_kv_head_groups)
    -> context (..., T, D) and weights (..., T, T) (0 above the diagonal), shaped like q's side.

    Each worker takes whole key/value heads and runs their scores, mask, softmax and weighted sum one after
    another while the weights are in the CPU cache, with single-threaded BLAS (npgpt.speed.parallel.for_each_matrix):
    one hand-off to the threads per layer instead of one per step. Each product covers the G query heads of the
    key/value head at once, and the rows go in _row_blocks: the first half of the positions never multiplies
    the second half's keys. A skipped weight is exp(-inf) = 0 in the full computation too; the rows' products
    and softmax are otherwise the general path's (equal to ~1e-16 relative: BLAS may add in another order)."""
    T = q.shape[-2]
    dtype = np.result_type(q, k, v)
    att = np.empty(q.shape[:-2] + (T, T), dtype=dtype)
    context = np.empty(q.shape[:-2] + (T, v.shape[-1]), dtype=dtype)
    q_g, k_g, v_g, att_g, context_g = _kv_head_groups(q, k, v, att, context)      # (..., G, T, *) and (..., T, D)
    future = causal_mask(T)
    blocks = _row_blocks(T, T, causal=True, group=q_g.shape[-3])
    kv_heads = list(np.ndindex(*k_g.shape[:-2]))

    def kv_head_block(start, stop):
        for i in kv_heads[start:stop]:
            for first, last, seen in blocks:
                weights = att_g[i][:, first:last, :seen]                                  # (G, rows, seen)
                np.matmul(q_g[i][:, first:last], k_g[i][:seen].T, out=weights)          # scores
                _scaled_masked_softmax_into(weights, scale, future[first:last, :seen])
                np.matmul(weights, v_g[i][:seen], out=context_g[i][:, first:last])      # (G, rows, D)
                att_g[i][:, first:last, seen:] = 0.0                                     # all future

    for_each_matrix(kv_head_block, len(kv_heads))
    return context, att


def _heads_backward(dcontext, cache):
    """_attention_core_backward without dropout, one key/value head at a time (as _causal_heads_forward: a head's
    steps in one worker, its G query heads together, causal weights in _row_blocks).

    The key/value gradients of a group are summed by the products themselves (summed_over_group), block by
    block of keys: keys [0, seen) of a row block are read by its rows and every later row."""
    q, k, v, att, scale = cache.q, cache.k, cache.v, cache.att, cache.scale
    T, S = att.shape[-2:]
    dtype = np.result_type(dcontext, att)
    dq = np.empty(q.shape, dtype=dtype)
    dk, dv = np.empty(k.shape, dtype=dtype), np.empty(v.shape, dtype=dtype)
    q_g, k_g, v_g, att_g, dcontext_g, dq_g = _kv_head_groups(q, k, v, att, dcontext, dq)
    _, dk_g, dv_g = _kv_head_groups(q, dk, dv)
    blocks = _row_blocks(T, S, cache.causal, group=q_g.shape[-3])
    kv_heads = list(np.ndindex(*k_g.shape[:-2]))

    def kv_head_block(start, stop):
        for i in kv_heads[start:stop]:
            weights, group_dcontext = att_g[i], dcontext_g[i]                     # (G, T, S), (G, T, D)
            dscores = np.empty(weights.shape, dtype=dtype)                         # (G, T, S), blocks' parts only
            for first, last, seen in blocks:
                rows = slice(first, last)
                np.matmul(group_dcontext[:, rows], v_g[i][:seen].T, out=dscores[:, rows, :seen])   # dweights
                _scaled_softmax_backward_into(dscores[:, rows, :seen], weights[:, rows, :seen], scale,
                                              dscores[:, rows, :seen])
                np.matmul(dscores[:, rows, :seen], k_g[i][:seen], out=dq_g[i][:, rows])         # dq = dscores k
            new_keys = 0
            for first, _, seen in blocks:             # keys [new_keys, seen) are read by the rows from `first` on
                keys, later = slice(new_keys, seen), slice(first, None)
                summed_over_group(weights[:, later, keys], group_dcontext[:, later], out=dv_g[i][keys])
                summed_over_group(dscores[:, later, keys], q_g[i][:, later], out=dk_g[i][keys])
                new_keys = seen                       # dv = sum_g att_g^T dcontext_g, dk = sum_g dscores_g^T q_g

    for_each_matrix(kv_head_block, len(kv_heads))
    return dq, dk, dv


# Query rows per step of the inference attention: rows [start, stop) see only keys [0, stop), so with
# chunks of 64 rows the masked upper triangle is mostly skipped (at T = 256: 10 of 16 key blocks computed).
CAUSAL_ROW_CHUNK = 64


def _causal_attention_infer(q, k, v):
    """softmax(q k^T / sqrt(D) + causal mask) v, skipping most of the masked half (inference, no dropout).

    q, k, v: (..., T, D) -> context: (..., T, D). The query rows go in chunks [start, stop): a chunk's
    scores need only the keys 0..stop-1, as every later key is in the future of all its rows; inside that
    block the mask hides the keys s > t. A masked weight is exp(-inf) = 0 in the full computation too, so
    the result is the same sum without its zero terms (equal to ~1e-16 relative: BLAS may add in another order).
    """
    T, D = q.shape[-2:]
    scale = 1.0 / math.sqrt(D)
    context = np.empty(q.shape, dtype=np.result_type(q, k, v))   # (..., T, D)
    keys_t = np.swapaxes(k, -1, -2)                               # (..., D, T)
    future = causal_mask(T)                                       # (T, T), True at s > t
    for start in range(0, T, CAUSAL_ROW_CHUNK):
        stop = min(start + CAUSAL_ROW_CHUNK, T)
        scores = matmul_stack(q[..., start:stop, :], keys_t[..., :stop])       # (..., R, stop)
        weights = _masked_scaled_softmax(scores, False, scale, hide=future[start:stop, :stop])
        context[..., start:stop, :] = matmul_stack(weights, v[..., :stop, :])  # (..., R, D)
    return context


def _project_qkv(x, p):
    """The three projections; biases only where p has them (config.qkv_bias), adapters where p has them (LoRA)."""
    q, cache_q = linear_layer_forward(x, p, "W_query")
    k, cache_k = linear_layer_forward(x, p, "W_key")
    v, cache_v = linear_layer_forward(x, p, "W_value")
    return (q, k, v), QKVCache(query=cache_q, key=cache_k, value=cache_v)


def _project_qkv_backward(dq, dk, dv, cache, grads):
    """Sums the three input gradients; writes the projections' parameter gradients into `grads`."""
    dx = None
    for dproj, layer_cache in ((dq, cache.query), (dk, cache.key), (dv, cache.value)):
        dx_part, layer_grads = linear_layer_backward(dproj, layer_cache)
        grads.update(layer_grads)
        if dx is None:
            dx = dx_part
        else:
            dx += dx_part
    return dx


def single_head_attention_forward(x, p, *, causal=True, drop_rate=0.0, rng=None, dropout_mask=None):
    """One head with trainable projections (the book's SelfAttention_v2 / CausalAttention).

    x: (B, T, C); p: {"W_query.weight", "W_key.weight", "W_value.weight"}: (D, C) each (+ optional biases)
    -> out: (B, T, D), SingleHeadAttentionCache(qkv, core)
    """
    (q, k, v), qkv_cache = _project_qkv(x, p)        # (B, T, D) each
    context, core_cache = _attention_core_forward(
        q, k, v, causal=causal, drop_rate=drop_rate, rng=rng, dropout_mask=dropout_mask
    )
    return context, SingleHeadAttentionCache(qkv=qkv_cache, core=core_cache)


def single_head_attention_backward(dout, cache):
    """dout: (B, T, D) -> dx: (B, T, C), grads: {name: gradient} for the projections."""
    dq, dk, dv = _attention_core_backward(dout, cache.core)
    grads = {}
    dx = _project_qkv_backward(dq, dk, dv, cache.qkv, grads)
    return dx, grads


def _split_heads(t, n_heads):
    """(B, T, C) -> (B, H, T, D)."""
    B, T, C = t.shape
    return t.reshape(B, T, n_heads, C // n_heads).transpose(0, 2, 1, 3)


def _merge_heads(t):
    """(B, H, T, D) -> (B, T, C), contiguous."""
    B, H, T, D = t.shape
    return t.transpose(0, 2, 1, 3).reshape(B, T, H * D)


def multihead_attention_forward(x, p, n_heads, *, drop_rate=0.0, rng=None, dropout_mask=None, kv_cache=None):
    """Causal multi-head self-attention as in GPT-2.

    x: (B, T, C); p: W_query/W_key/W_value .weight (C, C) [+ .bias (C)], out_proj.weight (C, C), out_proj.bias (C)
    dropout_mask: optional bool keep-mask (B, H, T, T) for the attention weights (else drawn from rng)
    kv_cache: optional npgpt.kvcache.LayerKV (decoding, inference only): the new keys and values are stored
    after the cached ones and the queries attend over all of them (no backward through this path)
    -> out: (B, T, C), MultiheadAttentionCache(n_heads, qkv, core, out_proj)
    """
    (q, k, v), qkv_cache = _project_qkv(x, p)        # (B, T, C) each
    q, k, v = (_split_heads(t, n_heads) for t in (q, k, v))          # (B, H, T, D)
    hide = None
    if kv_cache is not None:
        k, v = kv_cache.append(k, v)                 # (B, H, S, D): cached keys/values, then the new ones
        hide = kv_cache.hide
    context, core_cache = _attention_core_forward(
        q, k, v, causal=kv_cache is None, drop_rate=drop_rate, rng=rng, dropout_mask=dropout_mask, hide=hide
    )                                                # (B, H, T, D)
    out, out_cache = linear_layer_forward(_merge_heads(context), p, "out_proj")
    return out, MultiheadAttentionCache(n_heads=n_heads, qkv=qkv_cache, core=core_cache, out_proj=out_cache)


def multihead_attention_infer(x, p, n_heads, *, kv_cache=None):
    """multihead_attention_forward's output without a cache and without dropout (inference).

    x: (B, T, C) -> out: (B, T, C). Without a KV cache the causal attention skips most of the masked half
    (_causal_attention_infer); with one (decoding) the queries attend over the cached and the new keys.
    """
    q, k, v = (_split_heads(t, n_heads)              # (B, H, T, D) each; one product when stored side by side
               for t in linear_layers_together(x, p, ("W_query", "W_key", "W_value")))
    if kv_cache is None:
        context = _causal_attention_infer(q, k, v)
    else:
        k, v = kv_cache.append(k, v)                 # (B, H, S, D)
        context, _ = _attention_core_forward(q, k, v, causal=False, drop_rate=0.0, rng=None, dropout_mask=None,
                                             hide=kv_cache.hide)
    return linear_layer_forward(_merge_heads(context), p, "out_proj")[0]            # (B, T, C)


def multihead_attention_backward(dout, cache):
    """dout: (B, T, C) -> dx: (B, T, C), grads: {name: gradient} under the same keys as p.

    The forward read in reverse: out_proj, merge heads, attention core, split heads, q/k/v projections.
    """
    dcontext, grads = linear_layer_backward(dout, cache.out_proj)     # (B, T, C)
    dq, dk, dv = _attention_core_backward(_split_heads(dcontext, cache.n_heads), cache.core)
    dx = _project_qkv_backward(*(_merge_heads(t) for t in (dq, dk, dv)), cache.qkv, grads)
    return dx, grads
