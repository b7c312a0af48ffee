"""Preference tuning's losses: Bradley-Terry for a reward model, and DPO for the policy.

**Bradley-Terry.** The probability that a person prefers response c over r is modelled as
sigmoid(r_c - r_r), the reward difference; training maximises it over the pairs:

    loss = -log sigmoid(score(chosen) - score(rejected))

**DPO** (Rafailov et al. 2023) needs no reward model. The policy's log-probability of a
response, relative to a frozen reference model's (the SFT model), is an *implicit reward*,
``beta * (log pi(y|x) - log ref(y|x))``, and the same Bradley-Terry loss applies to it:

    loss = -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r)))

``pi_c`` is the sum of the log-probabilities of the chosen response's tokens (the prompt's
are not counted). ``beta`` sets how far the policy may move from the reference: small beta
lets it go far, large keeps it close. The reference's log-probabilities never change, so
they are computed once (``reference_logps``) and travel with the batches.
"""

import numpy as np

from .. import functional as F
from ..autograd import to_numpy
from ..nn.module import measuring


def bradley_terry_loss(chosen_scores, rejected_scores):
    """``-log sigmoid(chosen - rejected)``, the mean over pairs (Tensors (N,))."""
    return -F.log_sigmoid(chosen_scores - rejected_scores).mean()


def reward_loss(model, batch):
    """``loss_fn`` for a ``RewardModel`` on ``PreferenceRows`` batches: the Bradley-Terry
    loss, the share of pairs ranked right and the mean margin."""
    c_ids, _, c_len, r_ids, _, r_len = batch
    chosen, rejected = model(c_ids, c_len), model(r_ids, r_len)
    margin = (chosen - rejected).data
    metrics = {
        "ranked_right": (margin > 0).mean(),
        "margin": margin.mean(),
        "tokens": int(np.size(c_ids) * 2),
    }
    return bradley_terry_loss(chosen, rejected), metrics


def sequence_logps(model, ids, targets):
    """The sum over each row of log p(target) where the target is not -100: (B,) Tensor,
    a response's log-probability under ``model`` (a Transformer)."""
    logits, _ = model(ids)  # (B, T, V), on the model's backend, as ids go there
    targets = logits.backend.asarray(targets)  # NumPy's, say, for a model on JAX or CuPy
    return -F.cross_entropy(logits, targets, reduction="none").sum(axis=-1)


# ``sequence_logps`` to measure, not to train (see ``measuring``): (B,) floats, an array
measured_logps = measuring(sequence_logps)


def reference_logps(reference, rows, batch_size=16):
    """The reference model's log-probabilities (N,) of the chosen and of the rejected
    responses of ``rows`` (``PreferenceRows``), computed once, without gradients."""
    out = ([], [])
    for start in range(0, len(rows.chosen_ids), batch_size):
        part = slice(start, start + batch_size)
        for side, ids, targets in ((0, rows.chosen_ids, rows.chosen_targets),
                                   (1, rows.rejected_ids, rows.rejected_targets)):  # fmt: skip
            out[side].append(to_numpy(measured_logps(reference, ids[part], targets[part])))
    return np.concatenate(out[0]), np.concatenate(out[1])


def dpo_loss_from_logps(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta):
    """DPO's loss and implicit rewards from the four log-probabilities (each (N,))."""
    chosen_rewards = beta * (policy_chosen - ref_chosen)
    rejected_rewards = beta * (policy_rejected - ref_rejected)
    loss = -F.log_sigmoid(chosen_rewards - rejected_rewards).mean()
    return loss, chosen_rewards, rejected_rewards


def dpo_loss(beta, sft_weight=0.0):
    """A ``loss_fn`` for the policy on batches of ``PreferenceRows`` followed by the
    reference's two log-probability arrays: the DPO loss, with the implicit rewards of the
    chosen and rejected responses, their margin and the share of pairs ranked right.

    ``sft_weight`` adds that times the chosen responses' mean per-token cross-entropy (TRL's
    ``loss_type=["sigmoid", "sft"]``; RPO). DPO alone only asks the *difference* to grow:
    on pairs that differ in a token or two it often pushes the chosen response down too,
    and the probability goes to answers in neither (likelihood displacement); the SFT term
    holds the chosen ones up."""
    if not beta > 0:
        raise ValueError(f"beta={beta!r}: expected a number > 0 (0.1 is usual)")
    if not sft_weight >= 0:
        raise ValueError(f"sft_weight={sft_weight!r}: expected a number >= 0")

    def loss_fn(policy, batch):
        c_ids, c_targets, _, r_ids, r_targets, _, ref_c, ref_r = batch
        pi_c, pi_r = (
            sequence_logps(policy, c_ids, c_targets),
            sequence_logps(policy, r_ids, r_targets),
        )
        loss, chosen, rejected = dpo_loss_from_logps(pi_c, pi_r, ref_c, ref_r, beta)
        margin = (chosen - rejected).data
        metrics = {
            "reward_chosen": chosen.data.mean(), "reward_rejected": rejected.data.mean(),
            "reward_margin": margin.mean(), "reward_accuracy": (margin > 0).mean(),
            "tokens": int(np.size(c_ids) * 2),
        }  # fmt: skip
        if sft_weight:  # (in array ops: under the compiled step the targets are traced)
            xp = pi_c.backend.xp
            scored = xp.sum(xp.asarray(c_targets) != -100)
            nll = -pi_c.sum() / scored
            loss = loss + sft_weight * nll
            metrics["chosen_nll"] = nll.data
        return loss, metrics

    return loss_fn
