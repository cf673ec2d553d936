"""The position-wise feed-forward network: C -> F = 4C -> C with a GELU between."""
from npgpt.gelu import gelu_backward, gelu_forward
from npgpt.linear import linear_layer_backward, linear_layer_forward


def feedforward_forward(x, p):
    """out = fc2(gelu(fc1(x))).

    x: (B, T, C); p: fc1.weight (F, C), fc1.bias (F), fc2.weight (C, F), fc2.bias (C) -> out: (B, T, C)
    """
    hidden, fc1_cache = linear_layer_forward(x, p, "fc1")                 # (B, T, F)
    activated, gelu_cache = gelu_forward(hidden)                          # (B, T, F)
    out, fc2_cache = linear_layer_forward(activated, p, "fc2")            # (B, T, C)
    return out, (fc1_cache, gelu_cache, fc2_cache)


def feedforward_backward(dout, cache):
    """dout: (B, T, C) -> dx: (B, T, C), grads under p's keys; the forward read in reverse."""
    fc1_cache, gelu_cache, fc2_cache = cache
    dactivated, fc2_grads = linear_layer_backward(dout, fc2_cache)
    dhidden = gelu_backward(dactivated, gelu_cache)
    dx, fc1_grads = linear_layer_backward(dhidden, fc1_cache)
    return dx, {**fc1_grads, **fc2_grads}
