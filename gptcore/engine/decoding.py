"""Decoding, written once for both backends: settings, prompts, the decode loop, stopping, beam search.

A backend supplies a Decoder (npgpt.generate.NumpyDecoder, torchgpt.generate.TorchDecoder) that runs its
model on the new tokens and turns logits into greedy picks, sampling probabilities and log-probabilities;
everything else happens here, in NumPy, so for one seed both backends choose the same tokens.

How a token is chosen from the last position's logits z (V,), one row at a time:
    temperature == 0   greedy: argmax z; equal maxima -> the lowest token id. So is any temperature below
                       GREEDY_BELOW (1e-6): z / temperature can overflow (1e-320 is 0 in float32), and that
                       cold a softmax gives a token 1e-4 below the maximum e^-100: it was greedy already,
                       except between logits within ~1e-5 of each other.
    otherwise          1. s = z / temperature
                       2. top_k: keep the k largest s; equal values at the k-th place -> lowest ids first
                       3. p = softmax(s) over the kept tokens (0 elsewhere)
                       4. top_p: rank the kept tokens by (s descending, id ascending) and keep the shortest
                          prefix whose probability mass (summed in float64) reaches top_p
                       5. inverse CDF: u ~ U[0, 1) from numpy.random.default_rng(seed), one per row per step;
                          walk the kept tokens in token-id order and take the first whose cumulative
                          probability exceeds u * (kept mass)
Steps 1-4 are the backend's (Decoder.probabilities); step 5 and the rest are here.
Stopping: a row ends when it chooses one of stop_ids (default <|endoftext|>, 50256; the stop token is not
returned) or after max_new_tokens. Beam search: see beam_search below.
"""
from __future__ import annotations

import math
import numbers
import warnings
from dataclasses import dataclass

import numpy as np

from gptcore.arch import spec_for
from gptcore.config import GPTConfig

EOT_ID = 50256   # <|endoftext|>
GREEDY_BELOW = 1e-6   # temperatures under this are greedy (see the module docstring)


class PromptCroppedWarning(UserWarning):
    """The prompt was longer than the model's context; only its last tokens were kept."""


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    num_beams: int = 1
    length_penalty: float = 1.0
    stop_ids: frozenset = frozenset({EOT_ID})

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_settings(max_new_tokens, *, temperature=0.0, top_k=None, top_p=None, num_beams=1, length_penalty=1.0,
                   stop_ids=(EOT_ID,)) -> GenerationSettings:
    """The settings as one object, or ValueError naming the bad one and its valid range."""
    if not _is_int(max_new_tokens) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    if not isinstance(temperature, numbers.Real) or not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature!r}")
    if temperature < GREEDY_BELOW:
        temperature = 0.0
    if top_k is not None and (not _is_int(top_k) or top_k < 1):
        raise ValueError(f"top_k must be an integer >= 1 (or None for no top-k), got {top_k!r}")
    if top_p is not None and (not isinstance(top_p, numbers.Real) or not 0.0 < top_p <= 1.0):
        raise ValueError(f"top_p must be in (0, 1] (or None for no nucleus filter), got {top_p!r}")
    if not _is_int(num_beams) or num_beams < 1:
        raise ValueError(f"num_beams must be an integer >= 1 (1 = no beam search), got {num_beams!r}")
    if not isinstance(length_penalty, numbers.Real) or not math.isfinite(length_penalty):
        raise ValueError(f"length_penalty must be a finite number, got {length_penalty!r}")
    if num_beams > 1 and (temperature > 0 or top_k is not None or top_p is not None):
        raise ValueError("beam search is deterministic: with num_beams > 1 leave temperature at 0 and top_k/top_p "
                         "unset, or sample with num_beams=1")
    stops = frozenset() if stop_ids is None else frozenset(stop_ids)
    if not all(_is_int(token) for token in stops):
        raise ValueError(f"stop_ids must be token ids (integers), got {stop_ids!r}")
    return GenerationSettings(int(max_new_tokens), float(temperature), None if top_k is None else int(top_k),
                              None if top_p is None else float(top_p), int(num_beams), float(length_penalty),
                              frozenset(int(token) for token in stops))


def prepare_prompt(prompt_ids, config: GPTConfig) -> np.ndarray:
    """Prompt token ids -> 1-D int64 array; longer than the context: its last context_length tokens, with a
    PromptCroppedWarning. ValueError for an empty prompt, non-integers or ids outside the vocabulary."""
    ids = np.asarray(prompt_ids)
    if ids.ndim != 1:
        raise ValueError(f"prompt_ids must be one sequence of token ids (1-D), got shape {ids.shape}; "
                         f"use generate_batch for several prompts")
    if ids.size == 0:
        raise ValueError(f"the prompt is empty; pass at least one token id (e.g. [{EOT_ID}], <|endoftext|>, "
                         f"to generate from nothing)")
    if not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"prompt_ids must be integer token ids, got dtype {ids.dtype}; encode text with a tokenizer")
    if ids.min() < 0 or ids.max() >= config.vocab_size:
        raise ValueError(f"prompt token ids must be in [0, {config.vocab_size}), got {ids.min()}..{ids.max()}; "
                         f"use a tokenizer that matches the model's vocabulary")
    if ids.size > config.context_length:
        warnings.warn(f"the prompt has {ids.size} tokens but the model's context holds {config.context_length}: "
                      f"keeping only its last {config.context_length} tokens", PromptCroppedWarning, stacklevel=4)
        ids = ids[-config.context_length:]
    return ids.astype(np.int64)


# --------------------------------------------------------------------------------------------------------
# Ranking: the top-k mask (both backends' NumPy side and beam search), the inverse-CDF draw
# --------------------------------------------------------------------------------------------------------
def top_k_mask(values, k):
    """(B, V) -> bool (B, V), True at each row's k largest values; equal values at the k-th place: lowest
    indices first, so exactly k are kept."""
    V = values.shape[-1]
    if k >= V:
        return np.ones(values.shape, dtype=bool)
    kth = np.partition(values, V - k, axis=-1)[:, V - k:V - k + 1]            # (B, 1), the k-th largest value
    above = values > kth
    at_kth = values == kth
    room = k - above.sum(axis=-1, keepdims=True)                             # how many tied ones still fit
    return above | (at_kth & (np.cumsum(at_kth, axis=-1) <= room))


def check_sampling_temperature(temperature) -> None:
    """ValueError for a temperature too small to divide by (below GREEDY_BELOW); check_settings makes those greedy."""
    if not temperature >= GREEDY_BELOW:
        raise ValueError(f"sampling needs a temperature >= {GREEDY_BELOW} (smaller ones overflow logits / "
                         f"temperature), got {temperature!r}; use greedy decoding (temperature 0) instead")


def inverse_cdf(probs, u) -> int:
    """Token id for one uniform u in [0, 1): the first id (in id order) whose cumulative probability exceeds
    u * total. probs: (V,) float64, >= 0, need not sum to 1. Ids with probability 0 are never chosen."""
    cdf = np.cumsum(probs)
    token = int(np.searchsorted(cdf, u * cdf[-1], side="right"))
    if token == cdf.size:   # u * total rounded up to total: the last token with probability > 0
        token = int(np.flatnonzero(probs)[-1])
    return token


def top_k_indices(values, k):
    """Indices of the k largest entries of the 1-D `values`, largest first; equal values: lowest index first."""
    chosen = np.flatnonzero(top_k_mask(values[None], k)[0])                  # ascending indices
    return chosen[np.argsort(-values[chosen], kind="stable")]


# --------------------------------------------------------------------------------------------------------
# Running a model step after step (subclasses supply the model: one per backend)
# --------------------------------------------------------------------------------------------------------
class Decoder:
    """Feeds growing token sequences to a model and returns the logits of each row's last position.

    With use_cache, only the tokens not yet in the KV cache are fed. Once a sequence outgrows the context,
    the window of the last context_length tokens slides by one every step, so every position changes: the
    cache is then rebuilt from the window at each step (as slow as no cache, and exactly what the model
    computes without one). Subclasses implement new_cache, forward_last, greedy, probabilities, log_probs.
    """

    def __init__(self, config: GPTConfig, use_cache: bool = True):
        self.config, self.use_cache = config, bool(use_cache)
        self.cache, self.max_length = None, config.context_length

    def reset(self, max_length: int):
        """Starts new sequences that will be at most max_length tokens long (sizes the cache)."""
        self.cache, self.max_length = None, max(1, min(int(max_length), self.config.context_length))

    def next_logits(self, ids, valid=None):
        """ids: (B, L) int64 token ids; valid: (B, L) bool (False at left padding) or None -> logits (B, V)."""
        ctx = self.config.context_length
        window = ids[:, -ctx:]
        window_valid = None if valid is None else valid[:, -ctx:]
        if not self.use_cache:
            if window_valid is None:
                return self.forward_last(window, None, None)
            # padding needs the masks that live in a cache: a fresh one per step, filled with the whole window
            return self.forward_last(window, window_valid, self.new_cache(ids.shape[0], window.shape[1]))
        if self.cache is None or ids.shape[1] > ctx:
            self.cache = self.new_cache(ids.shape[0], ctx if ids.shape[1] > ctx else self.max_length)
            new, new_valid = window, window_valid
        else:
            new = ids[:, self.cache.length:]
            new_valid = None if valid is None else valid[:, self.cache.length:]
        return self.forward_last(new, new_valid, self.cache)

    def reorder(self, rows):
        """Beam search keeps rows `rows` of the batch (repeats allowed)."""
        if self.cache is not None:
            self.cache.reorder(rows)

    def choose(self, logits, settings: GenerationSettings, rng: np.random.Generator):
        """The next token of every row, (B,) int64, by the rule in the module docstring."""
        if settings.greedy:
            return self.greedy(logits)
        uniforms = rng.random(logits.shape[0])                               # one draw per row per step
        probs = self.probabilities(logits, settings)                        # (B, V) float64 NumPy
        return np.array([inverse_cdf(row, u) for row, u in zip(probs, uniforms)], dtype=np.int64)

    # The model side, one implementation per backend.
    def new_cache(self, batch_size: int, capacity: int):
        raise NotImplementedError

    def forward_last(self, ids, attention_mask, cache):
        """ids: (B, T) the new tokens -> logits (B, V) of the last position (the backend's array type)."""
        raise NotImplementedError

    def greedy(self, logits):
        raise NotImplementedError

    def probabilities(self, logits, settings):
        raise NotImplementedError

    def log_probs(self, logits):
        raise NotImplementedError


# --------------------------------------------------------------------------------------------------------
# The loops
# --------------------------------------------------------------------------------------------------------
def _token_steps(decoder: Decoder, ids, valid, settings: GenerationSettings, rng):
    """Yields the next token of every row, (B,) int64, step after step; the caller decides when to stop."""
    while True:
        tokens = decoder.choose(decoder.next_logits(ids, valid), settings, rng)
        yield tokens
        ids = np.concatenate([ids, tokens[:, None]], axis=1)
        if valid is not None:
            valid = np.concatenate([valid, np.ones((ids.shape[0], 1), dtype=bool)], axis=1)


def _single_stream(decoder: Decoder, prompt, settings: GenerationSettings, seed):
    if settings.max_new_tokens == 0:
        return
    decoder.reset(prompt.size + settings.max_new_tokens)
    steps = _token_steps(decoder, prompt[None], None, settings, np.random.default_rng(seed))
    for produced, tokens in enumerate(steps, start=1):
        token = int(tokens[0])
        if token in settings.stop_ids:
            return
        yield token
        if produced == settings.max_new_tokens:
            return


def stream_tokens(decoder: Decoder, prompt_ids, max_new_tokens, *, seed=None, **options):
    """Backend-neutral stream_generate: an iterator of new token ids (num_beams=1). Settings are checked and
    the prompt cropped now, not at the first next()."""
    settings = check_settings(max_new_tokens, **options)
    if settings.num_beams != 1:
        raise ValueError("streaming produces one sequence token by token; beam search needs generate(num_beams=...)")
    prompt = prepare_prompt(prompt_ids, decoder.config)
    return _single_stream(decoder, prompt, settings, seed)


def generate_tokens(decoder: Decoder, prompt_ids, max_new_tokens, *, seed=None, **options):
    """Backend-neutral generate: the new token ids as a list (stop token excluded)."""
    settings = check_settings(max_new_tokens, **options)
    prompt = prepare_prompt(prompt_ids, decoder.config)
    if settings.num_beams > 1:
        return beam_search(decoder, prompt, settings)
    return list(_single_stream(decoder, prompt, settings, seed))


def generate_batch_tokens(decoder: Decoder, prompts, max_new_tokens, *, seed=None, **options):
    """Several prompts at once, left-padded to one length with an attention mask (num_beams=1).

    Each step draws one uniform per row (finished rows too). Greedy rows equal generate() on each prompt.
    """
    settings = check_settings(max_new_tokens, **options)
    if settings.num_beams != 1:
        raise ValueError("generate_batch does not do beam search; call generate(num_beams=...) per prompt")
    rows = [prepare_prompt(prompt, decoder.config) for prompt in prompts]
    if not rows:
        return []
    longest = max(row.size for row in rows)
    ids = np.zeros((len(rows), longest), dtype=np.int64)                    # pad id 0: masked, never seen
    valid = np.zeros((len(rows), longest), dtype=bool)
    for b, row in enumerate(rows):
        ids[b, longest - row.size:], valid[b, longest - row.size:] = row, True
    outputs = [[] for _ in rows]
    if settings.max_new_tokens == 0:
        return outputs
    decoder.reset(longest + settings.max_new_tokens)
    done = np.zeros(len(rows), dtype=bool)
    steps = _token_steps(decoder, ids, None if valid.all() else valid, settings, np.random.default_rng(seed))
    for produced, tokens in enumerate(steps, start=1):
        for b, token in enumerate(tokens.tolist()):
            if not done[b]:
                if token in settings.stop_ids:
                    done[b] = True
                else:
                    outputs[b].append(token)
        if done.all() or produced == settings.max_new_tokens:
            return outputs


def beam_search(decoder: Decoder, prompt, settings: GenerationSettings):
    """The most likely continuation found by keeping the num_beams best partial sequences at every step.

    score(beam) = sum of the log-probabilities of its new tokens. Each step ranks every (beam, next token)
    pair by score (ties: lower beam row, then lower token id). A pair ending in a stop token, if it ranks
    among the num_beams best, becomes a finished hypothesis with score / length ** length_penalty (length =
    new tokens including the stop token; > 0 favours longer ones); the best other pairs, up to num_beams,
    are the next beams. It stops after max_new_tokens (the live beams then count as hypotheses of that
    length) or once num_beams hypotheses are finished and no live beam's current normalized score beats
    the worst of them (the usual heuristic: it does not look ahead). Returns the best hypothesis's new
    tokens, stop token excluded.
    """
    k, penalty = settings.num_beams, settings.length_penalty
    if settings.max_new_tokens == 0:
        return []
    decoder.reset(prompt.size + settings.max_new_tokens)
    ids = prompt[None]                                   # (n, T0 + step): one live beam to start with
    scores = np.zeros(1)                                 # (n,) summed log-probabilities of the new tokens
    finished = []                                        # (normalized score, arrival order, new tokens)
    # each beam contributes at most len(stop_ids) stops, so this many candidates always leave k live beams
    n_candidates = k * (1 + len(settings.stop_ids))
    for step in range(settings.max_new_tokens):
        log_probs = decoder.log_probs(decoder.next_logits(ids))           # (n, V) float64
        V = log_probs.shape[1]
        totals = (scores[:, None] + log_probs).reshape(-1)                 # (n * V,), index = row * V + token
        rows, tokens, new_scores = [], [], []
        for rank, flat in enumerate(top_k_indices(totals, min(n_candidates, totals.size)).tolist()):
            row, token = divmod(flat, V)
            if token in settings.stop_ids:
                if rank < k:
                    new_tokens = ids[row, prompt.size:].tolist()
                    finished.append((totals[flat] / (step + 1) ** penalty, len(finished), new_tokens))
            elif len(rows) < k:
                rows.append(row)
                tokens.append(token)
                new_scores.append(totals[flat])
        finished = sorted(finished, key=lambda h: (-h[0], h[1]))[:k]
        if not rows:
            break
        ids = np.concatenate([ids[rows], np.array(tokens, dtype=np.int64)[:, None]], axis=1)
        scores = np.array(new_scores)
        decoder.reorder(rows)
        best_live = scores.max() / (step + 1) ** penalty
        if len(finished) == k and best_live <= finished[-1][0]:
            break
    else:
        length = settings.max_new_tokens
        finished += [(score / length ** penalty, len(finished) + i, ids[i, prompt.size:].tolist())
                     for i, score in enumerate(scores)]
    return max(finished, key=lambda h: (h[0], -h[1]))[2] if finished else []


def reads_faster_transposed(name: str, shape, config: GPTConfig) -> bool:
    """Is `name` a linear layer's weight (out, in) that a batch-1 product x @ W^T reads faster from memory
    stored transposed, as the (in, out) matrix W^T in row order? NumPy's rule (npgpt.generate.decoding_layout).

    Measured here (2 threads, weights streamed from memory, NumPy's OpenBLAS and torch's MKL alike): the
    GEMV x @ W^T runs at full memory speed when W^T's rows are contiguous and out >= in (the head
    (50257, 768): 22 -> 31 GB/s in NumPy, 12 -> 24 GB/s in torch, whose kernel for the other layout uses
    one thread; fc1 (3072, 768): 25 -> 30 GB/s), and slower for fc2 (768, 3072), where in > out.
    torch's decoding splits the product along the input axis (torchgpt.linear.split_k_linear), which is
    faster transposed for every shape: its rule is is_linear_weight alone.
    """
    return is_linear_weight(name, shape, config) and shape[0] >= shape[1]


def is_linear_weight(name: str, shape, config: GPTConfig) -> bool:
    """Is `name` the (out, in) weight of a linear layer, the head included? The embeddings of `config`'s
    architecture spec are read by rows and are not, except an embedding tied to the head (spec.TIED_HEAD when
    config.tie_weights), which goes with the head: its V x C read every step outweighs a lookup's C numbers at
    a stride."""
    spec = spec_for(config)
    head, tied_embedding = spec.TIED_HEAD
    if config.tie_weights and name == tied_embedding:
        name = head
    embedding = name in spec.EMBEDDINGS
    return name.endswith(".weight") and not embedding and len(shape) == 2
