"""Training trajectory: the same tiny GPT from the same initial weights, trained 20 AdamW steps on
the-verdict in NumPy (npgpt.train.train, the real loop) and in torch (the same loop written with
torchgpt: DataLoader, make_adamw, clip_grad_norm_, the same schedule), gives the same loss at every step.

Everything that can differ is on: dropout (torch is fed the masks npgpt's loop draws, regenerated from the
loop's seed in npgpt's documented order), weight decay on matrices only, gradient clipping, warmup + cosine.
The torch side takes nothing from npgpt's loop that both could get wrong together: the learning rates are
written out below by the formula (linear warmup, then cosine to min_lr), the dropout masks are drawn here
(keep where a uniform draw from numpy.random.default_rng(seed) is >= p, in npgpt's documented order), and
every window it trains on is checked against slicing the token array directly (stride-aligned, targets
shifted by one, no window twice within the epoch, shuffled). The NumPy loop's logged lr must equal the list.
Tolerances: float64 1e-9 relative (20 steps of rounding differences, each ~1e-13, grow through Adam's
normalised updates but stay far below), float32 1e-4 (the same growth from ~1e-6 per step).
"""
import math

import numpy as np
import pytest
import torch

import npgpt.model as npmodel
from gptcore.config import GPTConfig
from gptcore.data import SlidingWindowDataset
from gptcore.tokenizer import get_tokenizer
from gptcore.engine.training import TrainSettings
from npgpt.train import train
from torchgpt.data import create_dataloader
from torchgpt.loss import cross_entropy
from torchgpt.model import GPTModel, load_numpy_params
from torchgpt.optim import clip_grad_norm, make_adamw, set_lr
from parity_tests.conftest import assert_close, fed_dropout_masks, record_example

CONFIG = GPTConfig(vocab_size=50257, context_length=16, emb_dim=16, n_heads=2, n_layers=2, drop_rate=0.1,
                   qkv_bias=True, tie_weights=True)
SETTINGS = TrainSettings(max_steps=20, batch_size=4, lr=1e-2, min_lr=1e-3, warmup_steps=4, cosine=True,
                         weight_decay=0.1, grad_clip=1.0, eval_interval=20, eval_batches=1, seed=123)
TRAJECTORY_RTOL = {np.float64: 1e-9, np.float32: 1e-4}


def expected_lrs(settings=SETTINGS):
    """The schedule of SETTINGS written out: lr (s + 1) / warmup for the warmup steps s, then
    min_lr + (lr - min_lr) (1 + cos(pi (s - warmup) / (max_steps - warmup))) / 2."""
    lr, low, warmup, steps = settings.lr, settings.min_lr, settings.warmup_steps, settings.max_steps
    return [lr * (s + 1) / warmup if s < warmup
            else low + (lr - low) * (1 + math.cos(math.pi * (s - warmup) / (steps - warmup))) / 2
            for s in range(steps)]


def keep_mask(shape, p, rng):
    """Inverted dropout's keep-mask as npgpt documents it: keep where rng.random() >= p (written here)."""
    return rng.random(shape) >= p


def assert_windows_sliced_from(ids, X, Y, T, seen):
    """Every row of X is ids[s:s + T] at a stride-aligned start s (stride T), Y the same shifted by one,
    and no start repeats within the epoch (`seen` collects them)."""
    for x, y in zip(X.numpy(), Y.numpy()):
        matches = [s for s in range(0, len(ids) - T, T) if np.array_equal(ids[s:s + T], x)]
        assert matches, f"window {x[:4]}... is no stride-aligned slice of the token array"
        start = matches[0]
        np.testing.assert_array_equal(y, ids[start + 1:start + T + 1], err_msg="targets are not the next tokens")
        assert start not in seen, f"window at {start} trained on twice in one epoch"
        seen.append(start)


@pytest.fixture(scope="module")
def verdict_ids(shared_data_dir):
    text = (shared_data_dir / "the-verdict.txt").read_text(encoding="utf-8")
    return np.asarray(get_tokenizer("tiktoken").encode(text), dtype=np.int64)


def model_dropout_masks(config, B, T, rng):
    """The keep-masks of one training forward pass, drawn in npgpt's order (npgpt.model.forward's docstring):
    embedding (B, T, C), then per block: attention weights (B, H, T, T), after attention, after feed-forward."""
    C, H, p = config.emb_dim, config.n_heads, config.drop_rate
    shapes = [(B, T, C)] + [(B, H, T, T), (B, T, C), (B, T, C)] * config.n_layers
    return [torch.from_numpy(keep_mask(shape, p, rng)) for shape in shapes]


def numpy_losses(params, ids, settings):
    dataset = SlidingWindowDataset(ids, CONFIG.context_length, CONFIG.context_length)
    history = train(params, CONFIG, dataset, None, settings, progress=False)
    np.testing.assert_allclose([entry["lr"] for entry in history], expected_lrs(settings), rtol=1e-14,
                               err_msg="the NumPy loop's learning rates")
    return [entry["train_loss"] for entry in history]


def torch_losses(params, ids, settings, dtype):
    """npgpt.train.train's loop, step for step, with torchgpt's pieces."""
    model = load_numpy_params(GPTModel(CONFIG, seed=0).to(dtype), params).train()
    optimizer = make_adamw(model, lr=settings.lr, weight_decay=settings.weight_decay, betas=settings.betas)
    loader = create_dataloader(ids, batch_size=settings.batch_size, max_length=CONFIG.context_length,
                               stride=CONFIG.context_length, shuffle=True, drop_last=True, seed=settings.seed)
    assert len(loader) >= settings.max_steps, "the trajectory must stay in epoch 0 (one loader pass)"
    dropout_rng = np.random.default_rng(settings.seed)            # as npgpt.train.train draws its masks
    losses, starts = [], []
    for step, (X, Y), lr in zip(range(settings.max_steps), loader, expected_lrs(settings)):
        assert_windows_sliced_from(ids, X, Y, CONFIG.context_length, starts)
        masks = model_dropout_masks(CONFIG, *X.shape, dropout_rng)
        with fed_dropout_masks(model, masks):
            loss = cross_entropy(model(X), Y)
        optimizer.zero_grad()
        loss.backward()
        clip_grad_norm(model.parameters(), settings.grad_clip)
        set_lr(optimizer, lr)
        optimizer.step()
        losses.append(loss.item())
    assert starts != sorted(starts), "the windows must come shuffled"
    return losses


def check_trajectory(ids, dtype, settings=SETTINGS):
    initial = npmodel.init_params(CONFIG, seed=0, dtype=dtype)
    expected = torch_losses(initial, ids, settings, {np.float64: torch.float64, np.float32: torch.float32}[dtype])
    ours = numpy_losses(initial, ids, settings)                   # trains `initial` in place: run it last
    assert len(ours) == len(expected) == settings.max_steps
    for step, (a, b) in enumerate(zip(ours, expected)):
        # recorded under the run's dtype (the float32 losses are rounded to float32: 6e-8, far below 1e-4)
        assert_close(np.asarray(a, dtype), np.asarray(b, dtype), rtol=TRAJECTORY_RTOL[dtype],
                     name=f"loss at step {step + 1}")
    return ours, expected


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_same_loss_at_every_step(verdict_ids, dtype):
    record_example()
    ours, _ = check_trajectory(verdict_ids, dtype)
    assert ours[-1] < ours[0] - 1.0, "the model must learn (loss falls), or the comparison proves little"
