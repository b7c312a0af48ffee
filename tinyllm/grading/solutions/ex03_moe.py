"""Reference answers for exercises/ex03_moe.py: tinyllm's own mixture of experts.

The exercises work on plain NumPy arrays, so each answer wraps the library's code in
``tinyllm/nn/moe.py`` (``top_k_experts``, ``load_balancing_loss``, the sorted dispatch of
``MoE``) rather than repeating it.
"""

from types import SimpleNamespace

import numpy as np

from tinyllm import functional as F
from tinyllm.autograd import Tensor
from tinyllm.nn.moe import MoE, top_k_experts
from tinyllm.nn.moe import load_balancing_loss as _load_balancing_loss

__all__ = ["load_balancing_grad", "load_balancing_loss", "moe_combine", "top_k_routing"]


def top_k_routing(router_logits, k):
    probs = F.softmax(Tensor(np.asarray(router_logits)), axis=-1).numpy()  # (N, E)
    chosen = top_k_experts(np, probs, k)  # (N, k)
    gates = np.take_along_axis(probs, chosen, axis=-1)  # (N, k)
    return chosen, gates / gates.sum(axis=-1, keepdims=True)


def _counts(probs, chosen):
    return np.bincount(np.asarray(chosen).reshape(-1), minlength=probs.shape[-1])  # (E,)


def load_balancing_loss(probs, chosen):
    probs = np.asarray(probs)
    return float(_load_balancing_loss(probs, _counts(probs, chosen)))


def load_balancing_grad(probs, chosen):
    probs = Tensor(np.asarray(probs), requires_grad=True)
    _load_balancing_loss(probs, _counts(probs, chosen)).backward()
    return probs.grad  # (N, E)


def moe_combine(x, chosen, gates, experts):
    x, chosen = np.asarray(x), np.asarray(chosen)
    tensor_experts = [lambda rows, f=f: Tensor(f(rows.numpy())) for f in experts]
    layer = SimpleNamespace(experts=tensor_experts)  # all that MoE._sorted reads from self
    counts = np.bincount(chosen.reshape(-1), minlength=len(experts))
    y = MoE._sorted(layer, Tensor(x), Tensor(np.asarray(gates)), chosen, counts)
    return y.numpy()  # (N, d)
