"""Reference answers for exercises/ex04_pretraining.py: tinyllm's own training pieces.

The exercises work on plain NumPy arrays, so each answer is a thin adapter around the
library's code: the fused ``cross_entropy`` (tinyllm/functional/softmax.py), AdamW's pure
``update`` (tinyllm/optim/adamw.py), ``warmup_cosine`` (tinyllm/optim/schedules.py) and
``clip_grads`` (tinyllm/optim/clip.py) - never a second copy of their arithmetic.
"""

import numpy as np

from tinyllm import functional as F
from tinyllm.autograd import Tensor
from tinyllm.nn import Parameter
from tinyllm.optim import AdamW, clip_grads
from tinyllm.optim import warmup_cosine as cosine_lr

__all__ = [
    "adamw_update",
    "clip_by_global_norm",
    "cosine_lr",
    "cross_entropy_batch",
    "cross_entropy_grad",
]


def cross_entropy_batch(logits, targets, ignore_index=-100):
    loss = F.cross_entropy(Tensor(np.asarray(logits)), np.asarray(targets), ignore_index)
    return float(loss.item())


def cross_entropy_grad(logits, targets, ignore_index=-100):
    logits = Tensor(np.asarray(logits), requires_grad=True)  # (B, T, V)
    F.cross_entropy(logits, np.asarray(targets), ignore_index).backward()
    return logits.grad  # (B, T, V)


def adamw_update(
    param, grad, exp_avg, exp_avg_sq, step, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01
):
    param = np.asarray(param)
    opt = AdamW([Parameter(param)], lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    state = {  # the optimizer's state just before update number `step`; one parameter, "0"
        "step": {"0": step - 1},
        "exp_avg": {"0": np.asarray(exp_avg)},
        "exp_avg_sq": {"0": np.asarray(exp_avg_sq)},
    }
    params, state = opt.update({"0": param}, {"0": np.asarray(grad)}, state)
    return params["0"], state["exp_avg"]["0"], state["exp_avg_sq"]["0"]


def clip_by_global_norm(grads, max_norm):
    named = {str(i): np.asarray(g) for i, g in enumerate(grads)}
    clipped, norm = clip_grads(named, max_norm)
    return [clipped[name] for name in named], float(norm)
