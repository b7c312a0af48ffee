"""Optimizers, learning-rate schedules, gradient clipping and accumulation.

| file              | what                                                                 |
|-------------------|----------------------------------------------------------------------|
| `param_groups.py` | which parameters, with which settings (no decay on norms and biases) |
| `optimizer.py`    | Optimizer: state, eager step and pure update, checkpoints            |
| `sgd.py`          | SGD with momentum (Nesterov optional), L2 weight decay               |
| `adamw.py`        | AdamW: Adam with decoupled weight decay                              |
| `schedules.py`    | warmup_cosine warmup_linear constant get_schedule                    |
| `clip.py`         | clip_grad_norm (on .grad), clip_grads (pure), global_norm            |
| `accumulate.py`   | accumulate_gradients: one big batch's gradient from micro-batches    |

One training step, eagerly:

>>> import numpy as np
>>> from tinyllm.nn import Linear
>>> model = Linear(4, 2, seed=0)
>>> opt = AdamW(model, lr=1e-2, weight_decay=0.1)
>>> [group["names"] for group in opt.param_groups]    # the bias is not decayed
[['weight'], ['bias']]
>>> x = np.ones((3, 4), np.float32)
>>> for step in range(3):
...     opt.lr = warmup_cosine(step, max_lr=1e-2, warmup_steps=1, total_steps=3)
...     opt.zero_grad()
...     loss = (model(x) ** 2).mean()
...     loss.backward()
...     norm = clip_grad_norm(model, max_norm=1.0)
...     opt.step()
>>> opt.state["step"]
{'weight': 3, 'bias': 3}

Under JAX the same optimizer also offers a pure step for ``jax.jit``:
``state = opt.init_state(params)`` and ``params, state = opt.update(params, grads, state, lr)``.
"""

from .accumulate import accumulate_gradients
from .adamw import AdamW
from .clip import clip_grad_norm, clip_grads, global_norm
from .optimizer import Optimizer
from .schedules import SCHEDULES, constant, get_schedule, warmup_cosine, warmup_linear
from .sgd import SGD

__all__ = [
    "SCHEDULES",
    "SGD",
    "AdamW",
    "Optimizer",
    "accumulate_gradients",
    "clip_grad_norm",
    "clip_grads",
    "constant",
    "get_schedule",
    "global_norm",
    "warmup_cosine",
    "warmup_linear",
]
