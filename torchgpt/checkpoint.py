"""Our checkpoint format from PyTorch (gptcore.formats.checkpoint): a GPTModel and its AdamW, saved and resumed.

    save_training_checkpoint("runs/a/ckpt", model, optimizer, training_state={"step": 500, "rng": {...}})
    model, state = load_training_checkpoint("runs/a/ckpt", model, optimizer)      # resume
    model = load_model(path, device="cuda")       # any weights: our checkpoint, OpenAI folder, HF safetensors

The files are exactly gptcore.formats.checkpoint's (safetensors + JSON, written atomically, nothing pickled), so a
checkpoint saved here loads in npgpt and one saved by npgpt loads here.

The optimizer is stored in the backend-neutral "optimizer" entry of the training state, the one
npgpt.optim.AdamW.state_dict() / load_state_dict() read and write:

    {"t": steps taken, "m": {name: exp_avg}, "v": {name: exp_avg_sq},
     "lr": float, "betas": [b1, b2], "eps": float, "weight_decay": float}

keyed by canonical parameter names, a tied weight once under its first name (tok_emb.weight), as
model.named_parameters() and npgpt's unique_arrays() list it. torch.optim.AdamW keeps the same two moments
per parameter (exp_avg = m, exp_avg_sq = v) and a per-parameter "step" (= t), so the conversion is a
renaming. lr/betas/eps/weight_decay are saved for people and tools; loading restores only the moments and
t, and the optimizer keeps the hyperparameters it was built with, as npgpt's AdamW.load_state_dict does.

Everything else in the training state (step, scheduler, RNG states, ...) passes through untouched; torch
tensors in it are stored as NumPy arrays and come back as NumPy arrays (torch.from_numpy(...) restores them,
e.g. torch.set_rng_state(torch.from_numpy(state["rng"]["torch_cpu"]))).
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np
import torch

from gptcore.formats.checkpoint import load_checkpoint, save_checkpoint
from gptcore.formats.weights import load_weights
import torchgpt.gpt2
import torchgpt.llama
from torchgpt import pick_device
from torchgpt.model import GPTModel, build_model, load_numpy_params, to_numpy_params

OPTIMIZER_KEY = "optimizer"


# ---------------------------------------------------------------------------------------------------
# torch.optim.AdamW <-> the canonical "optimizer" entry
# ---------------------------------------------------------------------------------------------------

def _named_parameters(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """Canonical name -> Parameter, a tied Parameter once under its first name (named_parameters dedups)."""
    return dict(model.named_parameters())


def _check_adamw(optimizer: torch.optim.Optimizer):
    if not isinstance(optimizer, torch.optim.Adam):   # AdamW subclasses Adam in torch >= 2.2
        raise TypeError(f"only torch.optim.AdamW (or Adam) state converts to the canonical optimizer state, "
                        f"got {type(optimizer).__name__}")
    if any(group.get("amsgrad") for group in optimizer.param_groups):
        raise ValueError("AdamW with amsgrad=True keeps a third moment (max_exp_avg_sq) that the canonical "
                         "optimizer state does not hold; build the optimizer with amsgrad=False")


def optimizer_state_to_canonical(optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> dict:
    """The canonical optimizer entry (NumPy moments by parameter name) of a torch AdamW over `model`.

    Parameters that have no state yet (never stepped) are left out of m and v, as in npgpt's AdamW, which
    creates a moment at a parameter's first update.
    """
    _check_adamw(optimizer)
    params = _named_parameters(model)
    in_model = {id(param) for param in params.values()}
    for group in optimizer.param_groups:
        for param in group["params"]:
            if id(param) not in in_model:
                raise ValueError(f"the optimizer holds a parameter of shape {tuple(param.shape)} that is not in "
                                 f"the model; save the optimizer together with the model it was built for")
    m, v, steps = {}, {}, set()
    for name, param in params.items():       # the model's (canonical) order, whatever the param groups are
        state = optimizer.state.get(param)
        if not state:
            continue
        m[name] = _to_numpy(state["exp_avg"])
        v[name] = _to_numpy(state["exp_avg_sq"])
        steps.add(int(state["step"]))
    if len(steps) > 1:
        raise ValueError(f"the optimizer's parameters were stepped different numbers of times {sorted(steps)}; "
                         f"the canonical state has one step count t (every parameter is updated at every step)")
    first = optimizer.param_groups[0]
    return {"t": steps.pop() if steps else 0, "m": m, "v": v, "lr": float(first["lr"]),
            "betas": [float(b) for b in first["betas"]], "eps": float(first["eps"]),
            "weight_decay": max(float(group["weight_decay"]) for group in optimizer.param_groups)}


def load_canonical_optimizer_state(optimizer: torch.optim.Optimizer, model: torch.nn.Module, state: dict) -> None:
    """Put a canonical optimizer entry (from either backend) into a torch AdamW built over `model`.

    Moments are cast to each parameter's dtype and device; the step counter becomes t for every
    parameter with moments. The optimizer's hyperparameters (lr, betas, eps, weight decay) are kept.
    """
    _check_adamw(optimizer)
    params = _named_parameters(model)
    missing = [key for key in ("t", "m", "v") if key not in state]
    if missing:
        raise ValueError(f"the optimizer state lacks {missing}; it should be the 'optimizer' entry written by "
                         f"save_training_checkpoint or npgpt.optim.AdamW.state_dict()")
    unknown = sorted(set(state["m"]) - set(params))
    if unknown or set(state["m"]) != set(state["v"]):
        raise ValueError(f"the optimizer state does not match the model: moments for unknown parameters "
                         f"{unknown[:5]} (or m and v name different parameters); build the model with the "
                         f"config the checkpoint was saved with")
    # torch's own state_dict format: per-parameter state keyed by the parameter's index over param_groups.
    # Optimizer.load_state_dict then casts each moment to its parameter's dtype and device, and keeps
    # "step" as torch keeps it (a float32 CPU scalar unless capturable/fused).
    torch_state = optimizer.state_dict()
    index_of = {}
    for group, saved_group in zip(optimizer.param_groups, torch_state["param_groups"]):
        index_of.update({id(param): index for param, index in zip(group["params"], saved_group["params"])})
    new_state = {}
    for name, moment in state["m"].items():
        param = params[name]
        if id(param) not in index_of:
            raise ValueError(f"the optimizer state has moments for {name}, which this optimizer does not update; "
                             f"build the optimizer over all the model's parameters (torchgpt.optim.make_adamw)")
        for key, array in (("m", moment), ("v", state["v"][name])):
            if tuple(np.shape(array)) != tuple(param.shape):
                raise ValueError(f"optimizer moment {key}[{name}] has shape {tuple(np.shape(array))}, the parameter "
                                 f"has {tuple(param.shape)}; the checkpoint was saved for another config")
        new_state[index_of[id(param)]] = {
            "step": torch.tensor(float(state["t"])),
            "exp_avg": torch.from_numpy(np.ascontiguousarray(moment)),
            "exp_avg_sq": torch.from_numpy(np.ascontiguousarray(state["v"][name])),
        }
    torch_state["state"] = new_state
    optimizer.load_state_dict(torch_state)


def _to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A CPU NumPy copy; bfloat16 (which NumPy lacks) widened exactly to float32."""
    tensor = tensor.detach().cpu()
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.float()
    return tensor.numpy().copy()


def _tensors_to_numpy(tree):
    """The training state with every torch tensor replaced by a NumPy array (the checkpoint stores NumPy)."""
    if isinstance(tree, torch.Tensor):
        return _to_numpy(tree)
    if isinstance(tree, dict):
        return {key: _tensors_to_numpy(value) for key, value in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [_tensors_to_numpy(value) for value in tree]
    return tree


# ---------------------------------------------------------------------------------------------------
# save / load
# ---------------------------------------------------------------------------------------------------

def save_training_checkpoint(path: str | os.PathLike, model: GPTModel, optimizer: torch.optim.Optimizer | None = None,
                             *, training_state: dict | None = None, metadata: dict | None = None) -> Path:
    """Write the model (+ optimizer + training state) as one of our checkpoints at `path`, atomically.

    training_state: the caller's pass-through dict (step, scheduler, rng, ...; torch tensors allowed).
    With an optimizer, its state goes into training_state["optimizer"] (so that key must not be set).
    metadata: JSON-able notes for people (run name, data, git commit, ...). Returns the path.
    """
    state = None
    if training_state is not None or optimizer is not None:
        state = _tensors_to_numpy(dict(training_state or {}))
        if optimizer is not None:
            if OPTIMIZER_KEY in state:
                raise ValueError(f"training_state already has an {OPTIMIZER_KEY!r} entry and an optimizer was "
                                 f"given; pass one or the other")
            state[OPTIMIZER_KEY] = optimizer_state_to_canonical(optimizer, model)
    return save_checkpoint(path, to_numpy_params(model), model.config, training_state=state, metadata=metadata)


def load_training_checkpoint(path: str | os.PathLike, model: GPTModel | None = None,
                             optimizer: torch.optim.Optimizer | None = None, *, device: str | torch.device = "cpu",
                             use_sdpa: bool = False) -> tuple[GPTModel, dict | None]:
    """(model, training_state or None) from one of our checkpoints (saved by either backend).

    model: a GPTModel to fill in place (its dtype and device are kept; its config must match the
    checkpoint's shapes); None builds one from the checkpoint's config on `device` ("cpu", "cuda", "auto",
    ...: torchgpt.pick_device), in the saved dtype, without a random initialization first (see
    _model_holding), in training mode.
    optimizer: a torch AdamW over `model` that gets the saved moments and step (needs `model`).
    The returned training state is the dict that was saved (NumPy arrays where tensors were), its
    "optimizer" entry included.
    """
    if optimizer is not None and model is None:
        raise ValueError("an optimizer was given without its model; build the model, then the optimizer over "
                         "model.parameters(), and pass both")
    config, params, state = load_checkpoint(path)
    if model is None:
        model = _model_holding(config, params, device, use_sdpa)
    else:
        load_numpy_params(model, params)
    del params
    if optimizer is not None:
        if state is None or OPTIMIZER_KEY not in state:
            raise ValueError(f"{path} holds no optimizer state (it was saved without an optimizer); resume "
                             f"with a fresh optimizer, or leave optimizer out")
        load_canonical_optimizer_state(optimizer, model, state[OPTIMIZER_KEY])
    return model, state


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu", *, use_sdpa: bool = False) -> GPTModel:
    """A GPTModel in eval mode on `device` (see torchgpt.pick_device) from any weights that
    gptcore.formats.weights.load_weights reads: one of our checkpoints, an OpenAI TF folder, a Hugging Face folder
    or .safetensors file."""
    config, params = load_weights(path)
    return _model_holding(config, params, device, use_sdpa).eval()


@contextlib.contextmanager
def _no_random_init():
    """Within the block, building a GPTModel allocates its parameters without filling them.

    The layers' own reset_parameters (torch.nn.init.*) and the spec's init_weights (the name each model calls,
    in torchgpt.gpt2 and torchgpt.llama) become no-ops, so the parameters stay uninitialized torch.empty memory, which the OS does
    not even back with pages until written. (Building on the meta device instead would avoid the allocation
    too, but torch runs meta ops through its Python decompositions, whose first use imports torch._dynamo:
    seconds.) Not thread-safe: it swaps module attributes for the duration.
    """
    swapped = {(torch.nn.init, name): getattr(torch.nn.init, name)
               for name in ("normal_", "uniform_", "kaiming_uniform_", "zeros_", "ones_")}
    for architecture in (torchgpt.gpt2, torchgpt.llama):      # each model module calls init_weights by name
        swapped[(architecture, "init_weights")] = architecture.init_weights
    try:
        for (module, name) in swapped:
            setattr(module, name, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for (module, name), original in swapped.items():
            setattr(module, name, original)


def _model_holding(config, params: dict, device, use_sdpa: bool) -> GPTModel:
    """A GPTModel whose parameters ARE the loaded arrays: no random initialization, no second copy.

    Building GPTModel normally would draw random weights twice (the layers' own init, then GPT-2's) and
    hold them next to the loaded arrays: ~2.7x the model in memory, seconds of work thrown away. Instead
    the model is built without initialization (_no_random_init), load_state_dict(assign=True) makes
    tensors that share the NumPy arrays' memory its parameters (the unfilled ones are freed), and the tie
    is restored (two names, one Parameter). Then the model moves to `device` (a no-op for the CPU).
    """
    with _no_random_init():
        model = build_model(config, use_sdpa=use_sdpa)      # config.arch's model
    expected = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    wrong = {name for name in expected if tuple(np.shape(params.get(name, ()))) != expected[name]}
    if wrong or set(params) != set(expected):
        raise ValueError(f"the loaded parameters do not match the config: {sorted(wrong)[:5]} missing or "
                         f"misshapen, {sorted(set(params) - set(expected))[:5]} unexpected")
    model.load_state_dict({name: torch.from_numpy(np.ascontiguousarray(value)) for name, value in params.items()},
                          assign=True)
    if config.tie_weights:
        model.out_head.weight = model.tok_emb.weight
    return model.to(pick_device(str(device)))
