"""Exercises for lesson 06: speculative decoding. Replace each ``raise NotImplementedError``.

A cheap proposer - a small draft model, or a lookup in the text so far - guesses ``k``
tokens; one forward of the target model scores them all; a rule keeps the guesses the
target agrees with and replaces the first one it does not. You write that rule and the
distribution it redraws from (6.1, 6.2), the prompt-lookup proposer (6.3), and the
arithmetic that says when all this pays (6.4).

Everything here is plain NumPy. A distribution over a vocabulary of ``V`` tokens is a row of
``V`` non-negative numbers that sum to 1: ``p`` is always the target's, ``q`` the draft's.

Grade with ``tinyllm grade exercises -k ex06`` (lesson: lessons/06-speculative-decoding.md).
"""

import numpy as np  # noqa: F401 - you will need it


# --- Exercise 6.1 ---------------------------------------------------------------------------
def residual_distribution(p, q):
    """``max(0, p - q)``, normalised to sum to 1 along the last axis: what a rejected
    proposal is replaced with.

    p, q: arrays (..., V) of one shape, each row a distribution. Return a new float array of
    that shape. A row where ``max(0, p - q)`` is all zero (that happens only when ``p == q``,
    and then no proposal is ever rejected) returns that row of ``p`` instead.

    p = [0.5, 0.25, 0.15, 0.1, 0.0], q = [0.1, 0.2, 0.2, 0.2, 0.3]:
    max(0, p - q) = [0.4, 0.05, 0, 0, 0], which sums to 0.45, so the residual is
    [8/9, 1/9, 0, 0, 0]: only tokens the draft proposes *less* often than the target wants
    can make up for the rejections.
    """
    raise NotImplementedError("Exercise 6.1: the residual distribution max(0, p - q), normalised")


# --- Exercise 6.2 ---------------------------------------------------------------------------
def accept_or_resample(proposed, draft_probs, target_probs, rng):
    """The speculative rule for one round: how many proposals to keep, and the next token.

    proposed:     (k,) the draft's token ids, proposal i drawn from ``draft_probs[i]``.
    draft_probs:  (k, V) the draft's distributions q_0 .. q_{k-1}.
    target_probs: (k + 1, V) the target's distributions at the same positions, p_0 .. p_{k-1},
                  and p_k, the one after the last proposal.
    rng:          a ``np.random.Generator``. Take every random number from it (``rng.random()``,
                  ``rng.choice(V, p=...)``, ...), in whatever way you like: the grader checks
                  the distribution of your answers over many calls, not the exact numbers.

    Go through the proposals in order. Keep proposal i = x with probability
    ``min(1, p_i[x] / q_i[x])`` (``q_i[x] > 0``: it was drawn from q_i). At the first one
    rejected, stop: the next token is drawn from ``residual_distribution(p_i, q_i)`` (6.1),
    and the proposals after it are thrown away. If all k are kept, the next token - the
    *bonus* - is drawn from ``p_k``. With k = 0 that is all there is: one token from p_0.

    Return ``(n_kept, next_token)``, two Python ints, 0 <= n_kept <= k. The round's new tokens
    are ``proposed[:n_kept]`` followed by ``next_token``, and each of them then has exactly the
    target's distribution at its position (lesson 06, section 3).

    Greedy decoding is the one-hot case: with p_0 = [0, 1, 0], q_0 = [0, 1, 0], p_1 = [1, 0, 0]
    and proposed [1], the target agrees (1 / 1: kept for sure) and the bonus is token 0: (1, 0).
    Had the draft proposed 2 (q_0 = [0, 0, 1]), p_0[2] = 0 rejects it for sure and the
    residual max(0, p_0 - q_0) = [0, 1, 0] gives token 1: (0, 1).
    """
    raise NotImplementedError("Exercise 6.2: accept each proposal with min(1, p/q), or resample")


# --- Exercise 6.3 ---------------------------------------------------------------------------
def lookup_proposals(ids, k, max_ngram=3):
    """Prompt-lookup decoding's guess: up to ``k`` tokens that followed the newest n-gram of
    ``ids`` (a 1-D array of token ids) the last time it occurred before.

    For n = min(max_ngram, len(ids) - 1) down to 1: the n-gram is ``ids[-n:]``; look for it
    starting at positions 0 .. len(ids) - n - 1 (anywhere but its own place at the end;
    an occurrence may overlap the end). If found, take the *latest* such start s and return
    ``ids[s + n : s + n + k]`` - which can be shorter than k when it runs into the end. If no
    n-gram of any length occurs, return an empty array. Return an integer array.

    ids [5, 6, 7, 8, 1, 5, 6], k = 2: the 3-gram "1 5 6" does not occur before; "5 6" does, at
    position 0, followed by 7 8 - so [7, 8]. ids [4, 4, 4], max_ngram = 2: "4 4" occurs at 0,
    followed by ids[2:] = [4]. ids [1, 2, 3]: nothing repeats, [].
    """
    raise NotImplementedError("Exercise 6.3: the tokens that followed the newest n-gram before")


# --- Exercise 6.4 ---------------------------------------------------------------------------
def expected_tokens_per_round(acceptance_rate, k):
    """The mean number of tokens one round (one target forward) yields, as a float.

    Each of the k proposals is kept with probability a = ``acceptance_rate`` (independently,
    the model of Leviathan et al.), until the first rejection; the round adds one more token
    (the replacement, or the bonus). So it yields 1 token with probability 1 - a, 2 with
    a (1 - a), ..., and k + 1 when all are kept (probability a^k):

        E[tokens] = 1 + a + a^2 + ... + a^k = (1 - a^(k+1)) / (1 - a),   and k + 1 at a = 1

    a = 0.8, k = 4: (1 - 0.8^5) / 0.2 = 3.3616. a = 0: always 1.
    """
    raise NotImplementedError("Exercise 6.4: the expected tokens per round")


def speedup(acceptance_rate, k, draft_cost):
    """How many times faster speculative decoding is than plain decoding, as a float.

    ``draft_cost`` c is the cost of one draft forward relative to one target forward. A round
    costs k draft forwards and one target forward - k c + 1 in units of a target forward, the
    price of one token without speculation (scoring k + 1 tokens at once is taken to cost what
    one does: decoding is bound by reading the weights) - and yields
    ``expected_tokens_per_round(a, k)`` tokens:

        speedup = (1 - a^(k+1)) / ((1 - a) (k c + 1))

    a = 0.8, k = 4, c = 0.05: 3.3616 / 1.2 = 2.8013. A draft the target never agrees with
    (a = 0) makes it slower: 1 / (k c + 1).
    """
    raise NotImplementedError("Exercise 6.4: the speedup over plain decoding")


def best_draft_tokens(acceptance_rate, draft_cost, max_k=16):
    """The draft length k in 1 .. max_k with the largest ``speedup``, as an int (the smallest
    such k on a tie).

    More proposals mean more tokens per round, but each costs a draft forward and is less
    likely to be reached: a = 0.8 and c = 0.05 want k = 8 (a speedup of 3.09); a sure draft
    (a = 1) that costs nothing wants as many as allowed. When even the best k has a speedup
    below 1, speculation does not pay at all - but the best k is still returned.
    """
    raise NotImplementedError("Exercise 6.4: the draft length with the largest speedup")
