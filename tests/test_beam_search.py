"""Beam search's length normalisation against brute force over every finished sequence.

The oracle enumerates every hypothesis beam search can return for a tiny vocabulary: each sequence that
ends at its first stop token (length L = tokens including the stop) and each max-length sequence with no
stop, scores it as sum(log p) / L ** length_penalty from the model's full forward (no cache, no decoder),
and takes the best. With more beams than hypotheses beam search prunes nothing and its early stop never
fires, so it must return exactly that best sequence, for any penalty, in both backends.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest

import npgpt.generate as npgen
import torchgpt.generate as tgen
from gptcore.config import GPTConfig
from npgpt.model import forward
from parity_tests.conftest import random_gpt_params, torch_twin

CONFIG = GPTConfig(vocab_size=5, context_length=8, emb_dim=6, n_heads=2, n_layers=1, drop_rate=0.0)
PROMPT, MAX_NEW, STOP = [1, 4], 3, 2


def log_probs_of(params, sequence):
    """(len(sequence), V) log-softmax of the model's logits at every position, in float64."""
    logits, _ = forward(params, np.array([sequence]), CONFIG)
    shifted = logits[0] - logits[0].max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def hypotheses():
    """Every continuation beam search may return, with the stop token when it ended on one."""
    others = [t for t in range(CONFIG.vocab_size) if t != STOP]
    for length in range(1, MAX_NEW + 1):
        for prefix in itertools.product(others, repeat=length - 1):
            yield list(prefix) + [STOP]
    yield from (list(s) for s in itertools.product(others, repeat=MAX_NEW))


def normalized_score(params, continuation, penalty):
    log_probs = log_probs_of(params, PROMPT + continuation)
    total = sum(log_probs[len(PROMPT) - 1 + i, token] for i, token in enumerate(continuation))
    return total / len(continuation) ** penalty


@pytest.mark.parametrize("penalty", [0.0, 0.5, 1.0, 2.0, -1.0])
@pytest.mark.parametrize("seed", range(12))
def test_beam_search_returns_the_best_normalized_hypothesis(penalty, seed):
    params = random_gpt_params(CONFIG, seed=seed, dtype=np.float64, std=0.8)
    scored = sorted(((normalized_score(params, h, penalty), h) for h in hypotheses()), key=lambda sh: -sh[0])
    best_score, best = scored[0]
    assert best_score - scored[1][0] > 1e-9, "the oracle's best must be unique for the comparison to mean something"
    expected = best[:-1] if best[-1] == STOP else best           # the stop token is not returned
    beams = 200                                                  # > the 85 hypotheses: nothing is pruned
    found = npgen.generate(params, CONFIG, PROMPT, MAX_NEW, num_beams=beams, length_penalty=penalty, stop_ids=(STOP,))
    assert found == expected, f"penalty {penalty}: beam search chose {found}, the best is {best} ({best_score:.6f})"
    assert tgen.generate(torch_twin(params, CONFIG), PROMPT, MAX_NEW, num_beams=beams, length_penalty=penalty,
                         stop_ids=(STOP,)) == expected


def test_the_penalty_changes_which_hypothesis_wins():
    """The oracle itself: over these seeds the winner's length depends on the penalty (else the test above
    could not tell a correct normalisation from a missing one)."""
    winners = {}
    for penalty in (0.0, 2.0):
        for seed in (1, 2, 3):
            params = random_gpt_params(CONFIG, seed=seed, dtype=np.float64, std=0.8)
            winners[penalty, seed] = max(hypotheses(), key=lambda h: normalized_score(params, h, penalty))
    assert any(winners[0.0, s] != winners[2.0, s] for s in (1, 2, 3))
