"""Text generation from npgpt: greedy, temperature, top-k, top-p (nucleus), beam search, KV cache.

    new_ids = generate(params, config, prompt_ids, 50, temperature=0.8, top_k=40, seed=1)
    for token in stream_generate(params, config, prompt_ids, 50):     # one token at a time
        ...

The decode loop, stopping, beam search and the inverse-CDF draw are written once for both backends in
gptcore.engine.decoding (read its docstring for how a token is chosen); this module is the NumPy side:
NumpyDecoder runs npgpt's model on the new tokens (with npgpt.kvcache.KVCache), and sampling_probs /
log_softmax are steps 1-4 of the rule in NumPy (torchgpt/generate.py has their torch twins).
"""
from __future__ import annotations

import numpy as np

from gptcore.config import GPTConfig
from gptcore.engine.decoding import (EOT_ID, Decoder, check_sampling_temperature, generate_batch_tokens,
                                     generate_tokens, stream_tokens, top_k_mask)
from gptcore.lora import split_lora
from npgpt.kvcache import KVCache
from npgpt.linear import linear_layer_forward
from npgpt.model import block_params, check_params, fast_layout, trunk_infer


# --------------------------------------------------------------------------------------------------------
# Choosing tokens: the NumPy math of steps 1-4 (torchgpt/generate.py has the torch twins)
# --------------------------------------------------------------------------------------------------------
def top_p_mask(scores, probs, top_p):
    """(B, V) scores (the scaled logits) and their probabilities -> bool (B, V): per row the shortest run of
    the most likely tokens whose mass reaches top_p. A token is kept when the mass ranked before it is
    < top_p. Ranked by the scores, not the probabilities: equal logits are equal in both backends, while
    two exp implementations may round them apart; ties -> lower id first."""
    order = np.argsort(-scores, axis=-1, kind="stable")                       # (B, V), stable: ties by id
    ranked = np.take_along_axis(probs, order, axis=-1).astype(np.float64)
    mass_before = np.zeros_like(ranked)
    np.cumsum(ranked[:, :-1], axis=-1, out=mass_before[:, 1:])               # exclusive prefix sums
    keep = np.zeros(probs.shape, dtype=bool)
    np.put_along_axis(keep, order, mass_before < top_p, axis=-1)
    return keep


def sampling_probs(logits, temperature, top_k=None, top_p=None):
    """Steps 1-4 of the rule in gptcore.engine.decoding's docstring: (B, V) logits -> (B, V) float64 probabilities, 0 at the
    tokens top-k/top-p removed (not renormalized: inverse_cdf scales u by the kept mass)."""
    check_sampling_temperature(temperature)
    scaled = logits / temperature                                            # a Python float keeps float32
    keep = top_k_mask(scaled, top_k) if top_k is not None else None
    if keep is not None:
        scaled = np.where(keep, scaled, -np.inf)
    probs = np.exp(scaled - scaled.max(axis=-1, keepdims=True))              # exp(-inf) = 0 outside top-k
    probs /= probs.sum(axis=-1, keepdims=True)
    if top_p is not None and top_p < 1.0:
        probs = np.where(top_p_mask(scaled, probs, top_p), probs, 0.0)
    return probs.astype(np.float64)


def log_softmax(logits):
    """(B, V) -> log-probabilities (B, V): z - max - log(sum exp(z - max))."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


# --------------------------------------------------------------------------------------------------------
# The model behind the Decoder interface
# --------------------------------------------------------------------------------------------------------
class NumpyDecoder(Decoder):
    """npgpt's model behind the Decoder interface; the KV cache is npgpt.kvcache.KVCache."""

    def __init__(self, params, config: GPTConfig, use_cache: bool = True):
        check_params(split_lora(params)[0], config)     # LoRA adapters may ride along: the layers apply them
        super().__init__(config, use_cache)
        self.params = params
        self.blocks = block_params(params, config)
        self.dtype = params["tok_emb.weight"].dtype

    def new_cache(self, batch_size, capacity):
        return KVCache(self.config, batch_size, capacity, dtype=self.dtype)

    def forward_last(self, ids, attention_mask, cache):
        # The inference trunk (npgpt.model.trunk_infer): no caches for a backward, each block's activations
        # freed as it goes; the prompt pass (and every pass when use_cache=False) is where that counts.
        x = trunk_infer(self.params, ids, self.config, kv_cache=cache, attention_mask=attention_mask,
                        blocks=self.blocks)
        # The head only where it is needed: (B, C) @ (C, V), the largest single read of a decoding step;
        # through linear_layer_forward so that a LoRA adapter on out_head applies too.
        logits, _ = linear_layer_forward(x[:, -1], self.params, "out_head")  # (B, V)
        return logits

    def greedy(self, logits):
        return np.argmax(logits, axis=-1).astype(np.int64)                   # first maximum = lowest id

    def probabilities(self, logits, settings):
        return sampling_probs(logits, settings.temperature, settings.top_k, settings.top_p)

    def log_probs(self, logits):
        return log_softmax(logits).astype(np.float64)


# --------------------------------------------------------------------------------------------------------
# The decoding memory layout
# --------------------------------------------------------------------------------------------------------
def decoding_layout(params, config: GPTConfig):
    """The same parameters (names, shapes, values, ties) in the layout that decodes fastest, as a new dict:
    npgpt.model.fast_layout, the layout init_params and npgpt.load_weights give by default. For parameters
    from elsewhere (a torch state dict, a checkpoint read by gptcore, copies), which come row by row."""
    return fast_layout(params, config)


# --------------------------------------------------------------------------------------------------------
# The public NumPy API
# --------------------------------------------------------------------------------------------------------
def generate(params, config: GPTConfig, prompt_ids, max_new_tokens, *, temperature=0.0, top_k=None, top_p=None,
             num_beams=1, length_penalty=1.0, seed=None, stop_ids=(EOT_ID,), use_cache=True) -> list[int]:
    """The NEW token ids (stop token excluded) continuing prompt_ids; strategies as in the module docstring."""
    return generate_tokens(NumpyDecoder(params, config, use_cache), prompt_ids, max_new_tokens,
                           temperature=temperature, top_k=top_k, top_p=top_p, num_beams=num_beams,
                           length_penalty=length_penalty, seed=seed, stop_ids=stop_ids)


def stream_generate(params, config: GPTConfig, prompt_ids, max_new_tokens, *, temperature=0.0, top_k=None,
                    top_p=None, num_beams=1, length_penalty=1.0, seed=None, stop_ids=(EOT_ID,), use_cache=True):
    """An iterator of the new token ids, one at a time (num_beams=1): the caller may stop on any condition."""
    return stream_tokens(NumpyDecoder(params, config, use_cache), prompt_ids, max_new_tokens,
                         temperature=temperature, top_k=top_k, top_p=top_p, num_beams=num_beams,
                         length_penalty=length_penalty, seed=seed, stop_ids=stop_ids)


def generate_batch(params, config: GPTConfig, prompts, max_new_tokens, *, temperature=0.0, top_k=None, top_p=None,
                   seed=None, stop_ids=(EOT_ID,), use_cache=True) -> list[list[int]]:
    """New token ids for each prompt (a list of lists), the prompts run together with left padding."""
    return generate_batch_tokens(NumpyDecoder(params, config, use_cache), prompts, max_new_tokens,
                                 temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, stop_ids=stop_ids)
