"""Grading tests for exercises/ex09_preference_tuning.py (lesson 09: preference tuning).

Answers come from small cases worked out by hand in the comments, from tinyllm's own
``log_sigmoid``, ``bradley_terry_loss``, ``sequence_logps``, ``dpo_loss_from_logps``,
``RewardModel`` and ``reward_loss`` (their values and, through tinyllm's autograd, their
gradients), and, where it is installed, from PyTorch: ``logsigmoid``, ``log_softmax`` and
autograd through the same formulas.
"""

import importlib.util
import math

import numpy as np
import pytest

import tinyllm
from tinyllm import Tensor
from tinyllm import functional as F
from tinyllm.data.preferences import preference_rows
from tinyllm.models import Transformer, get_preset
from tinyllm.models.reward import RewardModel
from tinyllm.tokenizer import Tokenizer
from tinyllm.train.preference import (
    bradley_terry_loss,
    dpo_loss_from_logps,
    reward_loss,
    sequence_logps,
)

EX = "ex09_preference_tuning"

# The PyTorch case joins the oracles only where it can run. (A skipped case would be graded
# as failed, so without PyTorch the tinyllm cases carry all the points.)
ORACLES = ["tinyllm", "torch"] if importlib.util.find_spec("torch") else ["tinyllm"]


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


def score_pairs(seed, n=7, scale=4.0):
    """Random float64 scores (n,) of chosen and rejected responses, some pairs ranked wrong."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal(n) * scale, rng.standard_normal(n) * scale


# --- 9.1 the Bradley-Terry loss ---------------------------------------------------------------
@pytest.mark.exercise("9.1", points=1)
def test_bradley_terry_by_hand(exercise):
    """log_sigmoid, bradley_terry_loss and its gradient: small cases worked by hand"""
    ex = exercise(EX)
    # log sigmoid(0) = -log 2; log sigmoid(2) = -log(1 + e^-2); about x far below 0; 0 far above.
    with np.errstate(over="raise", divide="raise", invalid="raise"):
        got = np.asarray(ex.log_sigmoid(np.array([0.0, 2.0, -1000.0, 1000.0])))
    np.testing.assert_allclose(got, [-math.log(2), -math.log1p(math.exp(-2)), -1000.0, 0.0],
                               rtol=1e-12, atol=1e-300)  # fmt: skip
    assert got.shape == (4,)
    # Margins 2 and -1: losses log(1 + e^-2) and log(1 + e), mean 0.720095.
    chosen, rejected = np.array([2.0, 0.0]), np.array([0.0, 1.0])
    want = (math.log1p(math.exp(-2)) + math.log1p(math.e)) / 2
    assert float(ex.bradley_terry_loss(chosen, rejected)) == pytest.approx(want, rel=1e-12)
    # Equal scores: no preference, log 2. Only differences count: a shift changes nothing.
    assert float(ex.bradley_terry_loss(np.ones(3), np.ones(3))) == pytest.approx(math.log(2))
    shifted = ex.bradley_terry_loss(chosen + 1e3, rejected + 1e3)
    assert float(shifted) == pytest.approx(want, rel=1e-9)
    # A pair ranked wrong by 1000 costs 1000, not inf; one ranked right by 1000 costs 0.
    with np.errstate(over="raise", divide="raise", invalid="raise"):
        assert float(ex.bradley_terry_loss(np.array([0.0]), np.array([1000.0]))) == pytest.approx(
            1000.0
        )
        assert float(ex.bradley_terry_loss(np.array([1000.0]), np.array([0.0]))) == pytest.approx(
            0.0, abs=1e-300
        )
    # The gradient: -sigmoid(-m) / N for the chosen score, the opposite for the rejected.
    d_chosen, d_rejected = ex.bradley_terry_grad(chosen, rejected)
    np.testing.assert_allclose(d_chosen, [-sigmoid(-2) / 2, -sigmoid(1) / 2], rtol=1e-12)
    np.testing.assert_allclose(d_rejected, [sigmoid(-2) / 2, sigmoid(1) / 2], rtol=1e-12)


def library_bradley_terry(oracle, chosen, rejected):
    """(loss, d loss / d chosen, d loss / d rejected) from tinyllm or from PyTorch."""
    if oracle == "tinyllm":
        c, r = Tensor(chosen, requires_grad=True), Tensor(rejected, requires_grad=True)
        loss = bradley_terry_loss(c, r)
        loss.backward()
        return loss.item(), c.grad, r.grad
    import torch

    c, r = torch.tensor(chosen, requires_grad=True), torch.tensor(rejected, requires_grad=True)
    loss = -torch.nn.functional.logsigmoid(c - r).mean()
    loss.backward()
    return loss.item(), c.grad.numpy(), r.grad.numpy()


@pytest.mark.exercise("9.1", points=2)
@pytest.mark.parametrize("oracle", ORACLES)
def test_bradley_terry_matches_the_libraries(exercise, oracle):
    """bradley_terry_loss, its gradient and log_sigmoid: a library's, on random scores"""
    ex = exercise(EX)
    for seed, scale in [(0, 1.0), (1, 4.0), (2, 300.0)]:  # the last: margins in the hundreds
        chosen, rejected = score_pairs(seed, scale=scale)
        loss, d_chosen, d_rejected = library_bradley_terry(oracle, chosen, rejected)
        assert float(ex.bradley_terry_loss(chosen, rejected)) == pytest.approx(loss, rel=1e-10)
        got_c, got_r = ex.bradley_terry_grad(chosen, rejected)
        np.testing.assert_allclose(got_c, d_chosen, rtol=1e-10, atol=1e-300)
        np.testing.assert_allclose(got_r, d_rejected, rtol=1e-10, atol=1e-300)
    x = np.concatenate([np.linspace(-800, 800, 41), [-1e-9, 1e-9, -40.0, 40.0]])
    if oracle == "tinyllm":
        want = F.log_sigmoid(Tensor(x)).numpy()
    else:
        import torch

        want = torch.nn.functional.logsigmoid(torch.tensor(x)).numpy()
    np.testing.assert_allclose(ex.log_sigmoid(x), want, rtol=1e-12, atol=1e-300)


# --- 9.2 a response's log-probability ---------------------------------------------------------
@pytest.mark.exercise("9.2", points=1)
def test_sequence_logprob_by_hand(exercise):
    """sequence_logprob: a small case worked by hand, masks and huge logits"""
    ex = exercise(EX)
    logits = np.array([[[0.0, 0.0], [math.log(3), 0.0], [5.0, 5.0]]])  # (1, 3, 2)
    # log softmax([0, 0])[1] + log softmax([ln 3, 0])[0] = log(1/2) + log(3/4); the last
    # position is not scored.
    got = np.asarray(ex.sequence_logprob(logits, np.array([[1, 0, -100]])))
    assert got.shape == (1,)
    np.testing.assert_allclose(got, [math.log(3 / 8)], rtol=1e-12)
    # A sum, not a mean: scoring the third position too adds log(1/2).
    both = ex.sequence_logprob(logits, np.array([[1, 0, 1]]))
    np.testing.assert_allclose(both, [math.log(3 / 16)], rtol=1e-12)
    # Nothing scored: 0. Another ignore_index is honoured.
    np.testing.assert_allclose(ex.sequence_logprob(logits, np.full((1, 3), -100)), [0.0])
    np.testing.assert_allclose(ex.sequence_logprob(logits, np.array([[1, 0, 7]]), ignore_index=7),
                               [math.log(3 / 8)], rtol=1e-12)  # fmt: skip
    # Adding 1000 to every logit of a position changes no probability, and must not overflow.
    with np.errstate(over="raise", invalid="raise"):
        shifted = ex.sequence_logprob(logits + 1000.0, np.array([[1, 0, -100]]))
    np.testing.assert_allclose(shifted, [math.log(3 / 8)], rtol=1e-9)


@pytest.fixture(scope="module")
def pairs_and_model():
    """Real preference rows (chat template, -100 off the responses) and a small model."""
    tokenizer = Tokenizer.train("sort: 3 1 2 add: 1 + 2 = 3 yes no " * 30, vocab_size=300)
    pairs = [
        {"prompt": "sort: 3 1 2", "chosen": "1 2 3", "rejected": "3 2 1"},
        {"prompt": "add: 1 + 2", "chosen": "3", "rejected": "4 or so"},
        {"prompt": "1 < 2?", "chosen": "yes", "rejected": "no"},
    ]
    rows = preference_rows(tokenizer, pairs, context_length=32)
    config = get_preset("tiny-llama", vocab_size=tokenizer.vocab_size, n_layer=2, d_model=32,
                        n_head=2, context_length=32)  # fmt: skip
    return rows, Transformer(config, seed=0)


def library_logprob(oracle, logits, targets):
    """Each row's summed log-probability of its scored targets, from tinyllm or PyTorch."""
    if oracle == "tinyllm":
        return sequence_logps(lambda ids: (Tensor(logits), None), None, targets).numpy()
    import torch

    log_probs = torch.log_softmax(torch.tensor(logits), dim=-1)  # (B, T, V)
    kept = torch.tensor(targets != -100)
    picked = log_probs.gather(-1, torch.tensor(np.where(targets == -100, 0, targets))[..., None])
    return (picked[..., 0] * kept).sum(-1).numpy()


@pytest.mark.exercise("9.2", points=2)
@pytest.mark.parametrize("oracle", ORACLES)
def test_sequence_logprob_matches_the_libraries(exercise, oracle, pairs_and_model):
    """sequence_logprob: a library's on random logits and on a model's, with real targets"""
    ex = exercise(EX)
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((3, 9, 13)) * 5  # float64
    targets = rng.integers(0, 13, size=(3, 9))
    targets[rng.random((3, 9)) < 0.4] = -100
    targets[2] = -100  # a row with nothing scored
    np.testing.assert_allclose(ex.sequence_logprob(logits, targets),
                               library_logprob(oracle, logits, targets), rtol=1e-10, atol=1e-12)  # fmt: skip
    rows, model = pairs_and_model
    for ids, targets in ((rows.chosen_ids, rows.chosen_targets),
                         (rows.rejected_ids, rows.rejected_targets)):  # fmt: skip
        with tinyllm.no_grad():
            logits = model(ids)[0].numpy()  # (3, T, V) float32
            want = sequence_logps(model, ids, targets).numpy()
        if oracle == "torch":
            want = library_logprob("torch", logits.astype(np.float64), targets)
        got = np.asarray(ex.sequence_logprob(logits, targets))
        assert got.shape == (3,)
        np.testing.assert_allclose(got, want, rtol=1e-4)


# --- 9.3 the DPO loss -----------------------------------------------------------------------------
@pytest.mark.exercise("9.3", points=1)
def test_dpo_loss_by_hand(exercise):
    """dpo_loss and dpo_grad: small cases worked by hand"""
    ex = exercise(EX)
    policy_c, policy_r, ref_c, ref_r = (np.array([v]) for v in (-3.0, -9.0, -4.0, -7.0))
    # Rewards 0.5 * (-3 + 4) = 0.5 and 0.5 * (-9 + 7) = -1; margin 1.5.
    loss, chosen, rejected = ex.dpo_loss(policy_c, policy_r, ref_c, ref_r, beta=0.5)
    assert float(loss) == pytest.approx(math.log1p(math.exp(-1.5)), rel=1e-12)
    np.testing.assert_allclose(chosen, [0.5], rtol=1e-12)
    np.testing.assert_allclose(rejected, [-1.0], rtol=1e-12)
    # The policy is the reference: every reward 0, the loss log 2 - whatever beta.
    same = ex.dpo_loss(ref_c, ref_r, ref_c, ref_r, beta=3.0)
    assert float(same[0]) == pytest.approx(math.log(2), rel=1e-12)
    np.testing.assert_allclose(same[1], [0.0], atol=1e-15)
    # Beta scales the rewards: 0.1 gives 0.1 and -0.2, margin 0.3.
    loss, chosen, _ = ex.dpo_loss(policy_c, policy_r, ref_c, ref_r, beta=0.1)
    assert float(loss) == pytest.approx(math.log1p(math.exp(-0.3)), rel=1e-12)
    np.testing.assert_allclose(chosen, [0.1], rtol=1e-12)
    # The gradient: -beta * sigmoid(-1.5) for the chosen log-probability, the opposite for
    # the rejected one.
    d_chosen, d_rejected = ex.dpo_grad(policy_c, policy_r, ref_c, ref_r, beta=0.5)
    np.testing.assert_allclose(d_chosen, [-0.5 * sigmoid(-1.5)], rtol=1e-12)
    np.testing.assert_allclose(d_rejected, [0.5 * sigmoid(-1.5)], rtol=1e-12)
    # Far past the margin: finite, and the loss near 0.
    with np.errstate(over="raise", divide="raise", invalid="raise"):
        far = ex.dpo_loss(np.array([0.0]), np.array([-1e4]), np.array([0.0]), np.array([0.0]), 1.0)
    assert float(far[0]) == pytest.approx(0.0, abs=1e-300)


def logps(seed, n=6):
    """Random log-probabilities (n,) of the policy and of the reference, chosen and rejected."""
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(n) * 10 - 20 for _ in range(4)]  # pi_c, pi_r, ref_c, ref_r


def library_dpo(oracle, policy_c, policy_r, ref_c, ref_r, beta):
    """(loss, chosen rewards, rejected rewards, d/d policy_c, d/d policy_r)."""
    if oracle == "tinyllm":
        c, r = Tensor(policy_c, requires_grad=True), Tensor(policy_r, requires_grad=True)
        loss, chosen, rejected = dpo_loss_from_logps(c, r, ref_c, ref_r, beta)
        loss.backward()
        return loss.item(), chosen.numpy(), rejected.numpy(), c.grad, r.grad
    import torch

    c, r = torch.tensor(policy_c, requires_grad=True), torch.tensor(policy_r, requires_grad=True)
    chosen = beta * (c - torch.tensor(ref_c))
    rejected = beta * (r - torch.tensor(ref_r))
    loss = -torch.nn.functional.logsigmoid(chosen - rejected).mean()
    loss.backward()
    values = (chosen.detach().numpy(), rejected.detach().numpy(), c.grad.numpy(), r.grad.numpy())
    return (loss.item(), *values)


@pytest.mark.exercise("9.3", points=3)
@pytest.mark.parametrize("oracle", ORACLES)
def test_dpo_matches_the_libraries(exercise, oracle):
    """dpo_loss and dpo_grad: a library's loss, rewards and gradients on random log-probs"""
    ex = exercise(EX)
    for seed, beta in [(0, 0.1), (1, 0.5), (2, 2.0), (3, 0.01)]:
        args = logps(seed)
        kept = [array.copy() for array in args]
        want = library_dpo(oracle, *args, beta)
        loss, chosen, rejected = ex.dpo_loss(*args, beta)
        assert float(loss) == pytest.approx(want[0], rel=1e-10)
        np.testing.assert_allclose(chosen, want[1], rtol=1e-10)
        np.testing.assert_allclose(rejected, want[2], rtol=1e-10)
        d_chosen, d_rejected = ex.dpo_grad(*args, beta)
        np.testing.assert_allclose(d_chosen, want[3], rtol=1e-9, atol=1e-300)
        np.testing.assert_allclose(d_rejected, want[4], rtol=1e-9, atol=1e-300)
        for array, before in zip(args, kept):  # the inputs are left as they were
            np.testing.assert_array_equal(array, before)


# --- 9.4 the reward model's read, and what is logged ----------------------------------------------
@pytest.mark.exercise("9.4", points=1)
def test_last_token_scores_by_hand(exercise):
    """last_token_scores and preference_metrics: small cases worked by hand"""
    ex = exercise(EX)
    hidden = np.array([[[1.0, 0.0], [0.0, 2.0], [9.0, 9.0]], [[3.0, 1.0], [1.0, 1.0], [2.0, 0.0]]])
    got = np.asarray(ex.last_token_scores(hidden, np.array([2, 3]), np.array([1.0, -1.0])))
    np.testing.assert_allclose(got, [-2.0, 2.0], rtol=1e-12)  # positions 1 and 2
    # Length 1 reads position 0; whatever the padding after it holds does not count.
    hidden[0, 1:] = 1e6
    np.testing.assert_allclose(ex.last_token_scores(hidden, np.array([1, 3]), np.array([1.0, -1.0])),
                               [1.0, 2.0], rtol=1e-12)  # fmt: skip
    # The accuracy counts strict wins only (a tie is no preference); the margin is the mean.
    metrics = ex.preference_metrics(np.array([0.5, -0.2, 1.0]), np.array([0.1, 0.3, 1.0]))
    assert set(metrics) == {"accuracy", "margin"}
    assert float(metrics["accuracy"]) == pytest.approx(1 / 3)
    assert float(metrics["margin"]) == pytest.approx(-0.1 / 3)
    start = ex.preference_metrics(np.zeros(4), np.zeros(4))  # DPO's first step
    assert float(start["accuracy"]) == 0.0 and float(start["margin"]) == 0.0


@pytest.mark.exercise("9.4", points=2)
def test_last_token_scores_are_the_reward_models(exercise, pairs_and_model):
    """last_token_scores: RewardModel's scores of right-padded conversations"""
    ex = exercise(EX)
    rows, model = pairs_and_model
    reward_model = RewardModel.from_language_model(model, seed=3)
    weight = reward_model.score.weight.numpy()[:, 0]  # (d_model,)
    for ids, lengths in ((rows.chosen_ids, rows.chosen_lengths),
                         (rows.rejected_ids, rows.rejected_lengths)):  # fmt: skip
        assert len(set(lengths.tolist())) > 1  # rows of different lengths, padded
        with tinyllm.no_grad():
            hidden = reward_model.body.hidden_states(ids)[0].numpy()  # (3, T, d_model)
            want = reward_model(ids, lengths).numpy()
        got = np.asarray(ex.last_token_scores(hidden, lengths, weight))
        assert got.shape == (3,)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.exercise("9.4", points=1)
def test_preference_metrics_are_what_reward_loss_logs(exercise, pairs_and_model):
    """preference_metrics: the accuracy and margin tinyllm's reward_loss logs"""
    ex = exercise(EX)
    rows, model = pairs_and_model
    for seed in range(3):
        reward_model = RewardModel.from_language_model(model, seed=seed)
        with tinyllm.no_grad():
            _, logged = reward_loss(reward_model, tuple(rows))
            chosen = reward_model(rows.chosen_ids, rows.chosen_lengths).numpy()
            rejected = reward_model(rows.rejected_ids, rows.rejected_lengths).numpy()
        got = ex.preference_metrics(chosen, rejected)
        assert float(got["accuracy"]) == pytest.approx(float(logged["ranked_right"]))
        assert float(got["margin"]) == pytest.approx(float(logged["margin"]), rel=1e-6)
    rng = np.random.default_rng(0)
    chosen, rejected = rng.standard_normal(50), rng.standard_normal(50)
    rejected[:5] = chosen[:5]  # ties
    got = ex.preference_metrics(chosen, rejected)
    assert float(got["accuracy"]) == pytest.approx(np.mean(chosen > rejected))
    assert float(got["margin"]) == pytest.approx(np.mean(chosen - rejected))
