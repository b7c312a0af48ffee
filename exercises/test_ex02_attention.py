"""Grading tests for exercises/ex02_attention.py (lesson 02: embeddings and attention).

Answers come from small cases worked out by hand in the comments, from the library's
``RotaryEmbedding`` and fused ``scaled_dot_product_attention``, and, where it is installed,
from PyTorch's ``scaled_dot_product_attention``.
"""

import importlib.util
import math

import numpy as np
import pytest

from tinyllm import Tensor
from tinyllm import functional as F
from tinyllm.nn.rope import RotaryEmbedding

EX = "ex02_attention"

# The PyTorch case joins the oracles only where it can run. (A skipped case would be graded
# as failed, so without PyTorch the tinyllm cases carry all the points.)
ORACLES = ["tinyllm", "torch"] if importlib.util.find_spec("torch") else ["tinyllm"]


def _normal(rng, *shape, dtype=np.float64):
    return rng.normal(size=shape).astype(dtype)


def _library_attention(q, k, v, scale=None):
    """The library's fused causal attention on NumPy arrays (grouped-query when H_kv < H)."""
    out = F.scaled_dot_product_attention(Tensor(q), Tensor(k), Tensor(v), causal=True, scale=scale)
    return out.numpy()


def _torch_attention(q, k, v, scale=None):
    """PyTorch's attention with the causal mask aligned bottom-right, as tinyllm's is.

    (torch's ``is_causal`` aligns it top-left, which differs when there are more keys than
    queries, so the mask is given explicitly.)
    """
    import torch

    T, S = q.shape[-2], k.shape[-2]
    visible = torch.from_numpy(np.tril(np.ones((T, S), dtype=bool), k=S - T))
    q, k, v = (torch.from_numpy(a) for a in (q, k, v))
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=visible, scale=scale)
    return out.numpy()


ATTENTION = {"tinyllm": _library_attention, "torch": _torch_attention}


# --- 2.1 RoPE ---------------------------------------------------------------------------------
@pytest.mark.exercise("2.1", points=1)
def test_apply_rotary_by_hand(exercise):
    """apply_rotary: small rotations worked out by hand"""
    ex = exercise(EX)
    # D = 2: one pair at 1 radian per position; position t turns (x0, x1) by t radians.
    x = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    expected = [[1.0, 0.0], [math.cos(1), math.sin(1)], [-2 * math.sin(3), 2 * math.cos(3)]]
    np.testing.assert_allclose(ex.apply_rotary(x, np.array([0, 1, 3])), expected, atol=1e-12)
    # D = 4, theta = 100: pairs (x0, x2) at 1 rad and (x1, x3) at 100 ** -0.5 = 0.1 rad per step.
    x = np.array([[1.0, 1.0, 0.0, 0.0]])
    expected = [[math.cos(2), math.cos(0.2), math.sin(2), math.sin(0.2)]]  # at position 2
    np.testing.assert_allclose(ex.apply_rotary(x, np.array([2]), theta=100.0), expected, atol=1e-12)
    got = ex.apply_rotary(np.ones((3, 5, 8), np.float32), np.arange(5))
    assert got.shape == (3, 5, 8) and got.dtype == np.float32


@pytest.mark.exercise("2.1", points=2)
@pytest.mark.parametrize(
    "shape, start, theta",
    [((1, 1, 4, 2), 0, 10000.0), ((2, 3, 7, 8), 5, 10000.0), ((1, 2, 9, 16), 100, 500000.0)],
    ids=["one-pair", "from-position-5", "llama3-theta"],
)
def test_apply_rotary_matches_the_library(exercise, shape, start, theta):
    """apply_rotary: same as tinyllm's RotaryEmbedding"""
    ex = exercise(EX)
    rng = np.random.default_rng(sum(shape) + start)
    x = _normal(rng, *shape, dtype=np.float32)
    T, D = shape[-2:]
    rope = RotaryEmbedding(D, theta)
    expected = rope(Tensor(x), start).numpy()  # positions start .. start + T - 1
    np.testing.assert_allclose(
        ex.apply_rotary(x, np.arange(start, start + T), theta), expected, atol=1e-5
    )
    # Positions in any order: row t turns as if it stood at positions[t].
    positions = rng.permutation(T) * 3
    got = ex.apply_rotary(x, positions, theta)
    for t, p in enumerate(positions):
        row = rope(Tensor(x[..., t : t + 1, :]), int(p)).numpy()[..., 0, :]
        np.testing.assert_allclose(got[..., t, :], row, atol=1e-5)


# --- 2.2 causal attention ---------------------------------------------------------------------
@pytest.mark.exercise("2.2", points=1)
def test_causal_attention_by_hand(exercise):
    """causal_attention: averages and weights worked out by hand"""
    ex = exercise(EX)
    v = np.array([1.0, 3.0, 8.0]).reshape(1, 1, 3, 1)
    zeros = np.zeros((1, 1, 3, 1))
    # Equal scores: each query averages the values it may see, 1, (1+3)/2, (1+3+8)/3.
    np.testing.assert_allclose(ex.causal_attention(zeros, zeros, v).ravel(), [1.0, 2.0, 4.0])
    # Two queries, three keys (a cache holds one past token): they are positions 1 and 2.
    np.testing.assert_allclose(ex.causal_attention(zeros[:, :, 1:], zeros, v).ravel(), [2.0, 4.0])
    # scale=1, query 1 scores keys [0, ln 2]: probabilities [1/3, 2/3] -> 3/3 + 2 * 6/3 = 5.
    q = np.array([0.0, 1.0]).reshape(1, 1, 2, 1)
    k = np.array([0.0, math.log(2)]).reshape(1, 1, 2, 1)
    v = np.array([3.0, 6.0]).reshape(1, 1, 2, 1)
    np.testing.assert_allclose(ex.causal_attention(q, k, v, scale=1.0).ravel(), [3.0, 5.0])


@pytest.mark.exercise("2.2", points=2)
@pytest.mark.parametrize("oracle", ORACLES)
@pytest.mark.parametrize(
    "B, H, T, S, D, scale",
    [(1, 1, 1, 1, 1, None), (2, 3, 5, 5, 4, None), (1, 2, 4, 9, 8, None), (2, 1, 6, 6, 3, 0.7)],
    ids=["one-token", "heads", "cached-keys", "scale"],
)
def test_causal_attention_matches_the_oracles(exercise, B, H, T, S, D, scale, oracle):
    """causal_attention: same as tinyllm's (and PyTorch's) attention"""
    ex = exercise(EX)
    rng = np.random.default_rng(B * 100 + T * 10 + S)
    q, k, v = _normal(rng, B, H, T, D), _normal(rng, B, H, S, D), _normal(rng, B, H, S, D)
    got = ex.causal_attention(q, k, v, scale)
    assert got.shape == (B, H, T, D)
    expected = ATTENTION[oracle](q, k, v, scale)
    np.testing.assert_allclose(got, expected, rtol=1e-7, atol=1e-10)


@pytest.mark.exercise("2.2", points=1)
def test_causal_attention_hides_the_future_and_never_overflows(exercise):
    """causal_attention: no peeking ahead, no overflow"""
    ex = exercise(EX)
    rng = np.random.default_rng(7)
    q, k, v = (_normal(rng, 1, 2, 6, 4) for _ in range(3))
    before = ex.causal_attention(q, k, v)
    k2, v2 = k.copy(), v.copy()
    k2[:, :, 4:], v2[:, :, 4:] = 100.0, -100.0  # change the keys and values at times 4 and 5
    after = ex.causal_attention(q, k2, v2)
    np.testing.assert_allclose(after[:, :, :4], before[:, :, :4])  # queries 0..3 cannot see them
    assert not np.allclose(after[:, :, 4:], before[:, :, 4:])
    # Scores in the thousands: exp overflows unless the row max is subtracted first.
    big = ex.causal_attention(q * 1000.0, k, v)
    assert np.isfinite(big).all()
    np.testing.assert_allclose(big, _library_attention(q * 1000.0, k, v), atol=1e-8)


# --- 2.3 grouped-query attention --------------------------------------------------------------
@pytest.mark.exercise("2.3", points=1)
def test_repeat_kv_keeps_copies_together(exercise):
    """repeat_kv: copies of a head side by side"""
    ex = exercise(EX)
    heads = np.arange(2.0).reshape(1, 2, 1, 1) * np.ones((1, 2, 3, 4))  # head h is all h
    got = ex.repeat_kv(heads, 3)
    assert got.shape == (1, 6, 3, 4)
    np.testing.assert_array_equal(got[0, :, 0, 0], [0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(ex.repeat_kv(heads, 1), heads)


@pytest.mark.exercise("2.3", points=1)
def test_repeat_kv_turns_grouped_query_into_multi_head(exercise):
    """repeat_kv: multi-head attention on the copies equals grouped-query"""
    ex = exercise(EX)
    rng = np.random.default_rng(4)
    q, k, v = _normal(rng, 2, 8, 5, 4), _normal(rng, 2, 2, 5, 4), _normal(rng, 2, 2, 5, 4)
    copied = _library_attention(q, ex.repeat_kv(k, 4), ex.repeat_kv(v, 4))
    np.testing.assert_allclose(copied, _library_attention(q, k, v), rtol=1e-7, atol=1e-10)


@pytest.mark.exercise("2.3", points=2)
@pytest.mark.parametrize(
    "H, H_kv, T, S",
    [(4, 4, 5, 5), (4, 2, 5, 5), (6, 2, 3, 7), (4, 1, 6, 6), (8, 1, 1, 4)],
    ids=["multi-head", "grouped", "grouped-cache", "multi-query", "multi-query-one-step"],
)
def test_grouped_query_attention_matches_the_library(exercise, H, H_kv, T, S):
    """grouped_query_attention: same as tinyllm's grouped-query attention"""
    ex = exercise(EX)
    rng = np.random.default_rng(H * 10 + H_kv + S)
    q, k, v = _normal(rng, 2, H, T, 4), _normal(rng, 2, H_kv, S, 4), _normal(rng, 2, H_kv, S, 4)
    got = ex.grouped_query_attention(q, k, v)
    assert got.shape == (2, H, T, 4)
    np.testing.assert_allclose(got, _library_attention(q, k, v), rtol=1e-7, atol=1e-10)


# --- 2.4 the relative-position property -------------------------------------------------------
@pytest.mark.exercise("2.4", points=1)
def test_rope_score_by_hand(exercise):
    """rope_score: two-feature cases worked out by hand"""
    ex = exercise(EX)
    one, up = np.array([1.0, 0.0]), np.array([0.0, 1.0])  # D = 2: one pair, 1 radian a step
    assert ex.rope_score(one, one, 0) == pytest.approx(1.0)
    assert ex.rope_score(one, one, 1) == pytest.approx(math.cos(1))
    assert ex.rope_score(one, one, -1) == pytest.approx(math.cos(1))
    assert ex.rope_score(up, one, 1) == pytest.approx(-math.sin(1))  # (-sin 1, cos 1) . (1, 0)
    got = ex.rope_score(up, one, np.array([[1, -1], [0, 2]]))
    assert np.shape(got) == (2, 2)
    np.testing.assert_allclose(got, [[-math.sin(1), math.sin(1)], [0.0, -math.sin(2)]], atol=1e-12)


@pytest.mark.exercise("2.4", points=1)
@pytest.mark.parametrize("D, theta", [(8, 10000.0), (16, 100.0)])
def test_rope_score_matches_rotating_both(exercise, D, theta):
    """rope_score: equals rotating q to m and k to n with the library"""
    ex = exercise(EX)
    rng = np.random.default_rng(D)
    q, k = _normal(rng, D), _normal(rng, D)
    T = 12
    rope = RotaryEmbedding(D, theta)
    q_at = rope(Tensor(np.tile(q, (1, 1, T, 1)))).numpy()[0, 0]  # (T, D): q at positions 0..T-1
    k_at = rope(Tensor(np.tile(k, (1, 1, T, 1)))).numpy()[0, 0]
    scores = q_at @ k_at.T  # scores[m, n] = rope(q, m) . rope(k, n)
    offsets = np.arange(T)[:, None] - np.arange(T)[None, :]  # m - n, from -(T-1) to T-1
    np.testing.assert_allclose(ex.rope_score(q, k, offsets, theta), scores, rtol=1e-5, atol=1e-5)
