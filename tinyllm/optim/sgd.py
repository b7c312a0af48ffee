"""SGD with momentum, as ``torch.optim.SGD``.

For a parameter ``p`` with gradient ``g`` (λ = weight_decay, μ = momentum, τ = dampening):

    d ← g + λ·p                  L2 weight decay: the gradient of (λ/2)·|p|²
    b ← d                        on the first step, then
    b ← μ·b + (1 - τ)·d          a running sum of past directions (the "velocity")
    d ← d + μ·b  (Nesterov)  or  d ← b
    p ← p - lr·d

With ``momentum=0`` it is plain gradient descent, ``p ← p - lr·g``. With momentum, a
gradient that keeps pointing the same way builds up speed:

>>> import numpy as np
>>> from tinyllm.nn import Parameter
>>> w = Parameter(np.array([1.0, -2.0], np.float32))
>>> opt = SGD([w], lr=0.1, momentum=0.9)
>>> for _ in range(2):
...     w.grad = np.array([1.0, 1.0], np.float32)
...     opt.step()
>>> w.numpy()            # a step of 0.1, then of 0.1·(0.9 + 1)
array([ 0.71, -2.29], dtype=float32)

Given a Module or named parameters, weight decay skips norm weights and biases (see
``param_groups.py``). Like AdamW, the update is written once in plain array ops
(``_update_arrays``, for JAX and ``update``: new arrays out) and once in place over flat
NumPy/CuPy buffers, which also updates each parameter in place.
"""

from ..backend import backend_of
from .optimizer import Optimizer, split


class SGD(Optimizer):
    """SGD over ``params`` (a Module, (name, Parameter) pairs, Parameters or group dicts).

    ``nesterov=True`` needs ``momentum > 0`` and ``dampening == 0``, as in PyTorch.
    """

    hyperparameters = ("lr", "momentum", "dampening", "weight_decay", "nesterov")
    non_negative = ("lr", "momentum", "dampening", "weight_decay")
    state_keys = ("momentum_buffer",)  # b, one per parameter (none when momentum is 0)

    def __init__(
        self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False
    ):
        super().__init__(
            params,
            lr=lr,
            momentum=momentum,
            dampening=dampening,
            weight_decay=weight_decay,
            nesterov=nesterov,
        )
        if not any(group["momentum"] for group in self.param_groups):
            self.state_keys = ()  # plain gradient descent keeps no buffers
        for index, group in enumerate(self.param_groups):
            if group["nesterov"] and (group["momentum"] == 0 or group["dampening"] != 0):
                raise ValueError(
                    f"SGD: nesterov in param group {index} needs momentum > 0 and "
                    f"dampening 0, got momentum={group['momentum']}, "
                    f"dampening={group['dampening']}"
                )

    def _check(self, key, value, group=None):
        if key == "nesterov":
            if not isinstance(value, bool):
                raise ValueError(f"SGD: nesterov must be True or False, got {value!r}")
            return value
        if key == "momentum" and value and not self.state_keys:
            raise ValueError(
                f"SGD: momentum={value!r}, but the optimizer was made with none, so it has "
                "no momentum buffers; create it with the momentum you want"
            )
        return super()._check(key, value, group)

    def _update_arrays(self, p, g, slots, step, lr, hyper):
        """One SGD step for one array, in plain array ops (no in-place writes)."""
        momentum, dampening, weight_decay, nesterov = hyper
        d = g + weight_decay * p if weight_decay else g
        if momentum:
            running = momentum * slots["momentum_buffer"] + (1 - dampening) * d
            buffer = backend_of(p).xp.where(step == 1, d, running)  # b ← d on the first step
            slots = {"momentum_buffer": buffer}
            d = d + momentum * buffer if nesterov else buffer
        return p - lr * d, slots

    def _step_in_place(self, group, params, grad, state, step):
        """The same step over a run of ``params`` whose gradients are gathered in ``grad``."""
        lr, momentum, dampening, weight_decay, nesterov = (group[k] for k in self.hyperparameters)
        xp = params[0].backend.xp
        d = grad  # (n,) scratch: the direction, then the update
        if weight_decay:
            for p, d_p in zip(params, split(d, params)):
                d_p += weight_decay * p.data  # d ← g + λ·p
        if momentum:
            buffer = state["momentum_buffer"]
            if step == 0:
                buffer[...] = d  # b ← d
            else:
                if dampening:
                    d *= 1 - dampening  # (nesterov, which reads d again, needs dampening 0)
                buffer *= momentum
                buffer += d  # b ← μ·b + (1-τ)·d
            if nesterov:
                d += momentum * buffer
            else:
                d = buffer
        update = xp.multiply(d, lr, out=grad)  # lr·d
        for p, p_update in zip(params, split(update, params)):
            p.data -= p_update
