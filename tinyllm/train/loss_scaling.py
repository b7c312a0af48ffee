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
        if not finite:
            self.scale *= self.backoff_factor
            self.good_steps = 0
            if self.scale < self.min_scale:
                raise FloatingPointError(
                    f"the float16 gradients overflowed at every loss scale down to "
                    f"{self.scale / self.backoff_factor:g}: training diverged. Try a lower "
                    "--lr, --grad-clip 1.0, or --dtype bfloat16 (on JAX) or float32"
                )
            return False
        self.good_steps += 1
        if self.good_steps == self.growth_interval:
            self.scale *= self.growth_factor
            self.good_steps = 0
        return True

    def state_dict(self):
        return {"scale": self.scale, "good_steps": self.good_steps}

    def load_state_dict(self, state):
        scale, good_steps = float(state["scale"]), int(state["good_steps"])
        if not (math.isfinite(scale) and scale > 0 and good_steps >= 0):
            raise ValueError(f"LossScaler: cannot load state {state!r}")
        self.scale, self.good_steps = scale, good_steps
