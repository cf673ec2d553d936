"""Gradient accumulation with clipping active, in both training loops (npgpt.train.NumpyBackend and
torchgpt.train.Trainer, each driven by gptcore.engine.training.TrainingLoop), against an oracle computed here.

The data holds exactly A * B windows, so the first optimizer step's global batch is every window, whatever
the shuffle: the oracle slices them from the token array directly. Then, written out in this file:

    g      = the gradient of the mean loss over the whole global batch, in ONE call (the model's own
             loss_and_grads for NumPy, torch autograd for torch): no accumulation involved
    norm   = sqrt(sum of g^2 over the distinct parameters)          (a tied weight counted once)
    g_clip = g * clip / (norm + 1e-6)                               (the clip is set well below the norm)
    AdamW, step t = 1, with m0 = v0 = 0:
        m = (1 - b1) g_clip,  v = (1 - b2) g_clip^2,  m_hat = m / (1 - b1),  v_hat = v / (1 - b2)
        p <- p (1 - lr wd [matrices only]) - lr m_hat / (sqrt(v_hat) + eps)
    lr     = lr_max * 1 / warmup_steps                              (linear warmup, step 0)

Checked against what the loop did in its first step: the step's loss, the norm it reports, the gradients
the backend holds when it applies the update, and the parameters after it. First-step Adam is nearly blind
to the gradient's scale (m_hat / sqrt(v_hat) = sign(g)), so the norm and the held gradients are checked
directly: a missing 1/A, clipping per micro-batch or no clipping shows there.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import npgpt.model
from gptcore.config import GPTConfig
from gptcore.data import SlidingWindowDataset
from gptcore.engine.training import TrainingLoop, TrainSettings
from npgpt.train import NumpyBackend
from torchgpt import GPTModel, load_numpy_params
from torchgpt.train import RuntimeOptions, TokenBatches, Trainer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CONFIG = GPTConfig(vocab_size=37, context_length=6, emb_dim=12, n_heads=2, n_layers=2, drop_rate=0.0,
                   qkv_bias=True, tie_weights=True)
T = CONFIG.context_length
MICRO_BATCH, ACCUM = 2, 3                      # the global batch: 6 windows, every window of the data
LR, WARMUP, WEIGHT_DECAY, BETAS, EPS = 3e-2, 4, 0.1, (0.9, 0.95), 1e-8
CLIP = 0.05                                    # far below the gradient norm (asserted), so clipping acts


def make_settings(grad_accum_steps=ACCUM, batch_size=MICRO_BATCH) -> TrainSettings:
    return TrainSettings(max_steps=1, batch_size=batch_size, grad_accum_steps=grad_accum_steps, lr=LR,
                         warmup_steps=WARMUP, cosine=False, weight_decay=WEIGHT_DECAY, betas=BETAS, grad_clip=CLIP,
                         eval_interval=1, eval_batches=1, seed=5)


@pytest.fixture(scope="module")
def token_ids():
    n_windows = MICRO_BATCH * ACCUM
    return np.random.default_rng(11).integers(0, CONFIG.vocab_size, n_windows * T + 1)


def all_windows(ids):
    """Every non-overlapping window (stride T) of the token array and its next-token targets, sliced here."""
    starts = range(0, len(ids) - T, T)
    X = np.stack([ids[s:s + T] for s in starts])
    Y = np.stack([ids[s + 1:s + T + 1] for s in starts])
    return X, Y


def initial_params(dtype=np.float64) -> dict:
    return npgpt.model.init_params(CONFIG, seed=4, dtype=dtype)


def distinct(named: dict) -> dict:
    """The entries of a name -> array dict with tied arrays (one object under two names) kept once."""
    seen, out = set(), {}
    for name, value in named.items():
        if id(value) not in seen:
            seen.add(id(value))
            out[name] = value
    return out


def clipped(grads: dict) -> tuple[dict, float]:
    """(grads scaled to norm CLIP by torch's rule, the norm before), grads already distinct."""
    norm = math.sqrt(sum(float(np.sum(np.asarray(g, np.float64) ** 2)) for g in grads.values()))
    assert norm > 5 * CLIP, f"the gradient norm {norm:.3g} must be well above the clip {CLIP} to test clipping"
    coef = CLIP / (norm + 1e-6)
    return {name: g * coef for name, g in grads.items()}, norm


def adamw_first_step(params: dict, grads: dict, lr: float) -> dict:
    """AdamW's first update (t = 1, zero moments), written out; decay on arrays with ndim >= 2."""
    b1, b2 = BETAS
    updated = {}
    for name, p in params.items():
        g = grads[name]
        m_hat = (1 - b1) * g / (1 - b1)
        v_hat = (1 - b2) * g * g / (1 - b2)
        decay = 1 - lr * WEIGHT_DECAY if p.ndim >= 2 else 1.0
        updated[name] = p * decay - lr * m_hat / (np.sqrt(v_hat) + EPS)
    return updated


def first_step_lr() -> float:
    return LR * 1 / WARMUP                     # linear warmup: step 0 gets lr / warmup_steps


class Oracle:
    """What the first step must do, from the full global batch in one gradient computation."""

    def __init__(self, params: dict, loss: float, grads: dict):
        self.loss = loss
        self.grads, self.norm = clipped(distinct(grads))
        self.params = adamw_first_step({name: params[name] for name in self.grads}, self.grads, first_step_lr())


def numpy_oracle(ids) -> Oracle:
    params = initial_params()
    X, Y = all_windows(ids)
    before = {name: value.copy() for name, value in params.items()}
    loss, grads = npgpt.model.loss_and_grads(params, X, Y, CONFIG)
    return Oracle(before, loss, {name: grads[name] for name in distinct(params)})


def torch_oracle(ids) -> Oracle:
    model = load_numpy_params(GPTModel(CONFIG).double(), initial_params())
    X, Y = (torch.from_numpy(a) for a in all_windows(ids))
    logits = model(X)
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, CONFIG.vocab_size), Y.reshape(-1))
    loss.backward()
    params = {name: p.detach().numpy().copy() for name, p in model.named_parameters()}
    grads = {name: p.grad.numpy().copy() for name, p in model.named_parameters()}
    return Oracle(params, loss.item(), grads)


def held_gradients_at_update(backend, read_grads):
    """Wraps backend.apply_update to copy the gradients it is about to apply; returns the dict they go in."""
    seen = {}
    apply_update = backend.apply_update

    def recording(lr):
        seen.update(read_grads())
        seen["lr"] = lr
        apply_update(lr)

    backend.apply_update = recording
    return seen


def numpy_first_step(ids, settings):
    params = initial_params()
    dataset = SlidingWindowDataset(ids, T, T)
    backend = NumpyBackend(params, CONFIG, dataset, None, settings)
    seen = held_gradients_at_update(
        backend, lambda: {name: g.copy() for name, g in distinct(backend.grads).items()})
    result = TrainingLoop(backend, settings, progress=False).train_step()
    return result, seen, distinct(params)


def torch_first_step(ids, settings):
    model = load_numpy_params(GPTModel(CONFIG).double(), initial_params())
    dataset = SlidingWindowDataset(ids, T, T)
    trainer = Trainer(model, TokenBatches(dataset, settings), settings, runtime=RuntimeOptions(device="cpu"),
                      progress=False)
    seen = held_gradients_at_update(
        trainer, lambda: {name: p.grad.numpy().copy() for name, p in model.named_parameters()})
    result = trainer.train_step()
    return result, seen, {name: p.detach().numpy() for name, p in model.named_parameters()}


def assert_first_step(result, seen, params_after, oracle: Oracle, loss_rtol=1e-12):
    close = dict(rtol=1e-9, atol=1e-13)
    np.testing.assert_allclose(result["loss"], oracle.loss, rtol=loss_rtol, err_msg="the step's loss")
    np.testing.assert_allclose(result["grad_norm"], oracle.norm, rtol=1e-10,
                               err_msg="the reported norm (before clipping) of the global batch's gradient")
    np.testing.assert_allclose(seen["lr"], first_step_lr(), rtol=1e-15, err_msg="the first step's lr")
    assert set(oracle.grads) <= set(seen)
    for name, g in oracle.grads.items():
        np.testing.assert_allclose(seen[name], g, **close, err_msg=f"clipped gradient {name}")
    for name, p in oracle.params.items():
        np.testing.assert_allclose(params_after[name], p, **close, err_msg=f"{name} after the AdamW step")


@pytest.mark.parametrize("accum, batch", [(ACCUM, MICRO_BATCH), (1, MICRO_BATCH * ACCUM)])
def test_numpy_loop_first_step_is_the_clipped_full_batch_adamw_step(token_ids, accum, batch):
    oracle = numpy_oracle(token_ids)
    assert_first_step(*numpy_first_step(token_ids, make_settings(accum, batch)), oracle)


@pytest.mark.parametrize("accum, batch", [(ACCUM, MICRO_BATCH), (1, MICRO_BATCH * ACCUM)])
def test_torch_loop_first_step_is_the_clipped_full_batch_adamw_step(token_ids, accum, batch):
    oracle = torch_oracle(token_ids)
    # Trainer sums the micro-batch losses in float32 (`loss.detach().float()`, for bf16 autocast): the reported
    # loss carries float32 rounding (6e-8 relative) even for a float64 model
    assert_first_step(*torch_first_step(token_ids, make_settings(accum, batch)), oracle, loss_rtol=3e-7)


def test_the_two_oracles_agree(token_ids):
    """NumPy's and torch's full-batch gradients are one function (else one oracle would be wrong)."""
    numpy, torch_ = numpy_oracle(token_ids), torch_oracle(token_ids)
    assert numpy.loss == pytest.approx(torch_.loss, rel=1e-12)
    for name in numpy.grads:
        np.testing.assert_allclose(numpy.grads[name], torch_.grads[name], rtol=1e-9, atol=1e-13, err_msg=name)
