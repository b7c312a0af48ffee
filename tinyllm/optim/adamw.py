"""AdamW: Adam with decoupled weight decay (Loshchilov & Hutter, 2019), as ``torch.optim.AdamW``.

For a parameter ``p`` with gradient ``g``, at its step ``t = 1, 2, ...``:

    p ← p - lr·λ·p                             decoupled weight decay (λ = weight_decay)
    m ← β1·m + (1 - β1)·g                      first moment: a running mean of g
    v ← β2·v + (1 - β2)·g²                     second moment: a running mean of g²
    m̂ = m / (1 - β1^t),   v̂ = v / (1 - β2^t)   bias correction: m and v start at 0
    p ← p - lr·m̂ / (√v̂ + ε)

Each entry moves by about ``lr`` in the direction of its recent gradients, whatever their
scale. "Decoupled": the decay shrinks ``p`` directly instead of being added to ``g`` as
an L2 penalty (SGD's ``weight_decay``), where ``1/√v̂`` would rescale it entry by entry.
On the first step ``m̂/√v̂ = g/|g|``, so every entry moves by ``lr`` against its gradient:

>>> import numpy as np
>>> from tinyllm.nn import Parameter
>>> w = Parameter(np.array([1.0, -2.0], np.float32))
>>> opt = AdamW([w], lr=0.1, weight_decay=0.0)
>>> w.grad = np.array([0.5, -3.0], np.float32)
>>> opt.step()
>>> w.numpy().round(6)
array([ 0.9, -1.9], dtype=float32)

Given a Module or named parameters, AdamW decays only matrices, not norm weights or biases
(see ``param_groups.py``). The same update is written twice: ``_update_arrays`` in plain array
ops, the definition, used by JAX and the pure ``update`` (new arrays out, inputs untouched);
and ``_step_in_place``, the same arithmetic as a dozen in-place passes over a group's flat
NumPy/CuPy buffers, ending with each parameter updated in place.
"""

import math
import numbers

from ..backend import backend_of
from .optimizer import Optimizer, split


class AdamW(Optimizer):
    """AdamW over ``params`` (a Module, (name, Parameter) pairs, Parameters or group dicts).

    ``betas`` are (β1, β2), each in [0, 1); ``eps`` keeps the division finite where v̂ ≈ 0.
    """

    hyperparameters = ("lr", "betas", "eps", "weight_decay")
    non_negative = ("lr", "eps", "weight_decay")
    state_keys = ("exp_avg", "exp_avg_sq")  # m and v

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)

    def _check(self, key, value, group=None):
        if key == "betas":
            ok = isinstance(value, (tuple, list)) and len(value) == 2
            if not ok or not all(_in_unit_interval(b) for b in value):
                where = "" if group is None else f" in param group {group}"
                raise ValueError(
                    f"AdamW: betas{where} must be two numbers in [0, 1), got {value!r}"
                )
            return (float(value[0]), float(value[1]))
        return super()._check(key, value, group)

    def _update_arrays(self, p, g, slots, step, lr, hyper):
        """One AdamW step for one array, in plain array ops (no in-place writes)."""
        (beta1, beta2), eps, weight_decay = hyper
        m = beta1 * slots["exp_avg"] + (1 - beta1) * g
        v = beta2 * slots["exp_avg_sq"] + (1 - beta2) * (g * g)
        m_hat = m / _bias_correction(beta1, step)
        v_hat = v / _bias_correction(beta2, step)
        p = p * (1 - lr * weight_decay) - lr * m_hat / (v_hat**0.5 + eps)
        return p, {"exp_avg": m, "exp_avg_sq": v}

    def _step_in_place(self, group, params, grad, state, step):
        """The same step over a run of ``params`` whose gradients are gathered in ``grad``.

        ``grad``, ``m`` and ``v`` are flat (n,) buffers; ``grad`` is scratch and ends up
        holding the update itself. Each line is one pass over the run, with no temporaries.
        """
        lr, (beta1, beta2), eps, weight_decay = (group[k] for k in self.hyperparameters)
        m, v, g = state["exp_avg"], state["exp_avg_sq"], grad
        xp = params[0].backend.xp
        t = step + 1
        g *= 1 - beta1  # g ← (1-β1)·g
        m *= beta1
        m += g  # m ← β1·m + (1-β1)·g
        g *= g  # g ← (1-β1)²·g²
        g *= (1 - beta2) / (1 - beta1) ** 2  # g ← (1-β2)·g²
        v *= beta2
        v += g  # v ← β2·v + (1-β2)·g²
        # With c1 = 1-β1^t and c2 = 1-β2^t:  lr·m̂/(√v̂ + ε) = (lr·√c2/c1)·m/(√v + ε·√c2)
        c1, c2 = 1 - beta1**t, 1 - beta2**t
        update = xp.sqrt(v, out=g)
        update += eps * math.sqrt(c2)
        update = xp.divide(m, update, out=update)
        update *= lr * math.sqrt(c2) / c1
        for p, p_update in zip(params, split(update, params)):
            if weight_decay:
                p.data *= 1 - lr * weight_decay
            p.data -= p_update


def _bias_correction(beta, step):
    """``1 - beta**step``, for a step that is an int or (under ``jit``) an int array.

    For an array it is computed as ``-expm1(step·log β)``: in float32, ``1 - 0.999**t``
    loses four digits to cancellation (0.999 itself is off by 1.3e-8, 1.3e-5 of 0.001).
    """
    if isinstance(step, numbers.Integral) or beta == 0:
        return 1 - beta**step
    return -backend_of(step).xp.expm1(step * math.log(beta))


def _in_unit_interval(x):
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and 0 <= x < 1
