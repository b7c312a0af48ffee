"""Rotary position embedding (RoPE): rotate pairs of features by an angle that grows with position.

Feature i of a head is paired with feature i + D/2 (the "rotate half" layout of Llama and
Hugging Face), and the pair at position m turns by the angle m * inv_freq[i]:

    y = x * cos + rotate_half(x) * sin        rotate_half([x1, x2]) = [-x2, x1]

A rotation is linear and orthogonal, so the backward pass is the rotation by the opposite
angle: ``dx = dy * cos - rotate_half(dy * sin)``.

Because query and key are both rotated, their dot product depends only on how far apart
they are: q rotated to position m, k to position n, score a function of m - n.

>>> import numpy as np, tinyllm
>>> x = tinyllm.Tensor(np.array([[1.0, 0.0]], np.float32))       # one position, D = 2
>>> angle = np.array([[np.pi / 2, np.pi / 2]], np.float32)        # (T, D), halves repeated
>>> apply_rope(x, np.cos(angle), np.sin(angle)).numpy().round(6)  # a quarter turn
array([[0., 1.]], dtype=float32)
"""

from ..autograd.function import Function


def rotate_half(xp, x):
    """``[x1, x2] -> [-x2, x1]`` on the last axis."""
    half = x.shape[-1] // 2
    return xp.concatenate([-x[..., half:], x[..., :half]], axis=-1)


class ApplyRope(Function):
    """``x`` (..., T, D) rotated by the angles whose ``cos``, ``sin`` (T, D) are given - or
    (B, 1, T, D), one row of positions per sequence, shared by the heads."""

    @staticmethod
    def forward(ctx, x, cos, sin):
        if x.shape[-1] % 2 or cos.shape[-2:] != x.shape[-2:] or sin.shape != cos.shape:
            raise ValueError(
                f"apply_rope: x {tuple(x.shape)} needs an even last axis, and cos {tuple(cos.shape)}"
                f" and sin {tuple(sin.shape)} must both be (..., T, D) with (T, D) = "
                f"{tuple(x.shape[-2:])}"
            )
        ctx.save_for_backward(cos, sin)
        return x * cos + rotate_half(ctx.xp, x) * sin

    @staticmethod
    def backward(ctx, grad):
        cos, sin = ctx.saved
        return grad * cos - rotate_half(ctx.xp, grad * sin), None, None


def apply_rope(x, cos, sin):
    """Rotate ``x`` (..., T, D) by the angle tables ``cos`` and ``sin`` (T, D); no gradient to them."""
    return ApplyRope.apply(x, cos, sin)
