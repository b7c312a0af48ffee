"""The feed-forward half of a block: widen, apply a nonlinearity, narrow back.

GPT-2's MLP is two matrices around a GELU. Llama's SwiGLU has three: a *gate* whose
SiLU decides, feature by feature, how much of the *up* projection passes:

    gelu:    down( gelu(x @ up) )
    swiglu:  down( silu(x @ gate) * (x @ up) )

>>> mlp = SwiGLU(8, 16, seed=0)
>>> [name for name, _ in mlp.named_parameters()]
['gate.weight', 'up.weight', 'down.weight']
"""

import numpy as np

from .. import functional as F
from .layers import Linear
from .module import Module


class MLP(Module):
    """``down(gelu(up(x)))``, GPT-2's feed-forward (tanh-approximated GELU)."""

    def __init__(self, d_model, d_ff, bias=True, *, std=0.02, out_std=None, seed=None):
        rng = np.random.default_rng(seed)
        self.up = Linear(d_model, d_ff, bias, std=std, seed=rng)
        self.down = Linear(d_ff, d_model, bias, std=out_std or std, seed=rng)

    def forward(self, x):
        return self.down(F.gelu(self.up(x), approximate="tanh"))  # (..., d_model)


class SwiGLU(Module):
    """``down(silu(gate(x)) * up(x))``, the gated feed-forward of Llama, Mistral and Qwen."""

    def __init__(self, d_model, d_ff, bias=False, *, std=0.02, out_std=None, seed=None):
        rng = np.random.default_rng(seed)
        self.gate = Linear(d_model, d_ff, bias, std=std, seed=rng)
        self.up = Linear(d_model, d_ff, bias, std=std, seed=rng)
        self.down = Linear(d_ff, d_model, bias, std=out_std or std, seed=rng)

    def forward(self, x):
        return self.down(F.swiglu(self.gate(x), self.up(x)))  # (..., d_model)
