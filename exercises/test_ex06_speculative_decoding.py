"""Grading tests for exercises/ex06_speculative_decoding.py (lesson 06: speculative decoding).

Answers come from small cases worked out by hand in the comments and from tinyllm's own
``residual_distribution``, ``accept_or_resample``, ``lookup_proposals`` and
``expected_tokens_per_round`` (tinyllm/infer/speculative.py). The accept/resample rule is
random, and any way of drawing its random numbers is fine, so it is graded two ways: cases
whose answer no draw can change (greedy, and certain acceptances and rejections), and the
frequencies of its answers over 20,000 rounds, against the exact probabilities, with a
chi-square test. A correct rule fails that test about once in 10,000 seeds; the rules that
look right but are not (redrawing a rejected token from ``p``, keeping a proposal with
probability ``p[x]``) fail it by hundreds of standard errors.
"""

import math

import numpy as np
import pytest

from tinyllm.infer.speculative import (
    accept_or_resample,
    expected_tokens_per_round,
    lookup_proposals,
    residual_distribution,
)

EX = "ex06_speculative_decoding"
ROUNDS = 20_000  # rounds per statistical test
MIN_P_VALUE = 1e-4  # a correct rule passes with probability 0.9999


def chi_square_p_value(observed, expected):
    """The chance of a chi-square statistic at least this large if ``observed`` (counts) were
    drawn from ``expected`` (counts of the same total): ``P(X >= stat)`` for X chi-square
    with (cells - 1) degrees of freedom. A count in a cell of expectation 0 gives 0.

    The tail is the regularized gamma Q(df/2, stat/2), from Q(1, y) = exp(-y) or
    Q(1/2, y) = erfc(sqrt(y)) and Q(s + 1, y) = Q(s, y) + y^s exp(-y) / Gamma(s + 1), so the
    grade needs nothing beyond NumPy (scipy.stats.chi2.sf gives the same numbers).
    """
    observed, expected = np.asarray(observed, float), np.asarray(expected, float)
    possible = expected > 0
    if observed[~possible].sum() > 0:
        return 0.0  # a token that has probability 0 came out
    observed, expected = observed[possible], expected[possible]
    assert expected.min() >= 5, "too few expected counts for a chi-square test"
    y = float(((observed - expected) ** 2 / expected).sum()) / 2
    df = len(expected) - 1
    if y == 0 or df == 0:
        return 1.0
    s, tail = (1.0, math.exp(-y)) if df % 2 == 0 else (0.5, math.erfc(math.sqrt(y)))
    while s < df / 2:
        tail += math.exp(s * math.log(y) - y - math.lgamma(s + 1))
        s += 1
    return tail


# --- 6.1 the residual distribution ------------------------------------------------------------
@pytest.mark.exercise("6.1", points=1)
def test_residual_distribution_by_hand(exercise):
    """residual_distribution: small cases worked by hand"""
    ex = exercise(EX)
    p = np.array([0.5, 0.25, 0.15, 0.1, 0.0])
    q = np.array([0.1, 0.2, 0.2, 0.2, 0.3])
    kept = p.copy(), q.copy()
    # max(0, p - q) = [0.4, 0.05, 0, 0, 0], over its sum 0.45 (not |p - q|, not p - q)
    np.testing.assert_allclose(ex.residual_distribution(p, q), [8 / 9, 1 / 9, 0, 0, 0])
    np.testing.assert_array_equal(p, kept[0])  # the inputs are left as they were
    np.testing.assert_array_equal(q, kept[1])
    # Rows are independent; a row where p == q has no residual and gives p back.
    P = np.array([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.0, 0.0, 1.0]])
    Q = np.array([[0.2, 0.7, 0.1], [0.2, 0.5, 0.3], [1.0, 0.0, 0.0]])
    want = [[1.0, 0.0, 0.0], [0.2, 0.5, 0.3], [0.0, 0.0, 1.0]]  # the last: greedy, one-hot
    got = np.asarray(ex.residual_distribution(P, Q))
    assert got.shape == (3, 3)
    np.testing.assert_allclose(got, want, atol=1e-12)


def random_distributions(rng, shape, zeros=0.2):
    """Random distributions along the last axis, with about ``zeros`` of the entries 0."""
    x = rng.gamma(0.5, size=shape) * (rng.random(shape) > zeros)
    x[..., 0] += 1e-3  # every row keeps some mass
    return x / x.sum(axis=-1, keepdims=True)


@pytest.mark.exercise("6.1", points=2)
def test_residual_distribution_matches_tinyllm_and_rebuilds_p(exercise):
    """residual_distribution: tinyllm's, and min(p, q) + (1 - beta) residual = p"""
    ex = exercise(EX)
    rng = np.random.default_rng(0)
    for shape in [(7,), (4, 11), (2, 3, 50)]:
        p, q = random_distributions(rng, shape), random_distributions(rng, shape)
        if len(shape) > 1:
            q[0] = p[0]  # a row without residual
        got = np.asarray(ex.residual_distribution(p, q))
        np.testing.assert_allclose(got, residual_distribution(p, q), rtol=1e-10, atol=1e-15)
        # The proof of section 3 in numbers: a token comes out as an accepted proposal with
        # probability min(p, q), as a replacement with (1 - beta) * residual, beta the
        # chance of acceptance; the two add up to p.
        accepted = np.minimum(p, q)
        beta = accepted.sum(axis=-1, keepdims=True)
        np.testing.assert_allclose(accepted + (1 - beta) * got, p, atol=1e-12)


# --- 6.2 the accept/resample rule -------------------------------------------------------------
def one_hot(tokens, V):
    return np.eye(V)[np.asarray(tokens)]  # (len(tokens), V)


def check_round(ex, proposed, draft_probs, target_probs, want, seeds=range(5)):
    """The rule's answer, and tinyllm's, must be ``want`` for every seed: no draw changes it."""
    proposed = np.asarray(proposed, dtype=np.int64)
    for seed in seeds:
        assert accept_or_resample(proposed, draft_probs, target_probs, rng(seed)) == want
        got = ex.accept_or_resample(proposed, draft_probs, target_probs, rng(seed))
        assert tuple(got) == want, f"proposed {proposed.tolist()}: got {got}, want {want}"
        assert all(isinstance(n, (int, np.integer)) for n in got)


def rng(seed):
    return np.random.default_rng(seed)


@pytest.mark.exercise("6.2", points=1)
def test_accept_or_resample_greedy(exercise):
    """accept_or_resample: greedy (one-hot) rounds are the target's own argmax"""
    ex = exercise(EX)
    V = 6
    target_argmax = [3, 1, 4, 1, 5]  # p_0 .. p_4 as one-hot rows
    p = one_hot(target_argmax, V)
    # The draft agrees on 3 and 1, not on 2: keep 2, and the residual of p_2 = e_4 minus
    # q_2 = e_2 is e_4, the target's own choice.
    check_round(ex, [3, 1, 2, 1], one_hot([3, 1, 2, 1], V), p, want=(2, 4))
    # Agrees on all four: keep them, and the bonus is p_4's token, 5 (not p_3's 1).
    check_round(ex, [3, 1, 4, 1], one_hot([3, 1, 4, 1], V), p, want=(4, 5))
    # Wrong at once: nothing kept, the target's token 3 instead. Later proposals don't count.
    check_round(ex, [0, 1, 4, 1], one_hot([0, 1, 4, 1], V), p, want=(0, 3))
    # No proposal at all (k = 0): one token from p_0.
    check_round(ex, np.zeros(0, np.int64), np.zeros((0, V)), p[:1], want=(0, 3))


@pytest.mark.exercise("6.2", points=1)
def test_accept_or_resample_sure_cases(exercise):
    """accept_or_resample: p >= q keeps for sure, p = 0 rejects for sure"""
    ex = exercise(EX)
    # p[x] >= q[x]: min(1, p/q) = 1, kept whatever the draw; then a one-hot bonus.
    p = np.array([[0.2, 0.8, 0.0], [0.1, 0.1, 0.8], [0.0, 0.0, 1.0]])
    q = np.array([[0.5, 0.5, 0.0], [0.1, 0.1, 0.8]])
    check_round(ex, [1, 2], q, p, want=(2, 2), seeds=range(20))
    check_round(ex, [1, 0], q, p, want=(2, 2), seeds=range(20))  # 0.1 / 0.1 = 1
    # p[x] = 0: rejected whatever the draw. max(0, p - q) = [0.5, 0, 0]: the replacement is 0.
    p = np.array([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]])
    q = np.array([[0.0, 0.5, 0.5]])
    check_round(ex, [2], q, p, want=(0, 0), seeds=range(20))


# Three proposals over five tokens, the target's p_0 .. p_3 and the draft's q_0 .. q_2, chosen
# far apart so that a wrong rule shows: the draft over-proposes token 4, which p_0 never makes.
P = np.array([
    [0.5, 0.25, 0.15, 0.1, 0.0],
    [0.1, 0.1, 0.2, 0.3, 0.3],
    [0.2, 0.2, 0.2, 0.2, 0.2],
    [0.05, 0.05, 0.1, 0.3, 0.5],  # p_3: the bonus after three kept proposals
])  # fmt: skip
Q = np.array([
    [0.1, 0.2, 0.2, 0.2, 0.3],
    [0.3, 0.3, 0.2, 0.1, 0.1],
    [0.6, 0.1, 0.1, 0.1, 0.1],
])  # fmt: skip


def rounds(rule, P, Q, seed):
    """``ROUNDS`` rounds of ``rule``, each with proposals drawn from the rows of ``Q``:
    (proposals (n, k), kept (n,), next tokens (n,))."""
    k, V = Q.shape
    draws = np.random.default_rng(1000 + seed)  # the draft's draws: not the rule's generator
    proposals = np.stack([draws.choice(V, size=ROUNDS, p=row) for row in Q], axis=1)  # (n, k)
    generator = np.random.default_rng(seed)
    answers = [rule(x, Q, P, generator) for x in proposals]
    kept, following = (np.array([int(a[i]) for a in answers]) for i in (0, 1))
    return proposals, kept, following


def outputs_at(position, proposals, kept, following):
    """The token each round put at ``position`` (0 .. k) of its output, where it got there."""
    reached = kept >= position
    if position == proposals.shape[1]:
        return following[reached]  # the bonus: after all k proposals
    return np.where(kept[reached] > position, proposals[reached, position], following[reached])


@pytest.mark.exercise("6.2", points=2)
def test_accept_or_resample_gives_the_target_distribution(exercise):
    """accept_or_resample: every output position has the target's distribution"""
    ex = exercise(EX)
    for seed, k in [(0, 1), (1, 3)]:
        proposals, kept, following = rounds(ex.accept_or_resample, P[: k + 1], Q[:k], seed)
        assert ((0 <= kept) & (kept <= k)).all(), f"n_kept outside 0..{k}: {set(kept)}"
        for position in range(k + 1):
            tokens = outputs_at(position, proposals, kept, following)
            reach = np.prod(np.minimum(P[:position], Q[:position]).sum(axis=-1))
            assert len(tokens) >= 100, (
                f"k={k}: {len(tokens)} of {ROUNDS} rounds reached output position {position}, "
                f"where the rule should keep the first {position} proposals in {reach:.0%}"
            )
            observed = np.bincount(tokens, minlength=5)
            expected = P[position] * len(tokens)
            p_value = chi_square_p_value(observed, expected)
            assert p_value > MIN_P_VALUE, (
                f"k={k}, output position {position}: frequencies {observed / len(tokens)}, "
                f"the target's p {P[position]} (chi-square p-value {p_value:.1e})"
            )


@pytest.mark.exercise("6.2", points=2)
def test_accept_or_resample_has_the_rounds_exact_law(exercise):
    """accept_or_resample: P(n_kept, next token), as tinyllm's rule makes it"""
    ex = exercise(EX)
    k, V = Q.shape
    # Proposal i is kept with probability beta_i = sum_x min(p_i, q_i) once reached; the next
    # token comes from the residual at the first rejection, or from p_k after all k.
    beta = np.minimum(P[:k], Q).sum(axis=-1)  # (k,)
    reach = np.concatenate([[1.0], np.cumprod(beta)])  # (k + 1,) P(n_kept >= j)
    law = np.zeros((k + 1, V))  # P(n_kept = j, next = t)
    for j in range(k):
        law[j] = reach[j] * (1 - beta[j]) * residual_distribution(P[j], Q[j])
    law[k] = reach[k] * P[k]
    assert law.sum() == pytest.approx(1.0)
    for seed in (2, 3):
        _, kept, following = rounds(ex.accept_or_resample, P, Q, seed)
        observed = np.zeros((k + 1, V))
        np.add.at(observed, (kept, following), 1)
        p_value = chi_square_p_value(observed.ravel(), law.ravel() * ROUNDS)
        assert p_value > MIN_P_VALUE, (
            f"P(n_kept = j) observed {observed.sum(axis=1) / ROUNDS}, expected "
            f"{law.sum(axis=1)} (chi-square p-value of the joint law {p_value:.1e})"
        )


# --- 6.3 prompt lookup ------------------------------------------------------------------------
def as_list(tokens):
    return np.asarray(tokens).astype(np.int64).tolist()


@pytest.mark.exercise("6.3", points=1)
def test_lookup_proposals_by_hand(exercise):
    """lookup_proposals: small cases worked by hand"""
    ex = exercise(EX)
    # "5 6" occurred at 0, followed by 7 8 ("1 5 6" never occurred before).
    assert as_list(ex.lookup_proposals(np.array([5, 6, 7, 8, 1, 5, 6]), k=2)) == [7, 8]
    ids = np.array([1, 2, 3, 4, 9, 1, 2, 3, 7, 1, 2, 3])
    # "1 2 3" occurred at 0 and 5: the latest wins, followed by 7 1.
    assert as_list(ex.lookup_proposals(ids, 2, max_ngram=3)) == [7, 1]
    # With 1-grams only, "3" last came at 7; what follows runs into the end: 4 tokens, not 5.
    assert as_list(ex.lookup_proposals(ids, 5, max_ngram=1)) == [7, 1, 2, 3]
    # The longest n-gram wins over a later shorter one: "1 2 3" at 0 (followed by 5 9) beats
    # "2 3" at 5 (followed by 6 1), which wins only when 3-grams are not looked up.
    ids = np.array([1, 2, 3, 5, 9, 2, 3, 6, 1, 2, 3])
    assert as_list(ex.lookup_proposals(ids, 2)) == [5, 9]
    assert as_list(ex.lookup_proposals(ids, 2, max_ngram=2)) == [6, 1]
    # An occurrence may overlap the end: "4 4" at 0, followed by the last 4.
    assert as_list(ex.lookup_proposals(np.array([4, 4, 4]), 3, max_ngram=2)) == [4]
    # Nothing repeats, or a single token: nothing to propose.
    assert len(ex.lookup_proposals(np.array([1, 2, 3]), 4)) == 0
    assert len(ex.lookup_proposals(np.array([7]), 4)) == 0


@pytest.mark.exercise("6.3", points=2)
def test_lookup_proposals_matches_tinyllm(exercise):
    """lookup_proposals: tinyllm's on random repetitive texts"""
    ex = exercise(EX)
    rng = np.random.default_rng(0)
    for _ in range(300):
        vocab = int(rng.integers(2, 8))  # small vocabularies: n-grams repeat
        ids = rng.integers(0, vocab, size=int(rng.integers(1, 30)))
        k, max_ngram = int(rng.integers(1, 8)), int(rng.integers(1, 5))
        want = lookup_proposals(ids, k, max_ngram=max_ngram)
        got = ex.lookup_proposals(ids.copy(), k, max_ngram=max_ngram)
        assert as_list(got) == as_list(want), f"ids {ids.tolist()}, k={k}, max_ngram={max_ngram}"


# --- 6.4 tokens per round, and the speedup ---------------------------------------------------
@pytest.mark.exercise("6.4", points=1)
def test_tokens_and_speedup_by_hand(exercise):
    """expected_tokens_per_round, speedup, best_draft_tokens: by hand"""
    ex = exercise(EX)
    assert ex.expected_tokens_per_round(0.8, 4) == pytest.approx((1 - 0.8**5) / 0.2)  # 3.3616
    assert ex.expected_tokens_per_round(0.0, 6) == pytest.approx(1.0)  # the next token only
    assert ex.expected_tokens_per_round(1.0, 6) == pytest.approx(7.0)  # every proposal + bonus
    assert ex.expected_tokens_per_round(0.5, 0) == pytest.approx(1.0)  # no proposals
    assert ex.speedup(0.8, 4, 0.05) == pytest.approx(3.3616 / 1.2)
    assert ex.speedup(0.8, 4, 0.0) == pytest.approx(3.3616)  # a free draft: tokens per round
    assert ex.speedup(0.0, 4, 0.1) == pytest.approx(1 / 1.4)  # useless: slower than plain
    assert ex.speedup(1.0, 3, 1.0) == pytest.approx(1.0)  # the target drafting for itself
    # The best k: 8 for a good cheap draft; 1 where more proposals only cost; all for a
    # perfect free one.
    assert ex.best_draft_tokens(0.8, 0.05) == 8
    assert ex.best_draft_tokens(0.6, 0.2) == 2
    assert ex.best_draft_tokens(0.3, 0.5, max_k=10) == 1
    assert ex.best_draft_tokens(1.0, 0.0, max_k=12) == 12
    assert ex.best_draft_tokens(0.0, 0.0, max_k=5) == 1  # a tie: the smallest k
    assert isinstance(ex.best_draft_tokens(0.8, 0.05), (int, np.integer))


@pytest.mark.exercise("6.4", points=2)
def test_tokens_and_speedup_match_tinyllm_and_simulation(exercise):
    """expected_tokens_per_round and speedup: tinyllm's, and simulated rounds"""
    ex = exercise(EX)
    rng = np.random.default_rng(0)
    for a in [0.0, 0.1, 0.35, 0.5, 0.75, 0.9, 0.99, 1.0]:
        for k in range(0, 10):
            want = expected_tokens_per_round(a, k)
            assert ex.expected_tokens_per_round(a, k) == pytest.approx(want, rel=1e-9)
            for c in (0.0, 0.02, 0.3, 1.0):
                assert ex.speedup(a, k, c) == pytest.approx(want / (k * c + 1), rel=1e-9)
        for c in (0.01, 0.1, 0.4):
            speedups = [expected_tokens_per_round(a, k) / (k * c + 1) for k in range(1, 17)]
            assert ex.best_draft_tokens(a, c, max_k=16) == 1 + int(np.argmax(speedups))
    # The formula is the mean of simulated rounds: proposals kept with probability a each
    # until the first rejection, plus one token.
    for a, k in [(0.6, 3), (0.85, 6)]:
        kept = np.cumprod(rng.random((200_000, k)) < a, axis=1).sum(axis=1)  # (n,)
        tokens = kept + 1
        standard_error = tokens.std() / np.sqrt(len(tokens))
        assert ex.expected_tokens_per_round(a, k) == pytest.approx(
            tokens.mean(), abs=5 * standard_error
        )
