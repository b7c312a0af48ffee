"""Exercises for lesson 09: preference tuning. Replace each ``raise NotImplementedError`` with code.

A reward model scores a whole conversation with one number, read at its last token (9.4),
and learns from pairs of a chosen and a rejected response with the Bradley-Terry loss (9.1).
DPO needs no reward model: it scores a response by its log-probability under the policy -
the sum over the response's tokens (9.2) - relative to a frozen reference model, and puts
that implicit reward into the same loss (9.3).

Everything here is plain NumPy: scores and log-probabilities are arrays (N,) with one entry
per pair, logits are (B, T, V) and hidden states (B, T, D).

Grade with ``tinyllm grade exercises -k ex09`` (lesson: lessons/09-preference-tuning.md).
"""

import numpy as np  # noqa: F401 - you will need it


# --- Exercise 9.1 ---------------------------------------------------------------------------
def log_sigmoid(x):
    """``log(sigmoid(x)) = -log(1 + exp(-x))``, elementwise, finite for every float ``x``.

    x: an array of any shape (or a float). Return a float array of that shape.

    Written as it stands, ``exp(-x)`` overflows to inf for x below about -710 in float64
    (-88 in float32) and the answer becomes -inf, where it should be about x. Split on the
    sign instead: for x < 0, ``log(sigmoid(x)) = x - log(1 + exp(x))``; together,

        log_sigmoid(x) = min(x, 0) - log(1 + exp(-|x|))

    where ``exp(-|x|)`` is at most 1 and ``np.log1p`` keeps the small terms exact.

    x = [0, 2, -1000, 1000] -> [-0.693147, -0.126928, -1000, -0] (log 2, log(1 + e^-2), ...).
    """
    raise NotImplementedError("Exercise 9.1: a log-sigmoid that never overflows")


def bradley_terry_loss(chosen, rejected):
    """The Bradley-Terry loss of a reward model on N pairs, as a float.

    chosen, rejected: arrays (N,), the scores of each pair's preferred and other response.
    The model says the chosen one is preferred with probability ``sigmoid(chosen -
    rejected)``; the loss is the mean over pairs of its negative log:

        loss = mean of -log_sigmoid(chosen - rejected)

    It depends on the differences only: adding one number to every score changes nothing.

    chosen [2, 0], rejected [0, 1]: margins [2, -1], losses [0.126928, 1.313262], mean
    0.720095. Equal scores give log 2 = 0.693147 (no preference).
    """
    raise NotImplementedError("Exercise 9.1: the Bradley-Terry loss")


def bradley_terry_grad(chosen, rejected):
    """``(d loss / d chosen, d loss / d rejected)`` of ``bradley_terry_loss``, each (N,).

    With margin m = chosen - rejected, d(-log sigmoid(m))/dm = -(1 - sigmoid(m)) =
    -sigmoid(-m): a pair ranked wrong (m < 0) pushes with nearly full force, a pair ranked
    right by a wide margin hardly at all. The mean divides by N, and the rejected score gets
    the opposite sign.

    For the example above: sigmoid(-2) = 0.119203 and sigmoid(1) = 0.731059, so
    d/d chosen = [-0.059601, -0.365529] and d/d rejected = [0.059601, 0.365529].
    """
    raise NotImplementedError("Exercise 9.1: the gradient of the Bradley-Terry loss")


# --- Exercise 9.2 ---------------------------------------------------------------------------
def sequence_logprob(logits, targets, ignore_index=-100):
    """Each row's summed log-probability of its scored targets: an array (B,).

    logits:  (B, T, V) a model's scores; ``logits[b, t]`` predicts the token after position t.
    targets: (B, T) integer token ids; ``ignore_index`` where nothing is scored - the prompt,
             the padding - so that only the response's tokens (and the end-of-turn token
             closing it) count.

        result[b] = sum over t with targets[b, t] != ignore_index of
                    log softmax(logits[b, t])[targets[b, t]]

    A sum, not a mean: log p(response | prompt) = sum of log p(token | everything before).
    A row with nothing scored gives 0. Stay finite for huge logits (subtract each row's max
    before exponentiating, as in a log-sum-exp).

    logits [[[0, 0], [ln 3, 0], [5, 5]]], targets [[1, 0, -100]]:
    log(1/2) + log(3/4) = log(3/8) = -0.980829.
    """
    raise NotImplementedError("Exercise 9.2: a response's log-probability from logits")


# --- Exercise 9.3 ---------------------------------------------------------------------------
def dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta):
    """DPO's loss and implicit rewards from the four log-probabilities of N pairs.

    policy_chosen, policy_rejected: (N,) log pi(y|x) of each pair's responses under the policy.
    ref_chosen, ref_rejected:       (N,) the same under the frozen reference model.
    beta:                           > 0, how far the policy may move from the reference.

    Return ``(loss, chosen_rewards, rejected_rewards)``: a float and two arrays (N,).

        chosen_rewards   = beta * (policy_chosen - ref_chosen)       the implicit rewards
        rejected_rewards = beta * (policy_rejected - ref_rejected)
        loss = mean of -log_sigmoid(chosen_rewards - rejected_rewards)

    The Bradley-Terry loss of 9.1 on the implicit rewards. When the policy is the reference
    every reward is 0 and the loss is log 2, whatever the pairs.

    policy -3, -9; reference -4, -7; beta 0.5: rewards 0.5 and -1.0, margin 1.5,
    loss -log sigmoid(1.5) = 0.201413.
    """
    raise NotImplementedError("Exercise 9.3: the DPO loss and the implicit rewards")


def dpo_grad(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta):
    """``(d loss / d policy_chosen, d loss / d policy_rejected)`` of ``dpo_loss``, each (N,).

    The reference is frozen: it has no gradient. With the margin
    h = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected), each pair's loss is
    -log sigmoid(beta * h), whose derivative in h is -beta * sigmoid(-beta * h): the weight
    is largest on pairs the implicit reward ranks wrong. The chosen log-probability is pushed
    up and the rejected one down, by the same amount, divided by N.

    For the example above: -0.5 * sigmoid(-1.5) = -0.091213 for the chosen one, +0.091213
    for the rejected one.
    """
    raise NotImplementedError("Exercise 9.3: the gradient of the DPO loss")


# --- Exercise 9.4 ---------------------------------------------------------------------------
def last_token_scores(hidden, lengths, weight):
    """A reward model's scores: each row's hidden state at its last token, times ``weight``.

    hidden:  (B, T, D) the final hidden states of B conversations padded on the right.
    lengths: (B,) how many of each row's T positions are real (1 <= lengths[b] <= T).
    weight:  (D,) the scalar head.

    Return an array (B,): ``hidden[b, lengths[b] - 1] @ weight``. The last real token is the
    only position whose (causal) attention has seen the whole conversation; the padding after
    it must not be read.

    hidden [[[1, 0], [0, 2], [9, 9]], [[3, 1], [1, 1], [2, 0]]], lengths [2, 3],
    weight [1, -1]: rows read at positions 1 and 2, scores [0 - 2, 2 - 0] = [-2, 2].
    """
    raise NotImplementedError("Exercise 9.4: read the scores at each row's last token")


def preference_metrics(chosen_rewards, rejected_rewards):
    """What a preference trainer logs: ``{"accuracy": ..., "margin": ...}``, two floats.

    accuracy: the share of pairs whose chosen reward is *strictly* larger (a tie is not a
              preference: at the start of DPO every margin is 0 and the accuracy is 0).
    margin:   the mean of chosen_rewards - rejected_rewards.

    chosen [0.5, -0.2, 1.0], rejected [0.1, 0.3, 1.0]: accuracy 1/3, margin
    (0.4 - 0.5 + 0) / 3 = -0.033333.
    """
    raise NotImplementedError("Exercise 9.4: the preference accuracy and the margin")
