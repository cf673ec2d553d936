"""torchgpt: the PyTorch twin of npgpt. Same file names, same component names, same parameter names.

    from torchgpt import build_model, pick_device
    model = build_model(get_config("tiny"), seed=0).to(pick_device("auto"))     # GPT-2: a GPTModel

torchgpt.data builds DataLoaders that yield gptcore.data's batches. See torchgpt/README.md; parity_tests/
proves each component equal to its NumPy twin.
"""
from __future__ import annotations

import torch

from torchgpt.model import GPTModel, build_model, count_params, init_weights, load_numpy_params, to_numpy_params


def pick_device(name: str = "auto") -> torch.device:
    """"auto" -> cuda if available, else mps, else cpu; "cpu" | "cuda" | "cuda:N" | "mps" -> that device,
    or ValueError when it is not available here."""
    name = str(name).lower()
    cuda_ok = torch.cuda.is_available()
    mps_ok = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    if name == "auto":
        return torch.device("cuda" if cuda_ok else "mps" if mps_ok else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not cuda_ok:
            raise ValueError(f"device {name!r} requested but CUDA is not available on this machine; "
                             f"use --device cpu or auto")
        device = torch.device(name)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r} requested but only {torch.cuda.device_count()} CUDA device(s) "
                             f"exist; pick cuda:0..cuda:{torch.cuda.device_count() - 1}")
        return device
    if name == "mps":
        if not mps_ok:
            raise ValueError("device 'mps' requested but Apple MPS is not available; use --device cpu or auto")
        return torch.device("mps")
    raise ValueError(f"unknown device {name!r}; choose auto, cpu, cuda, cuda:N or mps")


__all__ = ["GPTModel", "build_model", "count_params", "init_weights", "load_numpy_params", "to_numpy_params",
           "pick_device"]
