"""Reference answers for exercises/ex09_preference_tuning.py: tinyllm's preference tuning.

The exercises work on plain NumPy arrays, so each answer is a thin adapter around the
library's code - the fused ``log_sigmoid`` (tinyllm/functional/activations.py), the losses and
``sequence_logps`` of tinyllm/train/preference.py, ``RewardModel.forward``
(tinyllm/models/reward.py) - never a second copy of their arithmetic. Where the library takes a
model, a stand-in hands it the given arrays: logits, hidden states or scores.
"""

from types import SimpleNamespace

import numpy as np

from tinyllm import functional as F
from tinyllm.autograd import Tensor
from tinyllm.models.reward import RewardModel
from tinyllm.train import preference

__all__ = [
    "bradley_terry_grad",
    "bradley_terry_loss",
    "dpo_grad",
    "dpo_loss",
    "last_token_scores",
    "log_sigmoid",
    "preference_metrics",
    "sequence_logprob",
]


def _float(x):
    return np.asarray(x, dtype=np.result_type(np.asarray(x).dtype, np.float32))


def log_sigmoid(x):
    return F.log_sigmoid(Tensor(_float(x))).numpy()


def bradley_terry_loss(chosen, rejected):
    return preference.bradley_terry_loss(Tensor(_float(chosen)), Tensor(_float(rejected))).item()


def bradley_terry_grad(chosen, rejected):
    chosen, rejected = (
        Tensor(_float(chosen), requires_grad=True),
        Tensor(_float(rejected), requires_grad=True),
    )
    preference.bradley_terry_loss(chosen, rejected).backward()
    return chosen.grad, rejected.grad


def sequence_logprob(logits, targets, ignore_index=-100):
    targets = np.where(np.asarray(targets) == ignore_index, -100, targets)  # the library's -100

    def model(ids):  # a model whose logits are the given ones
        return Tensor(_float(logits)), None

    return preference.sequence_logps(model, None, targets).numpy()  # (B,)


def _dpo(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta):
    policy = [Tensor(_float(p), requires_grad=True) for p in (policy_chosen, policy_rejected)]
    loss, chosen, rejected = preference.dpo_loss_from_logps(
        *policy, _float(ref_chosen), _float(ref_rejected), beta
    )
    return policy, loss, chosen, rejected


def dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta):
    _, loss, chosen, rejected = _dpo(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta)
    return loss.item(), chosen.numpy(), rejected.numpy()


def dpo_grad(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta):
    policy, loss, _, _ = _dpo(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta)
    loss.backward()
    return policy[0].grad, policy[1].grad


def last_token_scores(hidden, lengths, weight):
    weight = Tensor(_float(weight).reshape(-1, 1))  # (D, 1), as the score layer's
    stand_in = SimpleNamespace(  # RewardModel.forward's body and head, on the given arrays
        body=SimpleNamespace(hidden_states=lambda ids: (Tensor(_float(hidden)), [])),
        score=lambda last: last @ weight,
    )
    return RewardModel.forward(stand_in, None, np.asarray(lengths)).numpy()  # (B,)


def preference_metrics(chosen_rewards, rejected_rewards):
    def scores(given, lengths):  # a reward model whose scores are the given ones
        return Tensor(_float(given))

    batch = (chosen_rewards, None, None, rejected_rewards, None, None)
    _, metrics = preference.reward_loss(scores, batch)
    return {"accuracy": float(metrics["ranked_right"]), "margin": float(metrics["margin"])}
