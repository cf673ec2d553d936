"""The NumPy training loop learns, and the model refuses bad input with a clear message."""
import numpy as np
import pytest

from npgpt import GPTConfig, get_config, model
from npgpt.data import SlidingWindowDataset, split_train_val
from npgpt.tokenizer import get_tokenizer
from npgpt.train import TrainSettings, train


def small_config():
    return GPTConfig(vocab_size=50257, context_length=32, emb_dim=32, n_heads=2, n_layers=1, drop_rate=0.0)


def test_loss_falls_on_the_verdict_and_the_model_overfits(shared_data_dir):
    text = (shared_data_dir / "the-verdict.txt").read_text(encoding="utf-8")
    train_text, val_text = split_train_val(text, 0.9)
    tokenizer = get_tokenizer("tiktoken")
    config = small_config()
    train_set = SlidingWindowDataset(tokenizer.encode(train_text), 32, 32)
    val_set = SlidingWindowDataset(tokenizer.encode(val_text), 32, 32)
    params = model.init_params(config, seed=0)
    settings = TrainSettings(max_steps=60, batch_size=8, lr=2e-3, eval_interval=20, eval_batches=20)
    history = train(params, config, train_set, val_set, settings, progress=False)
    evals = [e for e in history if "val_loss" in e]
    train_losses = [e["eval_train_loss"] for e in evals]
    assert len(evals) == 3
    assert train_losses[0] > train_losses[1] > train_losses[2]          # falls steadily
    assert train_losses[-1] < np.log(config.vocab_size) - 3.0           # far below uniform guessing (10.8)
    assert evals[-1]["val_loss"] > evals[-1]["eval_train_loss"]          # starts to overfit: val above train


def test_train_settings_refuse_nonsense():
    with pytest.raises(ValueError, match="max_steps"):
        TrainSettings(max_steps=0)


@pytest.mark.parametrize("idx,message", [
    (np.zeros((1, 65), dtype=np.int64), "exceeds the context length 64"),
    (np.array([[0, 50257]]), r"must be in \[0, 50257\)"),
    (np.array([[-1, 3]]), r"must be in \[0, 50257\)"),
    (np.zeros((1, 4), dtype=np.float32), "must be integers"),
    (np.zeros(4, dtype=np.int64), r"shape \(B, T\)"),
])
def test_forward_rejects_bad_token_ids(idx, message):
    config = get_config("tiny")
    params = model.init_params(config)
    with pytest.raises(ValueError, match=message):
        model.forward(params, idx, config)


def test_check_params_names_the_mismatch():
    config = get_config("tiny")
    params = model.init_params(config)
    params["pos_emb.weight"] = np.zeros((3, 64), dtype=np.float32)
    with pytest.raises(ValueError, match="pos_emb.weight has shape"):
        model.check_params(params, config)
