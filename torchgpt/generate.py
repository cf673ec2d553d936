"""Text generation from a torchgpt.GPTModel (twin of npgpt/generate.py; its docstring states the rule).

    new_ids = generate(model, prompt_ids, 50, temperature=0.8, top_k=40, seed=1)
    for token in stream_generate(model, prompt_ids, 50):
        ...

The logits, the probabilities (temperature, top-k, top-p) and the log-probabilities of beam search are
computed here in torch, on the model's device; the loop, the stopping, beam search's bookkeeping and the
inverse-CDF draw (with uniforms from numpy.random.default_rng(seed)) are gptcore.engine.decoding's, so one seed
gives the same tokens in both backends.
"""
from __future__ import annotations

import numpy as np
import torch

from gptcore.arch import spec_for
from gptcore.engine.decoding import (EOT_ID, Decoder, check_sampling_temperature, generate_batch_tokens,
    generate_tokens, is_linear_weight, stream_tokens)
from torchgpt.kvcache import KVCache
from torchgpt.linear import Linear


# --------------------------------------------------------------------------------------------------------
# Choosing tokens: the torch twins of top_k_mask (gptcore.engine.decoding), npgpt.generate's top_p_mask, sampling_probs
# --------------------------------------------------------------------------------------------------------
def top_k_mask(values: torch.Tensor, k: int) -> torch.Tensor:
    """(B, V) -> bool (B, V), True at each row's k largest values; equal values at the k-th place: lowest
    indices first, so exactly k are kept."""
    V = values.shape[-1]
    if k >= V:
        return torch.ones(values.shape, dtype=torch.bool, device=values.device)
    kth = torch.topk(values, k, dim=-1).values[:, -1:]                       # (B, 1), the k-th largest value
    above = values > kth
    at_kth = values == kth
    room = k - above.sum(dim=-1, keepdim=True)                               # how many tied ones still fit
    return above | (at_kth & (torch.cumsum(at_kth.long(), dim=-1) <= room))


def top_p_mask(scores: torch.Tensor, probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """(B, V) scores (the scaled logits) and their probabilities -> bool (B, V): per row the shortest run of
    the most likely tokens, ranked by score (ties: lower id first), whose mass reaches top_p."""
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices  # stable: ties by id
    ranked = torch.gather(probs, -1, order).double()
    mass_before = torch.zeros_like(ranked)
    mass_before[:, 1:] = torch.cumsum(ranked[:, :-1], dim=-1)               # exclusive prefix sums
    return torch.zeros_like(probs, dtype=torch.bool).scatter(-1, order, mass_before < top_p)


def sampling_probs(logits: torch.Tensor, temperature: float, top_k=None, top_p=None) -> torch.Tensor:
    """(B, V) logits -> (B, V) float64 probabilities, 0 at the tokens top-k/top-p removed (not renormalized)."""
    check_sampling_temperature(temperature)     # the same floor as NumPy's (gptcore.engine.decoding.GREEDY_BELOW)
    scaled = logits / temperature
    if top_k is not None:
        scaled = scaled.masked_fill(~top_k_mask(scaled, top_k), float("-inf"))
    probs = torch.softmax(scaled, dim=-1)
    if top_p is not None and top_p < 1.0:
        probs = probs.masked_fill(~top_p_mask(scaled, probs, top_p), 0.0)
    return probs.double()


# --------------------------------------------------------------------------------------------------------
# The model behind gptcore.engine.decoding's Decoder interface
# --------------------------------------------------------------------------------------------------------
class TorchDecoder(Decoder):
    """A torchgpt.GPTModel (eval mode, on its device) behind the Decoder interface; cache: torchgpt.kvcache."""

    def __init__(self, model, use_cache: bool = True):
        if model.training:
            raise ValueError("the model is in training mode (dropout would change the tokens); call model.eval() "
                             "before generating")
        super().__init__(model.config, use_cache)
        self.model = model
        self.device, self.dtype = model.tok_emb.weight.device, model.tok_emb.weight.dtype

    def new_cache(self, batch_size, capacity):
        return KVCache(self.config, batch_size, capacity, dtype=self.dtype, device=self.device)

    @torch.inference_mode()     # no_grad without autograd's bookkeeping: +4% tokens/s on SmolLM2 (in-process A/B)
    def forward_last(self, ids, attention_mask, cache):
        idx = torch.from_numpy(np.ascontiguousarray(ids)).to(self.device)
        mask = None if attention_mask is None else torch.from_numpy(attention_mask).to(self.device)
        x = self.model.trunk(idx, kv_cache=cache, attention_mask=mask)
        return self.model.out_head(x[:, -1])                                  # (B, V): the head on the last position

    def greedy(self, logits):
        return torch.argmax(logits, dim=-1).cpu().numpy().astype(np.int64)   # first maximum = lowest id

    def probabilities(self, logits, settings):
        return sampling_probs(logits, settings.temperature, settings.top_k, settings.top_p).cpu().numpy()

    def log_probs(self, logits):
        return torch.log_softmax(logits, dim=-1).double().cpu().numpy()


@torch.no_grad()
def decoding_layout(model):
    """Stores, in place, every linear layer's weight (gptcore.engine.decoding.is_linear_weight: the head and a
    tied embedding included) as a view of a contiguous (in, out) tensor, the layout in which batch-1
    decoding's products split along the input axis and run on every thread (torchgpt.linear.split_k_linear:
    faster than either layout of F.linear for every shape measured). Names, shapes and values stay, so
    state_dict(), training and saving are unchanged. Twin of npgpt.generate.decoding_layout (whose rule,
    reads_faster_transposed, keeps the layers with in > out as they are; in place here: a parameter's storage
    can be swapped). A tied head keeps its tie (one Parameter). Returns the model.
    """
    for name, param in model.named_parameters(remove_duplicate=True):
        if is_linear_weight(name, param.shape, model.config) and param.is_contiguous():
            param.data = param.data.t().contiguous().t()
    for group in shared_input_groups(model):
        store_side_by_side([layer.weight for layer in group])
    return model


def shared_input_groups(model):
    """The model's groups of plain Linear layers that read the same input (the spec's SHARED_INPUT_LAYERS in
    every block; groups with a LoRA-wrapped layer are left out)."""
    groups = []
    for block in getattr(model, "blocks", ()):
        for names in spec_for(model.config).SHARED_INPUT_LAYERS:
            layers = [block.get_submodule(name) for name in names]
            if all(type(layer) is Linear for layer in layers):
                groups.append(layers)
    return groups


@torch.no_grad()
def store_side_by_side(weights) -> None:
    """Moves the weights (out_i, in) into one contiguous (in, out_1 + ... + out_n) tensor, each weight a view
    of its column block (torchgpt.linear.side_by_side reads it back; same values, names and shapes)."""
    together = torch.cat([w.t() for w in weights], dim=1).contiguous()     # (in, sum of outs)
    start = 0
    for w in weights:
        w.data = together[:, start:start + w.shape[0]].t()
        start += w.shape[0]


# --------------------------------------------------------------------------------------------------------
# The public torch API (same names and keywords as npgpt.generate, `model` in place of params, config)
# --------------------------------------------------------------------------------------------------------
def generate(model, prompt_ids, max_new_tokens, *, temperature=0.0, top_k=None, top_p=None, num_beams=1,
             length_penalty=1.0, seed=None, stop_ids=(EOT_ID,), use_cache=True) -> list[int]:
    """The NEW token ids (stop token excluded) continuing prompt_ids."""
    return generate_tokens(TorchDecoder(model, use_cache), prompt_ids, max_new_tokens,
                           temperature=temperature, top_k=top_k, top_p=top_p, num_beams=num_beams,
                           length_penalty=length_penalty, seed=seed, stop_ids=stop_ids)


def stream_generate(model, prompt_ids, max_new_tokens, *, temperature=0.0, top_k=None, top_p=None, num_beams=1,
                    length_penalty=1.0, seed=None, stop_ids=(EOT_ID,), use_cache=True):
    """An iterator of the new token ids, one at a time (num_beams=1)."""
    return stream_tokens(TorchDecoder(model, use_cache), prompt_ids, max_new_tokens,
                         temperature=temperature, top_k=top_k, top_p=top_p, num_beams=num_beams,
                         length_penalty=length_penalty, seed=seed, stop_ids=stop_ids)


def generate_batch(model, prompts, max_new_tokens, *, temperature=0.0, top_k=None, top_p=None, seed=None,
                   stop_ids=(EOT_ID,), use_cache=True) -> list[list[int]]:
    """New token ids for each prompt, the prompts run together with left padding."""
    return generate_batch_tokens(TorchDecoder(model, use_cache), prompts, max_new_tokens,
                                 temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, stop_ids=stop_ids)
