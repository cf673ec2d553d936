"""The training loops (torchgpt.train.Trainer and npgpt.train.train): exact resume, NaN stop, Ctrl-C,
gradient accumulation, both backends on the same batches, precision/compile switches, the run folder."""
from __future__ import annotations

import math
import os
import signal

import numpy as np
import pytest
import torch

import npgpt.model
from gptcore.config import GPTConfig, get_config
from gptcore.formats.checkpoint import load_checkpoint
from gptcore.data import SlidingWindowDataset
from gptcore.fileio import read_jsonl
from gptcore.formats.runs import NonFiniteLossError, RunLog, TrainingInterrupted, latest_checkpoint, list_checkpoints
from gptcore.engine.classification import ClassifierSettings
from gptcore.engine.lockstep import LockstepSettings
from gptcore.engine.training import TrainingBackend, TrainingLoop, TrainSettings
from npgpt.train import train as numpy_train
from torchgpt import GPTModel, load_numpy_params
from torchgpt.train import (LoaderBatches, RuntimeOptions, TokenBatches, Trainer, flops_per_token, next_token_loss,
                            ordered_batches)

CONFIG = GPTConfig(vocab_size=97, context_length=8, emb_dim=16, n_heads=2, n_layers=1, drop_rate=0.1)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def dataset():
    return SlidingWindowDataset(np.random.default_rng(0).integers(0, 97, 700), 8, 8)


def settings(max_steps, **changes):
    values = dict(max_steps=max_steps, batch_size=4, grad_accum_steps=2, eval_interval=3, eval_batches=2, lr=1e-2,
                  cosine=True, warmup_steps=2, lr_decay_steps=8, checkpoint_interval=0, seed=7)
    values.update(changes)
    return TrainSettings(**values)


def make_trainer(dataset, train_settings, run_dir=None, config=CONFIG, compile_backend=None, **kwargs):
    torch.manual_seed(train_settings.seed)
    model = GPTModel(config, seed=1)
    runtime = RuntimeOptions(device="cpu", compile=compile_backend is not None,
                             compile_backend=compile_backend or "inductor")
    return Trainer(model, TokenBatches(dataset, train_settings), train_settings,
                   eval_sets={"eval_train": ordered_batches(dataset, 4), "val": ordered_batches(dataset, 4)},
                   runtime=runtime, run_log=RunLog(run_dir) if run_dir else None, progress=False, **kwargs)


def losses(history):
    return [entry["train_loss"] for entry in history]


# ----- the core loop with a backend of plain Python numbers ----------------------------------------------

class CountingBackend(TrainingBackend):
    """A "model" of one number w with loss (w - 3)^2, plain gradient steps, a data position that counts steps:
    enough to watch the loop's calls."""
    name = "counting"

    def __init__(self, nan_at_call=None):
        self.w, self.grad, self.position, self.calls, self.nan_at_call = 0.0, None, 0, [], nan_at_call

    def compute_gradients(self):
        self.calls.append("compute")
        self.position += 1
        self.grad = 2 * (self.w - 3)
        loss = (self.w - 3) ** 2
        return (math.nan if len(self.calls) == self.nan_at_call else loss), 10

    def clip_gradients(self, max_norm):
        self.calls.append("clip")
        norm = abs(self.grad)
        self.grad *= min(1.0, max_norm / (norm + 1e-6))
        return norm

    def apply_update(self, lr):
        self.calls.append(f"update {lr:g}")
        self.w, self.grad = self.w - lr * self.grad, None

    def discard_gradients(self):
        self.calls.append("discard")
        self.grad = None

    def evaluate(self):
        self.calls.append("evaluate")
        return {"val_loss": (self.w - 3) ** 2}

    def data_state(self):
        return {"position": self.position}

    def load_data_state(self, state):
        self.position = state["position"]

    def rng_state(self):
        return None

    def set_rng_state(self, state):
        pass

    def backend_state(self):
        return {"rng": {}, "w": self.w}

    def load_backend_state(self, training_state):
        self.w = training_state["w"]

    def write_checkpoint(self, path, training_state):
        raise AssertionError("no run folder, no checkpoint")


def test_the_core_loop_calls_its_backend_in_order_and_keeps_the_cadences():
    backend = CountingBackend()
    loop_settings = TrainSettings(max_steps=5, lr=0.25, eval_interval=2, grad_clip=10.0)
    logged = []
    history = TrainingLoop(backend, loop_settings, progress=False, on_log=logged.append).fit()
    assert backend.calls[:5] == ["compute", "clip", "update 0.25", "compute", "clip"]
    assert backend.calls.count("evaluate") == 3                            # steps 2, 4 and the last, 5
    assert [e["step"] for e in history if "val_loss" in e] == [2, 4, 5] and logged == history
    assert [e["tokens_seen"] for e in history] == [10, 20, 30, 40, 50]
    assert history[0]["grad_norm"] == 6.0 and backend.w == pytest.approx(3 - 3 * 0.5 ** 5)


def test_the_core_loop_stops_on_nan_before_the_update_and_resumes_from_a_state():
    backend = CountingBackend(nan_at_call=5)                                # step 3's compute (no clip)
    loop = TrainingLoop(backend, TrainSettings(max_steps=5, lr=0.25, grad_clip=None), progress=False)
    with pytest.raises(NonFiniteLossError, match="loss became nan at step 3"):
        loop.fit()
    assert backend.calls[-2:] == ["compute", "discard"] and loop.step == 2
    state = loop.training_state()
    assert state["backend"] == "counting" and state["data"] == {"position": 3} and state["w"] == backend.w
    again = TrainingLoop(CountingBackend(), TrainSettings(max_steps=5, lr=0.25), progress=False)
    again.resume(state)
    assert (again.step, again.tokens_seen, again.backend.position, again.backend.w) == (2, 20, 3, backend.w)


@pytest.mark.parametrize("make, message", [
    (lambda: TrainSettings(batch_size=0), "TrainSettings.batch_size must be positive, got 0"),
    (lambda: TrainSettings(lr=math.inf), "TrainSettings.lr must be a positive number, got inf"),
    (lambda: TrainSettings(lr=1e-3, min_lr=1e-2), r"need 0 <= min_lr <= lr"),
    (lambda: TrainSettings(grad_clip=-1.0), "TrainSettings.grad_clip must be a positive norm or None"),
    (lambda: ClassifierSettings(batch_size=True), "batch-size must be a positive integer, got True"),
    (lambda: ClassifierSettings(lr=math.nan), "the learning rate must be a positive number, got nan"),
    (lambda: ClassifierSettings(weight_decay=-0.1), "weight decay must be >= 0, got -0.1"),
    (lambda: LockstepSettings(steps=0), "steps must be positive, got 0"),
    (lambda: LockstepSettings(grad_clip=0.0), "grad_clip must be a positive norm or None"),
])
def test_the_settings_classes_share_their_checks(make, message):
    with pytest.raises(ValueError, match=message):
        make()


# ----- exact resume --------------------------------------------------------------------------------------

def test_torch_resume_is_bitwise_exact(tmp_path, dataset):
    """8 steps in one go == 4 steps, stop, resume 4 more (dropout on, 2 micro-batches, cosine schedule)."""
    whole = losses(make_trainer(dataset, settings(8), tmp_path / "whole").fit())
    first = make_trainer(dataset, settings(4), tmp_path / "split").fit()
    resumed = make_trainer(dataset, settings(8), tmp_path / "split")
    state = resumed.restore(latest_checkpoint(tmp_path / "split"))
    assert state["step"] == 4 and state["data"]["position"] > 0
    second = resumed.fit()
    assert [e["step"] for e in second] == [5, 6, 7, 8]
    assert losses(first) + losses(second) == whole
    assert len(set(whole)) == len(whole)                     # the losses move: the check has teeth


def test_numpy_resume_is_bitwise_exact(tmp_path, dataset):
    def run(max_steps, run_dir, resume=False):
        state = None
        if resume:
            _, params, state = load_checkpoint(latest_checkpoint(run_dir))
        else:
            params = npgpt.model.init_params(CONFIG, seed=1)
        return numpy_train(params, CONFIG, dataset, dataset, settings(max_steps, eval_interval=100), progress=False,
                           run_log=RunLog(run_dir), resume_state=state)
    whole = losses(run(6, tmp_path / "whole"))
    split = losses(run(3, tmp_path / "split")) + losses(run(6, tmp_path / "split", resume=True))
    assert split == whole and len(set(whole)) == len(whole)


def test_interrupting_the_resumed_data_position_would_break_exactness(tmp_path, dataset):
    """The test above can fail: resuming without the data position gives other losses."""
    whole = losses(make_trainer(dataset, settings(6), tmp_path / "whole").fit())
    make_trainer(dataset, settings(3), tmp_path / "split").fit()
    resumed = make_trainer(dataset, settings(6), tmp_path / "split")
    resumed.restore(latest_checkpoint(tmp_path / "split"))
    resumed.batches.stream.position = 0                     # forget where the data order was
    assert losses(resumed.fit()) != whole[3:]


# ----- NaN and Ctrl-C -----------------------------------------------------------------------------------

def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path, dataset):
    holder = {}

    def poisoned_loss(model, batch):
        loss = next_token_loss(model, batch)
        return loss * math.nan if holder["trainer"].step + 1 == 5 else loss

    trainer = make_trainer(dataset, settings(8, checkpoint_interval=2), tmp_path, loss_fn=poisoned_loss)
    holder["trainer"] = trainer
    with pytest.raises(NonFiniteLossError, match=r"loss became nan at step 5.*step-00000004"):
        trainer.fit()
    assert [step for step, _ in list_checkpoints(tmp_path)] == [2, 4]
    _, params, state = load_checkpoint(latest_checkpoint(tmp_path))
    assert state["step"] == 4
    for name, value in trainer.model.state_dict().items():    # the NaN step changed nothing
        np.testing.assert_array_equal(params[name], value.numpy())
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2, 3, 4]


def test_numpy_nan_loss_stops_before_the_update(tmp_path, dataset, monkeypatch):
    real = npgpt.model.loss_and_grads
    calls = []

    def poisoned(*args, **kwargs):
        calls.append(1)
        loss, grads = real(*args, **kwargs)
        return (math.inf if len(calls) == 5 else loss), grads       # step 3, first micro-batch
    monkeypatch.setattr(npgpt.model, "loss_and_grads", poisoned)
    params = npgpt.model.init_params(CONFIG, seed=1)
    with pytest.raises(NonFiniteLossError, match=r"loss became inf at step 3.*step-00000002"):
        numpy_train(params, CONFIG, dataset, None, settings(6, checkpoint_interval=2), progress=False,
                    run_log=RunLog(tmp_path))
    _, saved, _ = load_checkpoint(latest_checkpoint(tmp_path))
    for name in params:
        np.testing.assert_array_equal(saved[name], params[name])


@pytest.mark.parametrize("how", ["signal", "raise-mid-step", "raise-in-eval"])
def test_ctrl_c_saves_a_checkpoint_that_resumes_exactly(tmp_path, dataset, how):
    """SIGINT is deferred to the step boundary; a KeyboardInterrupt inside a step rolls the step back; one
    during the evaluation after step 3 keeps step 3 (and logs it)."""
    whole = losses(make_trainer(dataset, settings(6), tmp_path / "whole").fit())
    calls = {True: 0, False: 0}            # loss_fn calls in train mode / eval mode

    def on_step(trainer):
        if how == "signal" and trainer.step == 3:
            os.kill(os.getpid(), signal.SIGINT)

    def loss_fn(model, batch):
        calls[model.training] += 1
        if (how == "raise-mid-step" and calls[True] == 8) or (how == "raise-in-eval" and calls[False] == 2):
            raise KeyboardInterrupt        # step 4's second micro-batch / the evaluation after step 3
        return next_token_loss(model, batch)

    trainer = make_trainer(dataset, settings(6), tmp_path / "split", on_step=on_step, loss_fn=loss_fn)
    with pytest.raises(TrainingInterrupted, match="stopped at step 3"):
        trainer.fit()
    first = read_jsonl(tmp_path / "split" / "metrics.jsonl")
    assert [e["step"] for e in first] == [1, 2, 3]
    resumed = make_trainer(dataset, settings(6), tmp_path / "split")
    resumed.restore(latest_checkpoint(tmp_path / "split"))
    assert losses(first) + losses(resumed.fit()) == whole


@pytest.mark.parametrize("how", ["between-steps", "mid-step"])
def test_numpy_ctrl_c_saves_a_checkpoint_that_resumes_exactly(tmp_path, dataset, monkeypatch, how):
    def run(max_steps, run_dir, resume=False, on_step=None):
        state = None
        if resume:
            _, params, state = load_checkpoint(latest_checkpoint(run_dir))
        else:
            params = npgpt.model.init_params(CONFIG, seed=1)
        return numpy_train(params, CONFIG, dataset, None, settings(max_steps), progress=False,
                           run_log=RunLog(run_dir), resume_state=state, on_step=on_step)
    whole = losses(run(5, tmp_path / "whole"))

    def stop_after_2(step):
        if step == 2:
            raise KeyboardInterrupt
    real, calls = npgpt.model.loss_and_grads, []

    def interrupted_at_step_3(*args, **kwargs):
        calls.append(1)
        if len(calls) == 6:                               # step 3, second micro-batch
            raise KeyboardInterrupt
        return real(*args, **kwargs)
    with monkeypatch.context() as patch:
        if how == "mid-step":
            patch.setattr(npgpt.model, "loss_and_grads", interrupted_at_step_3)
        with pytest.raises(TrainingInterrupted, match="stopped at step 2"):
            run(5, tmp_path / "split", on_step=stop_after_2 if how == "between-steps" else None)
    first = read_jsonl(tmp_path / "split" / "metrics.jsonl")
    assert losses(first) + losses(run(5, tmp_path / "split", resume=True)) == whole


# ----- the same training, other ways ---------------------------------------------------------------------

def test_gradient_accumulation_equals_one_big_batch(dataset):
    config = CONFIG.replace(drop_rate=0.0)
    big = make_trainer(dataset, settings(4, batch_size=8, grad_accum_steps=1), config=config).fit()
    accumulated = make_trainer(dataset, settings(4, batch_size=2, grad_accum_steps=4), config=config).fit()
    np.testing.assert_allclose(losses(accumulated), losses(big), rtol=1e-5)


@pytest.mark.parametrize("accum, clip", [(1, None), (2, 0.05)])
def test_numpy_and_torch_loops_see_the_same_batches_and_agree(dataset, accum, clip):
    """Also with accumulation and a clip far below the gradient norms (tests/test_accumulation.py checks the
    first such step of each loop against a hand-computed oracle; this checks 4 steps of them agree)."""
    config = CONFIG.replace(drop_rate=0.0)
    train_settings = settings(4, grad_accum_steps=accum, grad_clip=clip, eval_interval=100)
    params = npgpt.model.init_params(config, seed=3)
    trainer = make_trainer(dataset, train_settings, config=config)
    load_numpy_params(trainer.model, params)
    torch_losses = losses(trainer.fit())
    numpy_history = numpy_train(params, config, dataset, None, train_settings, progress=False)
    np.testing.assert_allclose(losses(numpy_history), torch_losses, rtol=1e-5)
    if clip is not None:
        assert min(entry["grad_norm"] for entry in numpy_history) > 2 * clip, "the clip must act at every step"


def test_bfloat16_autocast_and_compile_paths_run_on_cpu(dataset):
    config = CONFIG.replace(drop_rate=0.0)
    reference = losses(make_trainer(dataset, settings(2), config=config).fit())
    trainer = make_trainer(dataset, settings(2), config=config)
    trainer.autocast_dtype = torch.bfloat16                   # --dtype bfloat16 (what auto picks on CUDA)
    mixed = losses(trainer.fit())
    assert trainer.model.tok_emb.weight.dtype == torch.float32     # parameters stay float32
    np.testing.assert_allclose(mixed, reference, rtol=2e-2)
    assert mixed != reference                                  # bf16 really was used
    compiled = make_trainer(dataset, settings(2), config=config, compile_backend="eager")
    np.testing.assert_allclose(losses(compiled.fit()), reference, rtol=1e-6)


def test_loader_batches_resume_exactly():
    def make_loader(epoch):
        order = np.random.default_rng([3, epoch]).permutation(10)
        return [(np.array([[i]]), np.array([[i]])) for i in order]
    stream = LoaderBatches(make_loader, grad_accum_steps=3)
    steps = [stream.next_step() for _ in range(5)]              # crosses epochs (10 batches each)
    again = LoaderBatches(make_loader, grad_accum_steps=3)
    for _ in range(2):
        again.next_step()
    resumed = LoaderBatches(make_loader, grad_accum_steps=3)
    resumed.load_state_dict(again.state_dict())
    assert [[int(b[0][0, 0]) for b in s] for s in steps[2:]] == \
        [[int(b[0][0, 0]) for b in resumed.next_step()] for _ in range(3)]


def test_mfu_uses_the_6n_plus_attention_flops(dataset):
    n = 124_439_808 - 1024 * 768                               # GPT-2 124M without the position embedding
    assert flops_per_token(get_config("gpt2-small"), 1024) == 6 * n + 12 * 12 * 768 * 1024
    trainer = make_trainer(dataset, settings(2), peak_flops_per_device=1e12)
    per_token = flops_per_token(CONFIG, 8)
    assert trainer.mfu(2000.0) == pytest.approx(per_token * 2000.0 / 1e12)
    assert make_trainer(dataset, settings(2)).mfu(2000.0) is None        # CPU: no peak known, no MFU


def test_run_log_continues_from_a_step(tmp_path):
    log = RunLog(tmp_path)
    for step in range(1, 6):
        log.log({"step": step, "train_loss": 1.0 / step, "val_loss": 2.0 if step == 4 else None})
    again = RunLog(tmp_path)
    again.continue_from(3)
    again.log({"step": 4, "train_loss": 0.1})
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2, 3, 4]
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("step,epoch,train_loss") and [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3", "4"]
    assert again.plot().is_file()


def test_cuda_choices_without_a_gpu(monkeypatch):
    """What the loop picks on CUDA (checked with torch.cuda's answers faked: no GPU here)."""
    from torchgpt.train import peak_flops, resolve_autocast_dtype
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_autocast_dtype("auto", cuda) == torch.bfloat16
    assert resolve_autocast_dtype("auto", cpu) is None and resolve_autocast_dtype("float32", cuda) is None
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_autocast_dtype("auto", cuda) is None
    with pytest.raises(ValueError, match="no bfloat16 support"):
        resolve_autocast_dtype("bfloat16", cuda)
    for name, flops in [("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12),
                        ("NVIDIA A100-SXM4-40GB", 312e12), ("Some Future GPU", None)]:
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None, name=name: name)
        assert peak_flops(cuda) == flops
    assert peak_flops(cpu) is None
