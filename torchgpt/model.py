"""The model seam of torchgpt, architecture-neutral (twin of npgpt/model.py's API):

    model = build_model(config, seed=0)        the torch model of config.arch (GPT-2: torchgpt.gpt2.GPTModel, Llama: torchgpt.llama.LlamaModel)
    load_numpy_params(model, params)           a NumPy dict under the canonical names -> into the model
    params = to_numpy_params(model)            and back (a tied weight stays one array)
    init_weights(model, seed), count_params(model), check_token_ids(idx, config)

Each architecture's composition lives in its own file (gpt2.py, llama.py), which gets its shared pieces from below
(init_weights: torchgpt/params.py, check_token_ids: torchgpt/embedding.py); they are re-exported here so this
module reads as the one API. Adding an architecture = its model file and one entry in ARCHITECTURES.
"""
from __future__ import annotations

from torch import nn

from gptcore.config import GPTConfig
from torchgpt.embedding import check_token_ids
from torchgpt.gpt2 import GPTModel
from torchgpt.llama import LlamaModel
from torchgpt.params import count_params, init_weights, load_numpy_params, to_numpy_params

# config.arch -> the nn.Module class that composes it (twin of npgpt.model.ARCHITECTURES; keys as gptcore.arch.SPECS)
ARCHITECTURES = {"gpt2": GPTModel, "llama": LlamaModel}

__all__ = ["ARCHITECTURES", "GPTModel", "LlamaModel", "build_model", "check_token_ids", "count_params", "init_weights",
           "load_numpy_params", "to_numpy_params"]


def build_model(config: GPTConfig, **kwargs) -> nn.Module:
    """The torch model of config.arch, built with kwargs (GPT-2: use_sdpa=False, seed=None)."""
    if config.arch not in ARCHITECTURES:
        raise ValueError(f"torchgpt has no model for architecture {config.arch!r}; it knows {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[config.arch](config, **kwargs)
