"""The dropout torch draws itself (nn.Dropout without fed masks, scaled_dot_product_attention's dropout_p):
it drops about p of the elements, scales the kept ones by 1 / (1 - p), and drops nothing in eval mode.

The parity suite feeds torch npgpt's masks, so it never sees torch's own draws; a Dropout built with the
wrong rate, one that is never called, or SDPA given dropout_p = 0 in training would pass it. Here:

- the oracle rate is config.drop_rate (never the module's own p);
- the kept fraction k / n of n independent draws must lie within 5 standard deviations of 1 - p,
  sqrt(p (1 - p) / n) (fixed seeds: the test is deterministic; a fair draw fails it with probability ~6e-7);
- every kept element equals its input times 1 / (1 - p), every dropped one is 0.

SDPA draws its mask inside the kernel, so it is read through the attention output: with queries and keys 0
every visible key gets weight 1 / (t + 1), and with values v_s = e_s (one-hot per key position) the context
of query t is keep[t, s] / ((t + 1) (1 - p)) at coordinate s: the mask itself, scaled.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gptcore.config import GPTConfig
from torchgpt import GPTModel
from torchgpt.attention import MultiHeadAttention

pytestmark = pytest.mark.usefixtures("one_torch_thread")

Z = 5.0                                     # standard deviations allowed for the kept fraction
P = 0.3
CONFIG = GPTConfig(vocab_size=53, context_length=12, emb_dim=16, n_heads=2, n_layers=2, drop_rate=P)


def assert_kept_fraction(kept: np.ndarray, p: float, what: str) -> None:
    """kept: bool array of independent keep decisions; asserts |k/n - (1 - p)| <= Z sigma."""
    n = kept.size
    fraction = float(kept.mean())
    sigma = math.sqrt(p * (1 - p) / n)
    assert abs(fraction - (1 - p)) <= Z * sigma, (
        f"{what}: kept fraction {fraction:.4f} of {n} draws, expected {1 - p:.4f} +- {Z * sigma:.4f} (dropout p={p})")


def assert_inverted_dropout(x: torch.Tensor, out: torch.Tensor, p: float, what: str) -> None:
    """out is x * keep / (1 - p) elementwise, keep drawn at rate 1 - p. The mask is read from the output's
    zeros, so inputs that are exactly 0 (a few, e.g. after a dropped value upstream) tell nothing: left out."""
    x, out = x.detach().double().numpy(), out.detach().double().numpy()
    readable = x != 0
    assert readable.mean() > 0.5, f"{what}: most inputs are 0, the check would read nothing"
    assert np.all(out[~readable] == 0), f"{what}: an input 0 came out nonzero"
    x, out = x[readable], out[readable]
    kept = out != 0
    np.testing.assert_allclose(out[kept], x[kept] / (1 - p), rtol=1e-6, err_msg=f"{what}: kept elements' scale")
    assert_kept_fraction(kept, p, what)


def record_dropout_calls(model: torch.nn.Module) -> list:
    """(name, input, output) of every nn.Dropout call during the next forwards."""
    calls = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Dropout):
            module.register_forward_hook(lambda m, inputs, output, name=name: calls.append((name, inputs[0], output)))
    return calls


def token_batch(seed: int, batch: int = 16):
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.integers(0, CONFIG.vocab_size, (batch, CONFIG.context_length)))


@pytest.mark.parametrize("use_sdpa", [False, True])
def test_model_dropouts_drop_at_the_configured_rate_in_training(use_sdpa):
    torch.manual_seed(0)
    model = GPTModel(CONFIG, use_sdpa=use_sdpa, seed=0).train()
    calls = record_dropout_calls(model)
    model(token_batch(1))
    # the embedding's, then per block the attention weights' (explicit path only: SDPA draws inside its
    # kernel, checked below) and the two residuals'
    per_block = 2 if use_sdpa else 3
    assert len(calls) == 1 + per_block * CONFIG.n_layers, [name for name, _, _ in calls]
    for name, x, out in calls:
        if x.dim() == 4:          # attention weights (B, H, T, T): the causal zeros are not draws
            causal = torch.ones(x.shape[-2:], dtype=torch.bool).tril().expand_as(x)
            x, out = x[causal], out[causal]
        assert_inverted_dropout(x, out, CONFIG.drop_rate, name or "dropout")


@pytest.mark.parametrize("use_sdpa", [False, True])
def test_eval_mode_drops_nothing(use_sdpa):
    torch.manual_seed(0)
    model = GPTModel(CONFIG, use_sdpa=use_sdpa, seed=0)
    idx = token_batch(2, batch=4)
    model.train()
    trained = model(idx)
    model.eval()
    calls = record_dropout_calls(model)
    first, second = model(idx), model(idx)
    assert torch.equal(first, second), "eval mode must be deterministic"
    assert not torch.allclose(trained, first), "training mode must drop something (else the check proves nothing)"
    for name, x, out in calls:
        assert torch.equal(x, out), f"{name} changed its input in eval mode"
    without_dropout = GPTModel(CONFIG.replace(drop_rate=0.0), use_sdpa=use_sdpa, seed=0).eval()
    without_dropout.load_state_dict(model.state_dict())
    torch.testing.assert_close(first, without_dropout(idx), rtol=0, atol=0)


def attention_that_shows_its_mask(use_sdpa: bool, T: int, drop_rate: float) -> MultiHeadAttention:
    """One attention layer, H = 2 heads of size D = T: queries and keys 0 (uniform weights over the visible
    keys), values v_s = the input's first T coordinates in every head, out_proj left to the hook."""
    H, D = 2, T
    attention = MultiHeadAttention(H * D, H * D, T, drop_rate, H, qkv_bias=True, use_sdpa=use_sdpa).double()
    with torch.no_grad():
        for linear in (attention.W_query, attention.W_key, attention.W_value):
            linear.weight.zero_()
            linear.bias.zero_()
        for h in range(H):
            attention.W_value.weight[h * D:(h + 1) * D, :T] = torch.eye(T)
    return attention


def attention_context(attention: MultiHeadAttention, B: int, T: int) -> torch.Tensor:
    """The merged context (B, T, H * D) fed to out_proj, for inputs x[b, t] = e_t (one-hot position)."""
    seen = []
    handle = attention.out_proj.register_forward_pre_hook(lambda m, inputs: seen.append(inputs[0]))
    x = torch.zeros(B, T, attention.d_out, dtype=torch.float64)
    x[:, torch.arange(T), torch.arange(T)] = 1.0
    attention(x)
    handle.remove()
    return seen[0].view(B, T, attention.n_heads, T).detach()      # [b, t, h, s]


@pytest.mark.parametrize("use_sdpa", [False, True])
def test_attention_dropout_drops_weights_at_the_configured_rate(use_sdpa):
    B, T, p = 48, 8, 0.25
    torch.manual_seed(3)
    attention = attention_that_shows_its_mask(use_sdpa, T, p).train()
    context = attention_context(attention, B, T).numpy()
    t, s = np.meshgrid(np.arange(T), np.arange(T), indexing="ij")
    visible = np.broadcast_to((s <= t)[None, :, None, :], context.shape)
    undropped = np.broadcast_to((1.0 / (t + 1))[None, :, None, :], context.shape)
    assert np.all(context[~visible] == 0), "a future key contributed (the causal mask)"
    kept = context[visible] != 0
    np.testing.assert_allclose(context[visible][kept], undropped[visible][kept] / (1 - p), rtol=1e-12,
                               err_msg="kept attention weights are scaled by 1 / (1 - p)")
    assert_kept_fraction(kept, p, f"attention weights (use_sdpa={use_sdpa})")
    attention.eval()
    np.testing.assert_allclose(attention_context(attention, B, T).numpy()[visible], undropped[visible], rtol=1e-12,
                               err_msg="eval mode: the attention weights are not dropped")


def test_functional_dropout_without_a_mask_draws_its_own():
    """torchgpt.dropout.dropout(x, p) with no mask: torch's own draw in training, the identity otherwise."""
    from torchgpt.dropout import dropout

    torch.manual_seed(4)
    x = torch.randn(64, 80, dtype=torch.float64) + 10.0          # no zeros
    assert_inverted_dropout(x, dropout(x, P), P, "dropout(x, p)")
    assert torch.equal(dropout(x, P, training=False), x)
    assert torch.equal(dropout(x, 0.0), x)
