"""Mixture of experts: many feed-forward networks, and a router that sends each token to a few.

A dense block runs one MLP on every token. A mixture holds ``n_expert`` of them and a
router - one linear layer - that scores the experts for each token. Each token goes to
its ``top_k`` best-scoring experts, and their outputs are mixed by the router's
softmax probabilities renormalized over the chosen few (Mixtral):

    probs  = softmax(x @ W_router)                 (N, n_expert)
    chosen = the top_k experts of each row         (N, top_k)
    gates  = probs[chosen] / sum(probs[chosen])    (N, top_k)
    y      = sum_j gates[:, j] * expert_{chosen[:, j]}(x)

(``normalize=False`` keeps ``gates = probs[chosen]``, which sum to less than 1: Qwen3-MoE's
``norm_topk_prob=False``.)

Parameters grow with ``n_expert``, but each token pays for only ``top_k`` experts: that is
the difference between *total* and *active* parameters.

Left alone, a router tends to collapse onto a few favourite experts. The load-balancing
loss (Switch Transformer; Mixtral in Hugging Face) pushes it back:

    aux = n_expert * sum_e  f_e * P_e      f_e: share of routed slots that went to e
                                            P_e: mean router probability of e

Under uniform routing it equals ``top_k``; it grows as routing piles onto a few experts
(all tokens on the same ``top_k`` experts give ``n_expert``). ``f`` is counted, so only
``P`` carries gradient - the router learns to lower the probability of busy experts.

The experts run vectorized over tokens: the (token, choice) slots are sorted by expert,
each expert takes its contiguous slice in one batched call, and the outputs are put back
in token order. The slices' sizes are the counts, read to the host. Under ``jax.jit`` they
are not known until the program runs, and on CuPy reading them would make the CPU wait for
the GPU inside every step, so there every expert runs on every token and the gates zero
out the ones not chosen - the same function, more arithmetic (``n_expert / top_k`` times the
experts' work), and nothing read back.

>>> import numpy as np
>>> moe = MoE(d_model=8, d_ff=16, n_expert=4, top_k=2, seed=0)
>>> y, aux = moe(np.random.default_rng(0).standard_normal((2, 5, 8)).astype(np.float32))
>>> y.shape, int(moe.expert_counts.sum())              # 10 tokens x 2 experts each
((2, 5, 8), 20)
"""

import numpy as np

from .. import functional as F
from ..autograd import Tensor
from ..backend import to_numpy
from .layers import Linear
from .mlp import MLP, SwiGLU
from .module import Module


def top_k_experts(xp, probs, k):
    """The indices (N, k) of each row's k largest probabilities, best first."""
    return xp.argsort(-probs, axis=-1)[:, :k]


def load_balancing_loss(probs, counts):
    """``n_expert * sum_e f_e * P_e`` for router ``probs`` (N, E) and routed ``counts`` (E,)."""
    n_tokens, n_expert = probs.shape
    mean_prob = probs.mean(axis=0)  # (E,) P_e, differentiable
    share = counts.astype(probs.dtype) / n_tokens  # (E,) f_e, a constant
    return (mean_prob * share).sum() * n_expert


class MoE(Module):
    """``n_expert`` feed-forward experts (SwiGLU or GELU), ``top_k`` of them per token.

    ``forward(x)`` returns ``(y, aux_loss)``; after a forward outside ``jax.jit``,
    ``expert_counts`` holds how many tokens each expert received (a NumPy array, read from
    the device when asked for).
    """

    def __init__(
        self,
        d_model,
        d_ff,
        n_expert,
        top_k=2,
        *,
        mlp="swiglu",
        normalize=True,
        bias=False,
        std=0.02,
        out_std=None,
        seed=None,
    ):
        if not 1 <= top_k <= n_expert:
            raise ValueError(f"MoE: top_k={top_k} must be between 1 and n_expert={n_expert}")
        rng = np.random.default_rng(seed)
        expert = {"swiglu": SwiGLU, "gelu": MLP}[mlp]
        self.top_k, self.normalize = top_k, normalize
        self.router = Linear(d_model, n_expert, bias=False, std=std, seed=rng)
        self.experts = [
            expert(d_model, d_ff, bias, std=std, out_std=out_std, seed=rng) for _ in range(n_expert)
        ]
        self._counts = None  # the last forward's, on the device

    @property
    def expert_counts(self):
        """(n_expert,) slots routed to each expert in the last forward outside ``jax.jit``,
        as a NumPy array (None before any)."""
        return None if self._counts is None else to_numpy(self._counts)

    def forward(self, x, dense=False):
        """``x`` (B, T, d) -> ``(y (B, T, d), aux_loss)``; ``dense=True`` forces the dense dispatch."""
        x = x if isinstance(x, Tensor) else Tensor(x)
        B, T, d = x.shape
        xp, backend = x.backend.xp, x.backend
        tokens = x.reshape(B * T, d)  # (N, d)
        probs = F.softmax(self.router(tokens), axis=-1)  # (N, E)
        n_expert = probs.shape[-1]
        chosen = top_k_experts(xp, probs.data, self.top_k)  # (N, k), no gradient
        gates = probs[xp.arange(B * T)[:, None], chosen]  # (N, k)
        if self.normalize:
            gates = gates / gates.sum(axis=-1, keepdims=True)  # renormalized over the chosen
        one_hot = chosen[..., None] == xp.arange(n_expert)  # (N, k, E)
        counts = one_hot.sum(axis=(0, 1))  # (E,) slots routed to each expert
        aux_loss = load_balancing_loss(probs, counts)

        if not backend.is_traced(counts):
            self._counts = counts
        if dense or not backend.reads_values(counts):  # jax.jit, CuPy: nothing read back
            y = self._dense(tokens, gates, one_hot)
        else:
            y = self._sorted(tokens, gates, chosen, backend.to_numpy(counts))
        return y.reshape(B, T, d), aux_loss

    def _sorted(self, tokens, gates, chosen, counts):
        """Each expert on the slots routed to it: sort by expert, run slices, unsort."""
        xp = tokens.backend.xp
        N, k = chosen.shape
        order = xp.argsort(chosen.reshape(-1))  # (N*k,) slots grouped by expert, any order within
        slots = tokens[order // k]  # (N*k, d), slot s belongs to token s // k
        ends = np.cumsum(counts)
        outputs = [
            expert(slots[end - count : end])  # (count, d)
            for expert, count, end in zip(self.experts, counts, ends)
            if count
        ]
        by_expert = F.concat(outputs, axis=0) if len(outputs) > 1 else outputs[0]  # (N*k, d)
        per_slot = by_expert[xp.argsort(order)].reshape(N, k, -1)  # back in token order
        return (per_slot * gates.reshape(N, k, 1)).sum(axis=1)  # (N, d)

    def _dense(self, tokens, gates, one_hot):
        """Every expert on every token, weighted by the gates (zero where not chosen)."""
        N, k, E = one_hot.shape
        weights = (gates.reshape(N, k, 1) * one_hot.astype(gates.dtype)).sum(axis=1)  # (N, E)
        outputs = F.stack([expert(tokens) for expert in self.experts], axis=1)  # (N, E, d)
        return (outputs * weights.reshape(N, E, 1)).sum(axis=1)  # (N, d)
