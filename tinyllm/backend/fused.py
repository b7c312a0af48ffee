"""The hot elementwise chains of a training step, each written once as a plain function.

Why fuse: on a GPU, ``a * (c + c * k * (a * a))`` runs as five kernels. Each launch costs
a few microseconds of CPU time, and each kernel reads its inputs from GPU memory and writes
a full-size temporary back, which the next kernel reads again. For elementwise work the
arithmetic is nearly free; the memory round trips and the launches are the cost. A fused
kernel reads ``a`` once, keeps every intermediate in registers and writes only the result:
GELU's forward goes from eight kernels and seven temporaries to one kernel.

Each chain below takes the array namespace ``xp`` first, then arrays and Python numbers,
and is built from ufuncs, arithmetic and ``xp.where`` alone: no Python branch on a value,
no reductions, no indexing - exactly what ``cupy.fuse`` can compile. The backend decides
how a chain runs (``Backend.fused``): NumPy and JAX call the plain function (``jax.jit``
fuses the whole step by itself), CuPy compiles it with ``cupy.fuse`` into one kernel. The
reductions around a chain (row sums, row maxima) stay reductions. A chain that returns a
tuple returns several arrays from one kernel.

``Backend.update_in_place`` runs a chain whose results overwrite its first arguments, the
shape of an optimizer step: on CuPy that is an ``ElementwiseKernel`` with in/out
parameters (``cupy_backend.py``), which updates AdamW's moments and the update itself in
one pass over the optimizer's flat buffers.

>>> import numpy as np
>>> y, s = gelu_tanh(np, np.array([-1.0, 0.0, 2.0], np.float32))
>>> y.round(4), y.dtype
(array([-0.1588,  0.    ,  1.9546], dtype=float32), dtype('float32'))
"""

import math

SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)  # c in GPT-2's GELU
CUBIC = 0.044715  # k in GPT-2's GELU


# --- activations ---------------------------------------------------------------------------
def gelu_tanh(xp, a):
    """GELU's tanh form ``a * s`` with ``s = (1 + tanh(c (a + k a^3))) / 2``; returns
    ``(a * s, s)``: backward keeps ``s``."""
    c, k = SQRT_2_OVER_PI, CUBIC
    u = a * (c + c * k * (a * a))  # c (a + k a^3); not a**3: float32 pow is slow
    s = 0.5 + 0.5 * xp.tanh(u)
    return a * s, s


def gelu_tanh_backward(xp, grad, a, s):
    """``grad * GELU'(a)``; since 1 - tanh(u)^2 = 4 s (1 - s), GELU' = s + 2 s (1 - s) a u'."""
    c, k = SQRT_2_OVER_PI, CUBIC
    two_a_du = a * (2 * c + 6 * c * k * (a * a))  # 2 a u' = 2 a c (1 + 3 k a^2)
    return grad * (s + s * (1 - s) * two_a_du)


def silu(xp, a):
    """``(a * sigmoid(a), sigmoid(a))``, the sigmoid through tanh so that nothing overflows."""
    sig = 0.5 * (1 + xp.tanh(0.5 * a))
    return a * sig, sig


def silu_backward(xp, grad, a, sig):
    """``grad * SiLU'(a)``, with SiLU' = sig (1 + a (1 - sig))."""
    return grad * sig * (1 + a * (1 - sig))


def swiglu(xp, gate, up):
    """SwiGLU's product ``silu(gate) * up``; returns it and ``sigmoid(gate)``."""
    silu_gate, sig = silu(xp, gate)
    return silu_gate * up, sig


def swiglu_backward(xp, grad, gate, up, sig):
    """The gradients ``(d_gate, d_up)`` of ``silu(gate) * up``."""
    grad_up = grad * (gate * sig)
    grad_gate = silu_backward(xp, grad * up, gate, sig)
    return grad_gate, grad_up


# --- normalisation tails (the row sums stay outside, as reductions) -------------------------
def inverse_rms(xp, sum_sq, n, eps):
    """``1 / sqrt(sum_sq / n + eps)``: a row's 1/rms from its sum of squares (RMSNorm), or
    1/std from its centred sum of squares (LayerNorm)."""
    return 1 / xp.sqrt(sum_sq / n + eps)


def centre(xp, x, row_sum, n):
    """``x - row_sum / n``: LayerNorm's centring, from the row sums."""
    return x - row_sum / n


def norm_scale(xp, x, r, weight):
    """``(xhat, xhat * weight)`` with ``xhat = x * r``: RMSNorm's tail."""
    xhat = x * r
    return xhat, xhat * weight


def norm_scale_shift(xp, x, r, weight, bias):
    """``(xhat, xhat * weight + bias)`` with ``xhat = x * r``: LayerNorm's tail."""
    xhat = x * r
    return xhat, xhat * weight + bias


def norm_backward(xp, g, xhat, r, g_sum, g_dot_xhat, n):
    """``r * (g - mean(g) - xhat * mean(g * xhat))`` from the row sums of ``g`` and
    ``g * xhat``; RMSNorm passes ``g_sum = 0`` (it does not centre)."""
    return r * (g - g_sum / n - xhat * (g_dot_xhat / n))


# --- softmax and cross-entropy -------------------------------------------------------------
def shifted_exp(xp, x, row_max):
    """``exp(x - row_max)``: softmax's numerator, for rows with a finite maximum."""
    return xp.exp(x - row_max)


def softmax_exp(xp, x, row_max):
    """``exp(x - row_max)``; a row whose maximum is -inf (every entry hidden) gives zeros."""
    return xp.exp(x - xp.where(row_max == -xp.inf, 0.0, row_max))


def normalise(xp, e, total):
    """``e / total``, softmax's last step; a row whose total is 0 stays all zero."""
    return e / xp.where(total == 0, 1.0, total)


def softmax_backward(xp, y, grad, row_dot):
    """``y * (grad - row_dot)``, with ``row_dot`` the row sums of ``grad * y``."""
    return y * (grad - row_dot)


def cross_entropy_backward(xp, e, coef, total):
    """``softmax * coef`` from the unnormalised ``e`` and its row sums ``total``."""
    return e * (coef / total)


# --- AdamW ---------------------------------------------------------------------------------
def adamw_moments(xp, g, m, v, beta1, beta2, step_size, eps_hat):
    """AdamW's moments and update: ``(update, m, v)``.

    With c1 = 1 - beta1^t and c2 = 1 - beta2^t, ``lr * m_hat / (sqrt(v_hat) + eps)`` is
    ``m / (sqrt(v) + eps_hat) * step_size`` for ``step_size = lr sqrt(c2) / c1`` and
    ``eps_hat = eps sqrt(c2)``: the bias corrections become two numbers.
    """
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * (g * g)
    return m / (xp.sqrt(v) + eps_hat) * step_size, m, v


def decayed_step(xp, p, update, decay):
    """``p * decay - update``: decoupled weight decay (``decay = 1 - lr * weight_decay``)
    and the step."""
    return p * decay - update


CHAINS = (
    gelu_tanh,
    gelu_tanh_backward,
    silu,
    silu_backward,
    swiglu,
    swiglu_backward,
    inverse_rms,
    centre,
    norm_scale,
    norm_scale_shift,
    norm_backward,
    shifted_exp,
    softmax_exp,
    normalise,
    softmax_backward,
    cross_entropy_backward,
    adamw_moments,
    decayed_step,
)
