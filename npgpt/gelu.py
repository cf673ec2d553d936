"""GELU, tanh approximation, as GPT-2 uses it."""
import math

import numpy as np

# Python floats, not NumPy float64 scalars: they keep float32 arrays float32 (NumPy 2 promotion).
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
GELU_CUBIC = 0.044715


def gelu_forward(x):
    """out = 0.5 x (1 + tanh(u)),  u = sqrt(2/pi) (x + 0.044715 x^3).   x: any shape -> out: same."""
    u = x * x                                        # x*x*x, not x**3: NumPy fast-paths only **2
    u *= GELU_CUBIC
    u += 1.0
    u *= x
    u *= SQRT_2_OVER_PI                              # u = sqrt(2/pi) * (x + 0.044715 x^3)
    tanh_u = np.tanh(u, out=u)
    out = tanh_u + 1.0
    out *= x
    out *= 0.5
    return out, (x, tanh_u)


def gelu_backward(dout, cache):
    """dx = dout * [0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) sqrt(2/pi) (1 + 3 * 0.044715 x^2)].

    dout: same shape as x -> dx: same shape.
    """
    x, tanh_u = cache
    du_dx = x * x
    du_dx *= 3.0 * GELU_CUBIC
    du_dx += 1.0
    du_dx *= SQRT_2_OVER_PI                          # du/dx
    sech2 = tanh_u * tanh_u
    np.subtract(1.0, sech2, out=sech2)               # 1 - tanh^2 u
    sech2 *= x
    sech2 *= du_dx                                   # x (1 - tanh^2 u) du/dx
    sech2 += tanh_u
    sech2 += 1.0
    sech2 *= 0.5                                     # d gelu / dx
    dx = sech2
    dx *= dout
    return dx
