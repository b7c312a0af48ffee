"""Exercises for lesson 03: mixture of experts. Replace each ``raise NotImplementedError`` with code.

Everything here is plain NumPy on flattened tokens: ``N`` tokens (batch x time folded
together), each a vector of ``d`` features, routed among ``E`` experts, ``k`` per token.
The router's scores are ``router_logits = x @ W_router``, shape (N, E).

Grade with ``tinyllm grade exercises -k ex03`` (lesson: lessons/03-mixture-of-experts.md).
"""

import numpy as np  # noqa: F401 - you will need it


# --- Exercise 3.1 ---------------------------------------------------------------------------
def top_k_routing(router_logits, k):
    """Send each token to its ``k`` best experts; return ``(chosen, gates)``.

    router_logits: (N, E) floats, the router's score of every expert for every token.
    chosen: (N, k) integer expert indices, each row best first (highest probability).
    gates:  (N, k) the softmax probabilities of the chosen experts, divided by their sum so
            each row adds up to 1 (Mixtral's renormalization).

    Steps: probs = softmax over the experts (subtract each row's max before ``np.exp``, or
    logits like 1000 overflow to inf); the indices of the k largest per row
    (``np.argsort(-probs, axis=-1)`` and keep k columns); their probabilities
    (``np.take_along_axis``); divide by the row sums.

    top_k_routing(np.log([[0.1, 0.6, 0.3]]), 2) -> chosen [[1, 2]], gates [[0.667, 0.333]]
    """
    raise NotImplementedError("Exercise 3.1: route each token to its top-k experts")


# --- Exercise 3.2 ---------------------------------------------------------------------------
def load_balancing_loss(probs, chosen):
    """The load-balancing loss of Switch Transformer and Mixtral, as a float.

    probs:  (N, E) router probabilities, the full softmax (not only the chosen ones).
    chosen: (N, k) the experts each token was routed to (what top_k_routing returns).

        loss = E * sum_e f_e * P_e
        f_e  = (how many of the N*k routed slots went to expert e) / N    (sums to k)
        P_e  = mean over the N tokens of probs[:, e]                        (sums to 1)

    Perfectly balanced routing gives k; collapse onto k experts gives up to E.
    Hint: ``np.bincount(..., minlength=E)`` counts the slots.

    Uniform probs 1/4 over E=4 experts, chosen [[0, 1], [2, 3]]: f = 1/2 each, P = 1/4
    each, loss = 4 * 4 * (1/2 * 1/4) = 2.0 = k.
    """
    raise NotImplementedError("Exercise 3.2: compute the load-balancing loss")


def load_balancing_grad(probs, chosen):
    """d(loss)/d(probs), shape (N, E), for the loss of ``load_balancing_loss``.

    ``f`` is counted from an argsort, so it is a constant: no gradient flows through it.
    Only ``P_e`` = the mean of ``probs[:, e]`` depends on ``probs``. So every entry of
    column e gets the same gradient. Which? (It is larger for busier experts: gradient
    descent lowers the probability of the experts that already get the most tokens.)
    """
    raise NotImplementedError("Exercise 3.2: the gradient of the loss with respect to probs")


# --- Exercise 3.3 ---------------------------------------------------------------------------
def moe_combine(x, chosen, gates, experts):
    """Run the experts on their tokens and mix: ``y[n] = sum_j gates[n, j] * f_{chosen[n, j]}(x[n])``.

    x:       (N, d) token vectors.
    chosen:  (N, k) expert index of each of a token's k slots (no expert twice in a row).
    gates:   (N, k) the weight of each slot.
    experts: a list of E functions; ``experts[e](rows)`` maps an (n, d) array to (n, d).
    returns: (N, d).

    Loop over the experts, not the tokens: for expert e, find the (token, slot) pairs routed
    to it (``np.nonzero(chosen == e)`` gives both), call the expert ONCE on those tokens'
    rows, multiply its output by their gates, and add it into y at those tokens. Skip an
    expert no token chose. Each expert must see only its own tokens: that is what makes a
    mixture cost ``k`` experts per token instead of ``E``.
    """
    raise NotImplementedError("Exercise 3.3: run each expert on its tokens and mix the outputs")
