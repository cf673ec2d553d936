"""The position-wise feed-forward network: C -> F = 4C -> C with a GELU between."""
from npgpt.gelu import gelu_backward, gelu_forward
from npgpt.linear import linear_backward, linear_forward


def feedforward_forward(x, p):
    """out = fc2(gelu(fc1(x))).

    x: (B, T, C); p: fc1.weight (F, C), fc1.bias (F), fc2.weight (C, F), fc2.bias (C) -> out: (B, T, C)
    """
    hidden, fc1_cache = linear_forward(x, p["fc1.weight"], p["fc1.bias"])      # (B, T, F)
    activated, gelu_cache = gelu_forward(hidden)                               # (B, T, F)
    out, fc2_cache = linear_forward(activated, p["fc2.weight"], p["fc2.bias"])  # (B, T, C)
    return out, (fc1_cache, gelu_cache, fc2_cache)


def feedforward_backward(dout, cache):
    """dout: (B, T, C) -> dx: (B, T, C), grads under p's keys; the forward read in reverse."""
    fc1_cache, gelu_cache, fc2_cache = cache
    dactivated, dW2, db2 = linear_backward(dout, fc2_cache)
    dhidden = gelu_backward(dactivated, gelu_cache)
    dx, dW1, db1 = linear_backward(dhidden, fc1_cache)
    return dx, {"fc1.weight": dW1, "fc1.bias": db1, "fc2.weight": dW2, "fc2.bias": db2}
