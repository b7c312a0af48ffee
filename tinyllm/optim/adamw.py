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
(see ``param_groups.py``). The arithmetic is two chains of ``backend/fused.py``: the moments
and the update, ``adamw_moments``, and the decay and step, ``decayed_step``, with the bias
corrections folded into two numbers. ``_update_arrays`` calls them for new arrays (JAX and
the pure ``update``: inputs untouched); ``_step_in_place`` writes their results into a
group's flat NumPy/CuPy buffers and each parameter, in place (on CuPy, one kernel for the
group's moments and one per parameter).
"""

import math
import numbers

from ..backend import backend_of, fused
from .optimizer import Optimizer, split


class AdamW(Optimizer):
    """AdamW over ``params`` (a Module, (name, Parameter) pairs, Parameters or group dicts).

    ``betas`` are (β1, β2), each in [0, 1); ``eps`` keeps the division finite where v̂ ≈ 0.
    """

    hyperparameters = ("lr", "betas", "eps", "weight_decay")
    non_negative = ("lr", "eps", "weight_decay")
    state_keys = ("exp_avg", "exp_avg_sq")  # m and v
    skips_on_device = True

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
        c1, c2 = _bias_correction(beta1, step), _bias_correction(beta2, step)
        backend = backend_of(p)
        update, m, v = backend.fused(fused.adamw_moments)(
            g, slots["exp_avg"], slots["exp_avg_sq"], beta1, beta2,
            lr * c2**0.5 / c1, eps * c2**0.5,
        )  # fmt: skip
        p = backend.fused(fused.decayed_step)(p, update, 1 - lr * weight_decay)
        return p, {"exp_avg": m, "exp_avg_sq": v}

    def _step_in_place(self, group, params, grad, state, step, only_if=True):
        """The same step over a run of ``params`` whose gradients are gathered in ``grad``.

        ``grad``, ``m`` and ``v`` are flat (n,) buffers; ``grad`` is scratch and ends up
        holding the update itself. Two chains of ``backend/fused.py`` written in place: the
        moments and the update, one pass over the run (one kernel on CuPy), then each
        parameter's decay and step. Where ``only_if`` is False nothing changes.
        """
        lr, (beta1, beta2), eps, weight_decay = (group[k] for k in self.hyperparameters)
        backend = params[0].backend
        t = step + 1  # an int, or a 0-d int array counted on the device (``Optimizer.step``)
        on_host = isinstance(t, int)  # (a NumPy integer would make float64 numbers strong)
        sqrt = math.sqrt if on_host else backend.xp.sqrt
        c1, c2 = 1 - beta1**t, 1 - beta2**t  # the bias corrections, in float64 either way
        step_size, eps_hat = lr * sqrt(c2) / c1, eps * sqrt(c2)
        if not on_host:  # the same numbers, as 0-d arrays rounded to the update's dtype
            step_size, eps_hat = (
                backend.xp.asarray(x, dtype=grad.dtype) for x in (step_size, eps_hat)
            )
        m, v = state["exp_avg"], state["exp_avg_sq"]
        backend.update_in_place(
            fused.adamw_moments, grad, m, v, beta1, beta2, step_size, eps_hat, where=only_if
        )  # grad <- the update
        decay = 1 - lr * weight_decay
        for p, p_update in zip(params, split(grad, params)):
            backend.update_in_place(fused.decayed_step, p.data, p_update, decay, where=only_if)


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
