"""AdamW over k steps: npgpt.optim.AdamW vs torch.optim.AdamW, parameters AND moment estimates after every step.

Weight decay on: decay on every parameter (npgpt decay_filter=None vs one torch param group), and decay on
matrices only (npgpt's default decay_matrices_only vs torchgpt.optim.make_adamw's two param groups, on a
GPTModel with tied or untied head, where the tied weight must be updated once).
"""
import numpy as np
import torch
from hypothesis import example, given
from hypothesis import strategies as st

import npgpt.model as npmodel
from gptcore.config import GPTConfig
from npgpt.optim import AdamW, decay_matrices_only
from gptcore.params import unique_arrays
from torchgpt.model import GPTModel, load_numpy_params
from torchgpt.optim import make_adamw, set_lr
from parity_tests.conftest import (Values, assert_close, budget, dtypes, make_array, nudged_params, record_example, to_torch,
                                   torch_with_reference, values)

shapes = st.lists(st.lists(st.integers(1, 6), min_size=1, max_size=3).map(tuple), min_size=1, max_size=4)
settings_ = st.fixed_dictionaries({
    "lrs": st.lists(st.sampled_from([1e-4, 1e-3, 3e-2, 0.5]), min_size=1, max_size=6),   # one per step: k = len
    "betas": st.sampled_from([(0.9, 0.999), (0.9, 0.95), (0.5, 0.6), (0.0, 0.99)]),
    "eps": st.sampled_from([1e-8, 1e-3]),
    "weight_decay": st.sampled_from([0.1, 0.01, 1.0]),
})


def gradient_steps(recipe, named_shapes, k, dtype):
    """k dicts {name: gradient}: values from the recipe (magnitudes 1e-3..1e3, or exact ties incl. zeros)."""
    return [{name: make_array(recipe, shape, dtype, salt=10 * step + i) for i, (name, shape) in enumerate(named_shapes)}
            for step in range(k)]


def run_adamw(params, grads_per_step, settings, *, decay_filter, make_torch_optimizer, dtype, model=None):
    """Steps both optimizers; after every step compares each parameter, exp_avg (m) and exp_avg_sq (v)."""
    ours = AdamW(lr=settings["lrs"][0], betas=settings["betas"], eps=settings["eps"],
                 weight_decay=settings["weight_decay"], decay_filter=decay_filter)
    unique = [name for name, _ in unique_arrays(params)]

    def run(tdtype):
        tensors = make_torch_optimizer(tdtype)
        optimizer, named = tensors
        history = []
        for step, lr in enumerate(settings["lrs"]):
            for name in unique:
                named[name].grad = to_torch(grads_per_step[step][name]).to(tdtype)
            set_lr(optimizer, lr)
            optimizer.step()
            state = {}
            for name in unique:
                state[f"{name}"] = named[name].detach().clone()
                state[f"m {name}"] = optimizer.state[named[name]]["exp_avg"].clone()
                state[f"v {name}"] = optimizer.state[named[name]]["exp_avg_sq"].clone()
            history.append(state)
        return history

    expected, reference = torch_with_reference(run, dtype)
    for step, lr in enumerate(settings["lrs"]):
        ours.step(params, grads_per_step[step], lr=lr)
        for name in unique:
            for key, value in ((name, params[name]), (f"m {name}", ours.m[name]), (f"v {name}", ours.v[name])):
                assert value.dtype == dtype
                assert_close(value, expected[step][key], name=f"step {step + 1} {key}",
                             reference=None if reference is None else reference[step][key])
    return params


def check_adamw_all_decayed(named_shapes, settings, recipe, dtype):
    params = {name: make_array(recipe, shape, dtype, salt=1000 + i) for i, (name, shape) in enumerate(named_shapes)}
    grads = gradient_steps(recipe, named_shapes, len(settings["lrs"]), dtype)

    def torch_optimizer(tdtype):
        named = {name: to_torch(value).to(tdtype).requires_grad_() for name, value in params.items()}
        optimizer = torch.optim.AdamW(list(named.values()), lr=settings["lrs"][0], betas=settings["betas"],
                                      eps=settings["eps"], weight_decay=settings["weight_decay"])
        return optimizer, named

    return run_adamw(params, grads, settings, decay_filter=None, make_torch_optimizer=torch_optimizer, dtype=dtype)


def check_adamw_matrices_only(config, settings, recipe, dtype):
    params = npmodel.init_params(config, seed=recipe.seed % 1000, dtype=dtype)
    named_shapes = [(name, value.shape) for name, value in unique_arrays(params)]
    grads = gradient_steps(recipe, named_shapes, len(settings["lrs"]), dtype)
    for step_grads in grads:                           # a tied gradient: one array under both names
        if config.tie_weights:
            step_grads["out_head.weight"] = step_grads["tok_emb.weight"]

    def torch_optimizer(tdtype):
        model = load_numpy_params(GPTModel(config, seed=0).to(tdtype), nudged_params(params))
        optimizer = make_adamw(model, lr=settings["lrs"][0], weight_decay=settings["weight_decay"],
                               betas=settings["betas"], eps=settings["eps"])
        return optimizer, {name: model.get_parameter(name) for name in params}

    run_adamw(params, grads, settings, decay_filter=decay_matrices_only, make_torch_optimizer=torch_optimizer,
              dtype=dtype)
    if config.tie_weights:
        assert params["out_head.weight"] is params["tok_emb.weight"]


@budget(30)
@given(shape_list=shapes, settings=settings_, recipe=values(), dtype=dtypes)
# beta1 = 0 after a large gradient: m + (g - m) lost g's low bits (3e-5 of m in float32) where torch's lerp
# gives g exactly; npgpt's m update now follows torch's lerp (npgpt/optim.py)
@example(shape_list=[(6, 2, 1), (1,), (4,), (1,)], settings={"lrs": [1e-3, 3e-2, 3e-2, 1e-4, 1e-4, 3e-2],
         "betas": (0.0, 0.99), "eps": 1e-3, "weight_decay": 0.01},
         recipe=Values(seed=2019045585, scale=1000.0, ties=False), dtype=np.float32)
def test_adamw_every_parameter_decayed(shape_list, settings, recipe, dtype):
    record_example()
    check_adamw_all_decayed([(f"p{i}", shape) for i, shape in enumerate(shape_list)], settings, recipe, dtype)


@budget(25, thorough=160)
@given(tie=st.booleans(), qkv_bias=st.booleans(), settings=settings_, recipe=values(scales=(1e-3, 1.0, 10.0)),
       dtype=dtypes)
def test_adamw_matrices_only_vs_make_adamw(tie, qkv_bias, settings, recipe, dtype):
    record_example()
    config = GPTConfig(vocab_size=7, context_length=4, emb_dim=8, n_heads=2, n_layers=1, qkv_bias=qkv_bias,
                       tie_weights=tie)
    check_adamw_matrices_only(config, settings, recipe, dtype)
