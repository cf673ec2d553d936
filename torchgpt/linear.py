"""Linear layer y = x W^T + b, W stored (out, in): nn.Linear, with a faster product for decoding on a CPU.

Twin of npgpt/linear.py. Every model here builds its linear layers as torchgpt.linear.Linear, a subclass of
nn.Linear with the same keys (`.weight`, `.bias`), so LoRA can wrap them without changing parameter names.

The one difference from nn.Linear is the product of a few rows (a decoding step: one new token per
sequence) with a weight stored transposed in memory (torchgpt.generate.decoding_layout), on a CPU, without
autograd. Such a GEMV only streams the weight from memory, and MKL computes it on one thread (measured on
this project's 2-core AMD EPYC: 11-14 GB/s, the same with one thread or two). Split along the input axis

    x W^T = x[:, :in/2] W^T[:in/2] + x[:, in/2:] W^T[in/2:]      W^T: (in, out), each half a contiguous block

and handed to one batched product (torch.bmm, batch of 2), it runs on both threads: 20-31 GB/s, as fast as
NumPy's OpenBLAS GEMV. The two partial sums are added at the end, so the result differs from F.linear's only
by float rounding. Every other call is F.linear (benchmarks/results/bench_smollm2_2threads.md shows the effect
on SmolLM2 decoding).
"""
import torch
import torch.nn.functional as F
from torch import nn

SPLIT_K_MAX_ROWS = 8     # the split product is for decoding's GEMVs: a few rows; larger products are GEMMs


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """out = x @ weight.T + bias.   x: (..., in); weight: (out, in); bias: (out,) or None -> (..., out)."""
    if splits_input_axis(x, weight):
        return split_k_linear(x, weight, bias)
    return F.linear(x, weight, bias)


def splits_input_axis(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Does `linear` take the split product: a CPU GEMV of at most SPLIT_K_MAX_ROWS rows, the weight stored
    as a contiguous (in, out) matrix, an even input width, and no gradient to record?"""
    return (x.device.type == "cpu" and weight.dim() == 2 and weight.shape[1] % 2 == 0
            and x.numel() <= SPLIT_K_MAX_ROWS * weight.shape[1] and weight.t().is_contiguous()
            and x.dtype == weight.dtype
            and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)))


def split_k_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """linear(x, weight, bias) as two half-width products in one torch.bmm (the module docstring says why).

    x: (..., in); weight: (out, in) stored transposed (weight.t() contiguous); in even -> (..., out)."""
    n_out, n_in = weight.shape
    half = n_in // 2
    rows = x.reshape(-1, 2, half).transpose(0, 1)                 # (2, N, in/2): the two halves of each row
    halves = weight.t().view(2, half, n_out)                      # (2, in/2, out): W^T's two row blocks, no copy
    out = torch.bmm(rows, halves).sum(0)                          # (2, N, out) -> (N, out)
    if bias is not None:
        out += bias
    return out.view(*x.shape[:-1], n_out)


class Linear(nn.Linear):
    """nn.Linear (same parameters, init and keys) whose forward is `linear` above."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


# --------------------------------------------------------------------------------------------------------
# Layers that read the same input, stored side by side (torchgpt.generate.decoding_layout)
# --------------------------------------------------------------------------------------------------------
def side_by_side(weights) -> torch.Tensor | None:
    """The (in, out_1 + ... + out_n) matrix whose column blocks are the weights' transposes, when the weights
    (out_i, in) are stored that way (column blocks of one contiguous tensor, in order), else None."""
    first = weights[0]
    n_in, total = first.shape[1], sum(w.shape[0] for w in weights)
    offset = first.storage_offset()
    for w in weights:
        if (w.dim() != 2 or w.shape[1] != n_in or w.stride() != (1, total) or w.storage_offset() != offset
                or w.untyped_storage().data_ptr() != first.untyped_storage().data_ptr()
                or w.dtype != first.dtype):
            return None
        offset += w.shape[0]
    return first.t().as_strided((n_in, total), (total, 1))


def linear_together(x: torch.Tensor, layers) -> list[torch.Tensor]:
    """[layer(x) for layer in layers], by one product when the layers' weights are stored side by side
    (decoding_layout) and no gradient is recorded: one read of their weights, and one larger GEMV instead of
    several small ones (in decoding: ~100 us less per SmolLM2 block than three separate q, k, v products).
    Layers that are not plain Linear (a LoRA adapter) or not stored so are called one by one."""
    weights = [layer.weight for layer in layers]
    together = None
    if all(type(layer) is Linear for layer in layers) and not (
            torch.is_grad_enabled() and (x.requires_grad or any(w.requires_grad for w in weights))):
        together = side_by_side(weights)
    if together is None:
        return [layer(x) for layer in layers]
    outs = linear(x, together.t()).split([w.shape[0] for w in weights], dim=-1)
    return [out if layer.bias is None else out + layer.bias for out, layer in zip(outs, layers)]
