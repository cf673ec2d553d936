"""The position-wise feed-forward network: C -> F = 4C -> C with a GELU between."""
from typing import NamedTuple

from npgpt.gelu import GeluCache, gelu_backward, gelu_forward, gelu_infer
from npgpt.linear import LinearLayerCache, linear_layer_backward, linear_layer_forward


class FeedForwardCache(NamedTuple):
    fc1: LinearLayerCache            # input x (B, T, C)
    gelu: GeluCache                  # hidden (B, T, F) and its tanh
    fc2: LinearLayerCache            # input gelu(hidden) (B, T, F)


def feedforward_forward(x, p):
    """out = fc2(gelu(fc1(x))).

    x: (B, T, C); p: fc1.weight (F, C), fc1.bias (F), fc2.weight (C, F), fc2.bias (C)
    -> out: (B, T, C), FeedForwardCache(fc1, gelu, fc2)
    """
    hidden, fc1_cache = linear_layer_forward(x, p, "fc1")                 # (B, T, F)
    activated, gelu_cache = gelu_forward(hidden)                          # (B, T, F)
    out, fc2_cache = linear_layer_forward(activated, p, "fc2")            # (B, T, C)
    return out, FeedForwardCache(fc1=fc1_cache, gelu=gelu_cache, fc2=fc2_cache)


def feedforward_infer(x, p):
    """feedforward_forward's output without its cache (inference): GELU runs in place in fc1's output, so
    the block holds one (B, T, F) array instead of three.   x: (B, T, C) -> out: (B, T, C), bit-equal."""
    hidden = linear_layer_forward(x, p, "fc1")[0]                         # (B, T, F), this call's own array
    return linear_layer_forward(gelu_infer(hidden), p, "fc2")[0]          # (B, T, C)


def feedforward_backward(dout, cache):
    """dout: (B, T, C) -> dx: (B, T, C), grads under p's keys; the forward read in reverse."""
    dactivated, fc2_grads = linear_layer_backward(dout, cache.fc2)
    dhidden = gelu_backward(dactivated, cache.gelu)
    dx, fc1_grads = linear_layer_backward(dhidden, cache.fc1)
    return dx, {**fc1_grads, **fc2_grads}
