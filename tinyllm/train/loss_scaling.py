"""Dynamic loss scaling: how float16 training keeps its small gradients (as PyTorch's
``torch.amp.GradScaler``).

float16's smallest normal number is 6e-5 and its smallest at all 6e-8: many gradients deep
in a model are smaller, and a float16 product rounds them to 0. Scaling the loss by S
scales every gradient by S (the chain rule is linear), which lifts them into range. The
trainer then

1. multiplies the loss by ``scale`` before backward;
2. divides the gradients by ``scale`` in float32 ("unscales" them), before clipping, so
   clipping and the optimizer see the true gradients;
3. calls ``update(finite)``: if any gradient came out inf or NaN (S was so large that a
   product overflowed float16's 65504) the step is skipped and S halved; after
   ``growth_interval`` good steps in a row S doubles, to probe for the largest safe scale.

The trainer runs the same rule on the device, ``next_state`` (inside the compiled step on
JAX), with S and the count of good steps as arrays each step takes and returns, so no step
waits to read its gradient norm back; it calls ``check`` when it reads the steps' numbers.

S starts at 2^16 and settles within a few steps. Powers of two make the scaling exact: a
float times 2^k changes only its exponent. bfloat16 has float32's range and needs none of
this.

>>> scaler = LossScaler(scale=1024.0, growth_interval=2)
>>> scaler.update(finite=False), scaler.scale  # an overflow: skip the step, halve S
(False, 512.0)
>>> scaler.update(True), scaler.update(True), scaler.scale  # two good steps: double S
(True, True, 1024.0)
"""

import math

import numpy as np

from ..backend import to_numpy


class LossScaler:
    """The scale S and its rule: halve on an overflow (skipping the step), double after
    ``growth_interval`` good steps. See the module docstring."""

    def __init__(
        self, scale=2.0**16, *, growth_factor=2.0, backoff_factor=0.5, growth_interval=2000,
        min_scale=1.0,
    ):  # fmt: skip
        for name, value, ok in (
            ("scale", scale, isinstance(scale, (int, float)) and scale > 0),
            ("growth_factor", growth_factor, growth_factor > 1),
            ("backoff_factor", backoff_factor, 0 < backoff_factor < 1),
            ("growth_interval", growth_interval, isinstance(growth_interval, int)),
        ):
            if not ok or (name == "growth_interval" and growth_interval < 1):
                raise ValueError(f"LossScaler: {name}={value!r} is out of range")
        self.scale = float(scale)
        self.growth_factor, self.backoff_factor = growth_factor, backoff_factor
        self.growth_interval, self.min_scale = growth_interval, min_scale
        self.good_steps = 0  # finite steps in a row since S last changed

    def update(self, finite):
        """Record whether this step's gradients were all finite; returns whether to take it.

        Raises ``FloatingPointError`` once S falls below ``min_scale``: then the gradients
        overflow at every scale, and the run has diverged rather than met float16's limits.
        """
        scale, good_steps = self.next_state(
            np.float64(self.scale), np.int64(self.good_steps), np.bool_(finite), np
        )
        self.scale, self.good_steps = float(scale), int(good_steps)
        self.check()
        return bool(finite)

    def next_state(self, scale, good_steps, finite, xp):
        """The rule in array operations of ``xp`` (inside a compiled step too): S and the
        count of good steps after a step whose gradients were (a 0-d boolean) ``finite``."""
        grow = finite & (good_steps + 1 >= self.growth_interval)
        kept = xp.where(grow, scale * self.growth_factor, scale)
        scale = xp.where(finite, kept, scale * self.backoff_factor)
        good_steps = xp.where(finite & ~grow, good_steps + 1, 0)
        return scale, good_steps

    def check(self, scale=None):
        """Raise ``FloatingPointError`` if S has fallen below ``min_scale``; ``scale``: S as
        the caller has read it already, else it is read here."""
        scale = float(to_numpy(self.scale) if scale is None else scale)
        if scale < self.min_scale:
            raise FloatingPointError(
                f"the float16 gradients overflowed at every loss scale down to "
                f"{scale / self.backoff_factor:g}: training diverged. Try a lower "
                "--lr, --grad-clip 1.0, or --dtype bfloat16 (on JAX) or float32"
            )

    def state_dict(self):
        return {"scale": float(to_numpy(self.scale)), "good_steps": int(to_numpy(self.good_steps))}

    def load_state_dict(self, state):
        scale, good_steps = float(state["scale"]), int(state["good_steps"])
        if not (math.isfinite(scale) and scale > 0 and good_steps >= 0):
            raise ValueError(f"LossScaler: cannot load state {state!r}")
        self.scale, self.good_steps = scale, good_steps
