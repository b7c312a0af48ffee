"""Grading tests for exercises/ex00_autograd.py (lesson 00: autograd).

Each test checks the student's op against finite differences (``gradcheck``) or values
worked out here with plain NumPy, so no stub or shortcut can pass it.
"""

import numpy as np
import pytest

from tinyllm import Tensor, gradcheck

EX = "ex00_autograd"


def _leaf(rng, *shape):
    return Tensor(rng.normal(size=shape), requires_grad=True)  # float64 for gradcheck


@pytest.mark.exercise("0.1", points=2)
def test_mul_backward_matches_finite_differences(exercise):
    """Mul.backward: gradients of a * b"""
    ex = exercise(EX)
    rng = np.random.default_rng(1)
    a, b = _leaf(rng, 3, 4), _leaf(rng, 3, 4)
    assert gradcheck(lambda x, y: ex.Mul.apply(x, y), [a, b])


@pytest.mark.exercise("0.1", points=1)
def test_mul_backward_values(exercise):
    """Mul.backward: grad_a = grad * b, grad_b = grad * a"""
    ex = exercise(EX)
    a = Tensor(np.array([1.0, 2.0, 3.0]), requires_grad=True)
    b = Tensor(np.array([4.0, 5.0, 6.0]), requires_grad=True)
    ex.Mul.apply(a, b).backward(Tensor(np.array([1.0, 10.0, 100.0])))
    np.testing.assert_allclose(a.grad, [4.0, 50.0, 600.0])
    np.testing.assert_allclose(b.grad, [1.0, 20.0, 300.0])


@pytest.mark.exercise("0.2", points=2)
@pytest.mark.parametrize(
    "grad_shape, shape",
    [
        ((2, 3, 4), (3, 1)),
        ((2, 3, 4), (4,)),
        ((5, 1, 3), (1, 3)),
        ((3, 4), ()),
        ((2, 3), (2, 3)),
        ((4, 2, 3), (4, 1, 1)),
    ],
)
def test_unbroadcast_sums_stretched_axes(exercise, grad_shape, shape):
    """unbroadcast: sum the gradient back to the input's shape"""
    ex = exercise(EX)
    grad = np.random.default_rng(2).normal(size=grad_shape)
    got = np.asarray(ex.unbroadcast(grad, shape))
    assert got.shape == shape
    # The defining property: <grad, broadcast(v)> == <unbroadcast(grad), v> for every v.
    v = np.random.default_rng(3).normal(size=shape)
    expected = np.sum(grad * np.broadcast_to(v, grad_shape))
    np.testing.assert_allclose(np.sum(got * v), expected, rtol=1e-10)


@pytest.mark.exercise("0.3", points=1)
def test_tanh_backward_matches_finite_differences(exercise):
    """Tanh.backward: 1 - tanh^2"""
    ex = exercise(EX)
    a = _leaf(np.random.default_rng(4), 2, 5)
    assert gradcheck(lambda x: ex.Tanh.apply(x), [a])


@pytest.mark.exercise("0.4", points=2)
@pytest.mark.parametrize(
    "axis, keepdims", [(None, False), (0, False), (-1, True), ((0, 2), False), (1, True)]
)
def test_sum_backward_matches_finite_differences(exercise, axis, keepdims):
    """Sum.backward: spread the gradient over the summed axes"""
    ex = exercise(EX)
    a = _leaf(np.random.default_rng(5), 2, 3, 4)
    assert gradcheck(lambda x: ex.Sum.apply(x, axis=axis, keepdims=keepdims), [a])


@pytest.mark.exercise("0.5", points=2)
def test_matmul_backward_matches_finite_differences(exercise):
    """Matmul.backward: grad @ b.T and a.T @ grad"""
    ex = exercise(EX)
    rng = np.random.default_rng(6)
    a, b = _leaf(rng, 3, 4), _leaf(rng, 4, 2)
    assert gradcheck(lambda x, y: ex.Matmul.apply(x, y), [a, b])


@pytest.mark.exercise("0.6", points=1)
def test_softmax_forward_is_a_stable_distribution(exercise):
    """Softmax.forward: rows sum to one, no overflow on large logits"""
    ex = exercise(EX)
    x = np.array([[1000.0, 1001.0, 1002.0], [-5.0, 0.0, 5.0]])
    y = ex.Softmax.apply(Tensor(x), axis=-1).numpy()
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    np.testing.assert_allclose(y, e / e.sum(axis=-1, keepdims=True), rtol=1e-12)
    assert np.all(np.isfinite(y))


@pytest.mark.exercise("0.6", points=2)
@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_softmax_backward_matches_finite_differences(exercise, axis):
    """Softmax.backward: y * (g - sum(g * y))"""
    ex = exercise(EX)
    x = _leaf(np.random.default_rng(7), 3, 4, 2)
    assert gradcheck(lambda t: ex.Softmax.apply(t, axis=axis), [x])


@pytest.mark.exercise("0.6", points=1)
def test_softmax_is_one_fused_node(exercise):
    """Softmax: one node on the tape, saving only its output"""
    ex = exercise(EX)
    x = Tensor(np.random.default_rng(8).normal(size=(2, 5)), requires_grad=True)
    y = ex.Softmax.apply(x, axis=-1)
    op, ctx, inputs = y._node
    assert op is ex.Softmax and inputs == (x,)
    assert len(ctx.saved) == 1 and ctx.saved[0].shape == (2, 5)
