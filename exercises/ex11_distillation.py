"""Exercises for lesson 11: knowledge distillation. Replace each ``raise NotImplementedError``.

A student learns from a teacher's whole next-token distribution, not only from the one token
the data holds. Both distributions are softened with a temperature T (11.1); the student is
scored by the KL divergence from the teacher's softened distribution to its own, times T^2
(11.2), mixed with the ordinary cross-entropy on the labels (11.3); and its gradient with
respect to the student's logits has a closed form (11.4).

Everything here is plain NumPy. Logits are arrays (..., V) with the vocabulary on the last
axis - (B, T, V) for a batch of rows - and targets are integer arrays (...) of token ids,
with -100 where a position is not scored (the prompt, the padding). The teacher's logits are
fixed numbers: only the student gets a gradient.

Grade with ``tinyllm grade exercises -k ex11`` (lesson: lessons/11-distillation.md).
"""

import numpy as np  # noqa: F401 - you will need it

IGNORE = -100  # a target that is not scored (PyTorch's ignore_index)


# --- Exercise 11.1 --------------------------------------------------------------------------
def soften(logits, temperature):
    """``softmax(logits / temperature)`` along the last axis: an array of logits' shape.

    logits:      an array (..., V).
    temperature: a number > 0. T = 1 is the model's own distribution; T > 1 flattens it
                 (every ratio p_i / p_j becomes (p_i / p_j)^(1/T)), T < 1 sharpens it, and
                 as T -> 0 it becomes one-hot on the largest logit.

    Stay finite for huge logits: subtract each row's max before exponentiating.

    logits [0, ln 2, ln 4] (probabilities 1 : 2 : 4 at T = 1):
        T = 1 -> [0.142857, 0.285714, 0.571429]    (1, 2, 4) / 7
        T = 2 -> [0.226541, 0.320377, 0.453082]    (1, sqrt 2, 2) / (3 + sqrt 2)
        T = 0.5 -> [0.047619, 0.190476, 0.761905]  (1, 4, 16) / 21
    """
    raise NotImplementedError("Exercise 11.1: the softmax at a temperature")


def log_soften(logits, temperature):
    """``log softmax(logits / temperature)`` along the last axis: an array of logits' shape.

    Compute it as ``x - logsumexp(x)`` with x = logits / T (the max subtracted first), not as
    ``np.log(soften(...))``: a probability that underflows to 0 would give -inf, where the
    log-probability is a finite, very negative number.

    logits [0, 1000] at T = 1 -> [-1000, 0].
    """
    raise NotImplementedError("Exercise 11.1: the log-softmax at a temperature")


# --- Exercise 11.2 --------------------------------------------------------------------------
def soft_target_loss(student_logits, teacher_logits, targets, temperature, top_k=None):
    """The soft-label term of the distillation loss, as a float:

        T^2 * mean over scored positions of KL(p || q),
        p = softmax(teacher / T),  q = softmax(student / T),
        KL(p || q) = sum_i p_i (log p_i - log q_i)

    student_logits, teacher_logits: arrays (..., V) of one shape.
    targets:     an integer array (...); the positions where it is -100 are not scored (the
                 targets' values are not used otherwise: this term needs no labels).
    temperature: T > 0.
    top_k:       None for the teacher's whole distribution; or an integer k: the teacher
                 keeps its k largest logits at each position and p is the softmax of those k
                 alone (at temperature T), zero on every other token. The student keeps its
                 full distribution over V, so the sum runs over the teacher's k tokens only.
                 (That is what a cache of the teacher holds: k logits and their ids.)

    Why T^2: the KL's gradient with respect to a student logit is (q - p) / T, which shrinks
    like 1 / T^2 as T grows (q - p itself shrinks like 1 / T); the T^2 restores its scale.
    No position scored: 0.

    One position, teacher [0, 0] (p = [1/2, 1/2]), student [ln 3, 0] (q = [3/4, 1/4]) at T = 1:
    KL = 1/2 ln(2/3) + 1/2 ln 2 = 1/2 ln(4/3) = 0.143841. Student [2 ln 3, 0] at T = 2 has the
    same q, so the same KL, times T^2 = 4: 0.575364.
    Teacher [3, 1, 0, -5] with top_k 2, student [0, 0, 0, 0]: p = softmax([3, 1]) =
    [0.880797, 0.119203, 0, 0], q = 1/4 each, KL = 1.020961.
    """
    raise NotImplementedError("Exercise 11.2: T^2 times the KL from the teacher to the student")


# --- Exercise 11.3 --------------------------------------------------------------------------
def distillation_loss(student_logits, teacher_logits, targets, temperature, alpha, top_k=None):
    """Hinton et al.'s distillation loss, as a float:

        alpha * soft_target_loss(...)  +  (1 - alpha) * cross_entropy(student, targets)

    The cross-entropy is the ordinary one, at temperature 1, on the hard labels: the mean of
    ``-log softmax(student)[target]`` over the scored positions (targets != -100; 0 when none
    is). ``alpha`` in [0, 1] weighs the soft labels: alpha = 0 is plain fine-tuning on the
    labels, alpha = 1 learns from the teacher alone. (Some write the mix the other way round,
    with alpha on the labels; tinyllm's ``--alpha`` is the KL term's weight, as here.)

    Student [ln 3, 0], target 0, teacher [0, 0], T = 1: the cross-entropy is -ln(3/4) =
    0.287682 and the soft term 0.143841 (11.2), so alpha 0 gives 0.287682, alpha 1 gives
    0.143841 and alpha 0.5 their mean, 0.215762.
    """
    raise NotImplementedError("Exercise 11.3: the soft and the hard loss, mixed")


# --- Exercise 11.4 --------------------------------------------------------------------------
def distillation_grad(student_logits, teacher_logits, targets, temperature, alpha, top_k=None):
    """``d distillation_loss / d student_logits``: an array of student_logits' shape.

    Both terms are means over the N scored positions. At a scored position, with
    q_T = softmax(student / T), p the teacher's (top-k) distribution at T, q_1 =
    softmax(student) and y the one-hot label:

        d / d student = alpha * T^2 * (q_T - p) / T / N  +  (1 - alpha) * (q_1 - y) / N
                      = (alpha * T * (q_T - p) + (1 - alpha) * (q_1 - y)) / N

    and 0 at every position that is not scored. With the T^2, the soft part is T (q_T - p);
    at a large T, for logits of mean 0 over the vocabulary, that is close to
    (student - teacher) / V: distillation at high temperature matches the logits themselves.

    One position, student [2 ln 3, 0], teacher [0, 0], target 0, T = 2, alpha 0.5:
    q_T = [3/4, 1/4], p = [1/2, 1/2], q_1 = [9/10, 1/10]:
    0.5 * 2 * [1/4, -1/4] + 0.5 * [-1/10, 1/10] = [0.2, -0.2].
    """
    raise NotImplementedError("Exercise 11.4: the gradient of the distillation loss")
