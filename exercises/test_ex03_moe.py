"""Grading tests for exercises/ex03_moe.py (lesson 03: mixture of experts).

Answers come from small cases worked out by hand in the comments, from tinyllm's ``MoE``
layer, and, where it is installed, from Hugging Face ``transformers``' Mixtral loss.
"""

import importlib.util

import numpy as np
import pytest

from tinyllm import Tensor
from tinyllm.nn import MoE
from tinyllm.nn.moe import load_balancing_loss, top_k_experts

EX = "ex03_moe"

# The transformers case joins the oracles only where it can run. (A skipped case would be
# graded as failed, so without transformers the tinyllm case carries all the points.)
HAVE_TRANSFORMERS = all(importlib.util.find_spec(m) for m in ("torch", "transformers"))
ORACLES = ["tinyllm", "transformers"] if HAVE_TRANSFORMERS else ["tinyllm"]


def softmax(logits):
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def float64_moe(n_expert, top_k, seed, d_model=12, d_ff=20):
    moe = MoE(d_model, d_ff, n_expert=n_expert, top_k=top_k, seed=seed)
    for p in moe.parameters():
        p.data = p.data.astype(np.float64)
    return moe


def routing(moe, tokens):
    """What the MoE layer decides for ``tokens`` (N, d): probs, chosen and gates."""
    probs = softmax(tokens @ moe.router.weight.numpy())  # (N, E)
    chosen = top_k_experts(np, probs, moe.top_k)  # (N, k)
    gates = np.take_along_axis(probs, chosen, axis=-1)
    return probs, chosen, gates / gates.sum(axis=-1, keepdims=True)


# --- 3.1 --------------------------------------------------------------------------------------
@pytest.mark.exercise("3.1", points=1)
def test_top_k_routing_by_hand(exercise):
    """top_k_routing: a small case worked by hand"""
    ex = exercise(EX)
    logits = np.log([[0.1, 0.6, 0.3], [0.5, 0.2, 0.3]])  # softmax gives these back
    chosen, gates = ex.top_k_routing(logits, 2)
    assert np.asarray(chosen).tolist() == [[1, 2], [0, 2]]  # best first
    np.testing.assert_allclose(gates, [[0.6 / 0.9, 0.3 / 0.9], [0.5 / 0.8, 0.3 / 0.8]])
    chosen, gates = ex.top_k_routing(logits, 1)  # Switch-style top-1: the gate is always 1
    assert np.asarray(chosen).tolist() == [[1], [0]]
    np.testing.assert_allclose(gates, [[1.0], [1.0]])


@pytest.mark.exercise("3.1", points=2)
def test_top_k_routing_matches_the_moe_layer(exercise):
    """top_k_routing: the experts and gates tinyllm's MoE picks"""
    ex = exercise(EX)
    for n_expert, top_k, seed in [(4, 2, 0), (8, 2, 1), (6, 3, 2)]:
        moe = float64_moe(n_expert, top_k, seed)
        x = np.random.default_rng(seed).standard_normal((3, 10, 12))  # (B, T, d)
        moe(x)
        tokens = x.reshape(30, 12)
        _, want_chosen, want_gates = routing(moe, tokens)
        chosen, gates = ex.top_k_routing(tokens @ moe.router.weight.numpy(), top_k)
        assert np.shape(chosen) == (30, top_k) and np.shape(gates) == (30, top_k)
        np.testing.assert_array_equal(chosen, want_chosen)
        np.testing.assert_allclose(gates, want_gates, rtol=1e-10)
        counts = np.bincount(np.asarray(chosen).reshape(-1), minlength=n_expert)
        np.testing.assert_array_equal(counts, moe.expert_counts)
    # Large logits must not overflow: softmax is unchanged by adding a constant to a row.
    logits = np.random.default_rng(3).standard_normal((5, 4)) * 3
    with np.errstate(over="raise", invalid="raise"):
        shifted = ex.top_k_routing(logits + 1000.0, 2)
    np.testing.assert_array_equal(shifted[0], ex.top_k_routing(logits, 2)[0])
    np.testing.assert_allclose(shifted[1], ex.top_k_routing(logits, 2)[1], rtol=1e-9)


# --- 3.2 --------------------------------------------------------------------------------------
@pytest.mark.exercise("3.2", points=1)
def test_load_balancing_loss_by_hand(exercise):
    """load_balancing_loss: uniform routing gives k, collapse gives more"""
    ex = exercise(EX)
    uniform = np.full((4, 4), 0.25)
    balanced = np.array([[0, 1], [2, 3], [1, 0], [3, 2]])  # f = 1/2 each, P = 1/4 each
    assert ex.load_balancing_loss(uniform, balanced) == pytest.approx(2.0)  # k
    # Collapse: every token to experts 0 and 1 with probability 1/2 each.
    # f = (1, 1, 0, 0), P = (1/2, 1/2, 0, 0): 4 * (1/2 + 1/2) = 4.
    collapsed = np.tile([0.5, 0.5, 0.0, 0.0], (4, 1))
    assert ex.load_balancing_loss(collapsed, np.tile([0, 1], (4, 1))) == pytest.approx(4.0)
    # Two tokens, three experts, top-1: f = (1/2, 1/2, 0), P = (0.45, 0.45, 0.1).
    probs = np.array([[0.7, 0.2, 0.1], [0.2, 0.7, 0.1]])
    assert ex.load_balancing_loss(probs, np.array([[0], [1]])) == pytest.approx(3 * 0.45)


@pytest.mark.exercise("3.2", points=2)
@pytest.mark.parametrize("oracle", ORACLES)
def test_load_balancing_loss_matches_the_libraries(exercise, oracle):
    """load_balancing_loss: a library's own aux loss"""
    ex = exercise(EX)
    for n_expert, top_k, seed in [(4, 2, 0), (8, 2, 1), (6, 1, 2)]:
        moe = float64_moe(n_expert, top_k, seed)
        tokens = np.random.default_rng(seed).standard_normal((24, 12))  # (N, d)
        probs, chosen, _ = routing(moe, tokens)
        got = ex.load_balancing_loss(probs, chosen)
        if oracle == "tinyllm":
            _, want = moe(tokens.reshape(2, 12, 12))
            want = want.item()
        else:
            import torch
            from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

            logits = torch.tensor(tokens @ moe.router.weight.numpy())
            want = float(load_balancing_loss_func((logits,), num_experts=n_expert, top_k=top_k))
        assert float(got) == pytest.approx(want, rel=1e-5)


@pytest.mark.exercise("3.2", points=1)
def test_load_balancing_grad_treats_f_as_a_constant(exercise):
    """load_balancing_grad: the gradient tinyllm's autograd computes"""
    ex = exercise(EX)
    rng = np.random.default_rng(4)
    probs = softmax(rng.standard_normal((16, 5)) * 2)
    chosen = top_k_experts(np, probs, 2)
    p = Tensor(probs, requires_grad=True)
    load_balancing_loss(p, np.bincount(chosen.reshape(-1), minlength=5)).backward()
    got = np.asarray(ex.load_balancing_grad(probs, chosen))
    assert got.shape == (16, 5)
    np.testing.assert_allclose(got, p.grad, rtol=1e-10)


# --- 3.3 --------------------------------------------------------------------------------------
class RecordingExpert:
    """An expert that remembers which tokens (by row) it was called on."""

    def __init__(self, fn, x):
        self.fn, self.calls = fn, []
        self.token_of_row = {row.tobytes(): n for n, row in enumerate(x)}

    def __call__(self, rows):
        rows = np.asarray(rows)
        self.calls.append(sorted(self.token_of_row[row.tobytes()] for row in rows))
        return self.fn(rows)


@pytest.mark.exercise("3.3", points=1)
def test_moe_combine_by_hand(exercise):
    """moe_combine: a small mixture worked by hand"""
    ex = exercise(EX)
    x = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    experts = [lambda r: 10 * r, lambda r: -r, lambda r: r + 100]  # expert 1: nobody's
    chosen = np.array([[0, 2], [2, 0], [0, 2]])
    gates = np.array([[0.5, 0.5], [0.25, 0.75], [1.0, 0.0]])
    y = ex.moe_combine(x, chosen, gates, experts)
    # token 0: 0.5 * (10, 20) + 0.5 * (101, 102); token 1: 0.25 * (103, 104) + 0.75 * (30, 40)
    # token 2: 1.0 * (50, 60) + 0.0 * (105, 106)
    np.testing.assert_allclose(y, [[55.5, 61.0], [48.25, 56.0], [50.0, 60.0]])


@pytest.mark.exercise("3.3", points=2)
def test_moe_combine_matches_the_moe_layer(exercise):
    """moe_combine: the output of tinyllm's MoE layer"""
    ex = exercise(EX)
    for n_expert, top_k, seed in [(4, 2, 0), (8, 2, 1), (4, 1, 2), (5, 3, 3)]:
        moe = float64_moe(n_expert, top_k, seed)
        x = np.random.default_rng(seed).standard_normal((2, 9, 12))  # (B, T, d)
        want, _ = moe(x)
        tokens = x.reshape(18, 12)
        _, chosen, gates = routing(moe, tokens)
        experts = [lambda r, e=e: e(Tensor(r)).numpy() for e in moe.experts]
        y = ex.moe_combine(tokens, chosen, gates, experts)
        assert np.shape(y) == (18, 12)
        np.testing.assert_allclose(y, want.numpy().reshape(18, 12), rtol=1e-9, atol=1e-12)


@pytest.mark.exercise("3.3", points=2)
def test_moe_combine_runs_each_expert_once_on_its_own_tokens(exercise):
    """moe_combine: one call per expert, on exactly its tokens"""
    ex = exercise(EX)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((40, 6))
    probs = softmax(rng.standard_normal((40, 8)) * 3)
    probs[:, 7] = 0.0  # nobody picks expert 7
    chosen = top_k_experts(np, probs, 2)
    gates = rng.random((40, 2))
    experts = [RecordingExpert(lambda r, s=e + 1.0: np.tanh(s * r), x) for e in range(8)]
    ex.moe_combine(x, chosen, gates, experts)
    for e, expert in enumerate(experts):
        routed = sorted(np.nonzero((chosen == e).any(axis=1))[0].tolist())
        calls = [c for c in expert.calls if c]  # a call on zero rows does no work
        assert calls == ([routed] if routed else []), f"expert {e} saw tokens {expert.calls}"
