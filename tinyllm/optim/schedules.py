"""Learning-rate schedules: plain functions from the step number to a learning rate.

All three rise linearly during ``warmup_steps`` (large early updates from a random start
can wreck training), reach ``max_lr`` at step ``warmup_steps``, and then:

| schedule        | after warmup                                                  |
|-----------------|---------------------------------------------------------------|
| `warmup_cosine` | half a cosine from ``max_lr`` down to ``min_lr`` at ``total_steps`` |
| `warmup_linear` | a straight line from ``max_lr`` down to ``min_lr`` at ``total_steps`` |
| `constant`      | ``max_lr`` for ever                                           |

After ``total_steps`` the decaying schedules stay at ``min_lr``. A training loop sets
``opt.lr = schedule(step, ...)`` before each ``opt.step()``; since the rate depends on the
step number alone, a run resumed from a checkpoint continues on the same curve.

>>> [round(warmup_cosine(s, 1.0, warmup_steps=2, total_steps=6), 3) for s in range(8)]
[0.333, 0.667, 1.0, 0.854, 0.5, 0.146, 0.0, 0.0]
>>> [round(warmup_linear(s, 1.0, warmup_steps=2, total_steps=6), 3) for s in range(8)]
[0.333, 0.667, 1.0, 0.75, 0.5, 0.25, 0.0, 0.0]
>>> SCHEDULES["constant"](0, 3e-4, warmup_steps=0)
0.0003
"""

import math
import numbers


def _warmup_then_decay(name, fraction_left, step, max_lr, warmup_steps, total_steps, min_lr):
    """Linear warmup, then ``min_lr + fraction_left(progress) * (max_lr - min_lr)``."""
    _check(step, max_lr, warmup_steps, total_steps, min_lr, name)
    if step < warmup_steps:
        return _warmup(step, max_lr, warmup_steps)
    if step >= total_steps:
        return float(min_lr) if step > warmup_steps else float(max_lr)
    progress = (step - warmup_steps) / (total_steps - warmup_steps)  # 0 -> 1
    return min_lr + fraction_left(progress) * (max_lr - min_lr)


def warmup_cosine(step, max_lr, warmup_steps, total_steps, min_lr=0.0):
    """Linear warmup to ``max_lr``, then cosine decay to ``min_lr`` at ``total_steps``."""
    return _warmup_then_decay(
        "warmup_cosine", lambda p: 0.5 * (1 + math.cos(math.pi * p)),
        step, max_lr, warmup_steps, total_steps, min_lr,
    )  # fmt: skip


def warmup_linear(step, max_lr, warmup_steps, total_steps, min_lr=0.0):
    """Linear warmup to ``max_lr``, then linear decay to ``min_lr`` at ``total_steps``."""
    return _warmup_then_decay(
        "warmup_linear", lambda p: 1 - p, step, max_lr, warmup_steps, total_steps, min_lr
    )


def constant(step, max_lr, warmup_steps=0, total_steps=None, min_lr=0.0):
    """Linear warmup to ``max_lr``, then ``max_lr``.

    Takes the same arguments as the other schedules so a config can name any of them;
    ``min_lr`` is not used, and ``total_steps`` only checked when given.
    """
    _check(step, max_lr, warmup_steps, total_steps, min_lr, "constant")
    return _warmup(step, max_lr, warmup_steps) if step < warmup_steps else float(max_lr)


SCHEDULES = {"cosine": warmup_cosine, "linear": warmup_linear, "constant": constant}


def get_schedule(name):
    """The schedule called ``name``: one of ``SCHEDULES``' keys.

    >>> get_schedule("cosine").__name__
    'warmup_cosine'
    """
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; expected one of {', '.join(SCHEDULES)}")
    return SCHEDULES[name]


def _warmup(step, max_lr, warmup_steps):
    """``max_lr·(step + 1)/(warmup_steps + 1)``: never 0 (step 0 still learns), and
    ``max_lr`` at ``step == warmup_steps``, where the decay takes over."""
    return max_lr * (step + 1) / (warmup_steps + 1)


def _check(step, max_lr, warmup_steps, total_steps, min_lr, name):
    def count(value, what):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
            raise ValueError(f"{name}: {what} must be an int >= 0, got {value!r}")

    def rate(value, what):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value >= 0:
            raise ValueError(f"{name}: {what} must be a number >= 0, got {value!r}")

    count(step, "step")
    count(warmup_steps, "warmup_steps")
    rate(max_lr, "max_lr")
    rate(min_lr, "min_lr")
    if min_lr > max_lr:
        raise ValueError(f"{name}: min_lr={min_lr!r} is above max_lr={max_lr!r}")
    if total_steps is None and name != "constant":
        raise ValueError(f"{name}: total_steps is required")
    if total_steps is not None:
        count(total_steps, "total_steps")
        if warmup_steps > total_steps:
            raise ValueError(
                f"{name}: warmup_steps={warmup_steps} is more than total_steps={total_steps}"
            )
