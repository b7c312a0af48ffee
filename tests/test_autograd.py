"""The tape: how gradients flow, accumulate and stop, and the errors that guard it."""

import numpy as np
import pytest

import tinyllm
import tinyllm.functional as F
from tinyllm import Tensor, no_grad


def test_gradients_of_a_reused_tensor_add_up():
    x = Tensor([2.0, -1.0], requires_grad=True)
    y = x * x + x * 3.0  # dy/dx = 2x + 3
    y.sum().backward()
    np.testing.assert_allclose(x.grad, [7.0, 1.0])


def test_a_second_backward_accumulates_into_grad():
    x = Tensor([1.0, 2.0], requires_grad=True)
    (x * 2.0).sum().backward()
    (x * 5.0).sum().backward()
    np.testing.assert_allclose(x.grad, [7.0, 7.0])


def test_diamond_graph_is_walked_in_topological_order():
    x = Tensor([0.5], requires_grad=True)
    a = x.exp()
    b = a * a  # exp(2x)
    c = a + b  # exp(x) + exp(2x)
    c.sum().backward()
    np.testing.assert_allclose(x.grad, np.exp(0.5) + 2 * np.exp(1.0), rtol=1e-6)


def test_deep_chain_does_not_hit_the_recursion_limit():
    x = Tensor([1.0], requires_grad=True)
    y = x
    for _ in range(5000):
        y = y * 1.0
    y.sum().backward()
    np.testing.assert_allclose(x.grad, [1.0])


def test_no_grad_records_nothing_and_detach_cuts_the_graph():
    w = Tensor([3.0], requires_grad=True)
    with no_grad():
        assert not (w * 2.0).requires_grad
    assert tinyllm.autograd.is_grad_enabled()
    y = (w.detach() * w).sum()  # only the second factor carries a gradient
    y.backward()
    np.testing.assert_allclose(w.grad, [3.0])


def test_gradients_keep_the_leaf_dtype_and_python_floats_stay_float32():
    w = Tensor([1.0, 2.0], requires_grad=True)
    assert w.dtype == np.float32
    y = (w * 0.5 + 1.0) ** 2.0 / 3.0
    assert y.dtype == np.float32
    y.sum().backward()
    assert w.grad.dtype == np.float32


def test_numpy_array_on_the_left_defers_to_the_tensor():
    w = Tensor([1.0, 2.0], requires_grad=True)
    y = np.array([3.0, 4.0], dtype=np.float32) * w
    assert isinstance(y, Tensor)
    y.sum().backward()
    np.testing.assert_allclose(w.grad, [3.0, 4.0])


def test_tensor_methods_follow_numpy_names():
    a = np.arange(6, dtype=np.float32).reshape(2, 3) + 1
    t = Tensor(a)
    np.testing.assert_allclose(t.T.numpy(), a.T)
    np.testing.assert_allclose(t.transpose(1, 0).numpy(), a.T)
    np.testing.assert_allclose(t.reshape(3, 2).numpy(), a.reshape(3, 2))
    np.testing.assert_allclose(t.sum(axis=0, keepdims=True).numpy(), a.sum(0, keepdims=True))
    np.testing.assert_allclose(t.mean().item(), a.mean())
    np.testing.assert_allclose(t.max(axis=1).numpy(), a.max(1))
    np.testing.assert_allclose(t.exp().log().numpy(), a, rtol=1e-6)
    np.testing.assert_allclose(t.sqrt().numpy(), np.sqrt(a))
    np.testing.assert_allclose(t.tanh().numpy(), np.tanh(a))
    np.testing.assert_allclose((t @ t.T).numpy(), a @ a.T)
    np.testing.assert_allclose((1.0 - t / 2.0).numpy(), 1 - a / 2)
    np.testing.assert_allclose((2.0**t).numpy(), 2.0**a)
    np.testing.assert_allclose(t[1, ::2].numpy(), a[1, ::2])
    assert t.shape == (2, 3) and t.ndim == 2 and t.size == 6 and len(t) == 2


def test_dropout_is_seeded_and_scales_what_it_keeps():
    x = Tensor(np.ones((50, 40), np.float32))
    a = F.dropout(x, 0.25, seed=7).numpy()
    np.testing.assert_array_equal(a, F.dropout(x, 0.25, seed=7).numpy())
    assert not np.array_equal(a, F.dropout(x, 0.25, seed=8).numpy())
    assert set(np.unique(a)) <= {0.0, np.float32(1 / 0.75)}
    assert abs((a == 0).mean() - 0.25) < 0.05
    assert F.dropout(x, 0.25, seed=7, training=False) is x


def test_gelu_matches_its_closed_forms():
    x = np.linspace(-4, 4, 101)
    exact = F.gelu(Tensor(x), approximate="none").numpy()
    from math import erf

    np.testing.assert_allclose(exact, [v * 0.5 * (1 + erf(v / np.sqrt(2))) for v in x], atol=1e-12)
    approx = F.gelu(Tensor(x)).numpy()
    np.testing.assert_allclose(approx, exact, atol=1e-3)  # the tanh form is a close approximation


# --- errors that name the bad value and what was expected ----------------------------------
def test_mismatched_shapes_name_both_shapes():
    with pytest.raises(ValueError, match=r"\(3, 4\) and \(5,\)"):
        Tensor(np.ones((3, 4))) + Tensor(np.ones(5))
    with pytest.raises(ValueError, match=r"\(2, 3\) @ \(4, 5\).*\(3\).*\(4\)"):
        Tensor(np.ones((2, 3))) @ Tensor(np.ones((4, 5)))
    with pytest.raises(ValueError, match=r"shape \(2, 3\).*into shape \(4,\)"):
        Tensor(np.ones((2, 3))).reshape(4)


def test_backward_on_a_non_scalar_asks_for_a_gradient():
    y = Tensor(np.ones((3, 4)), requires_grad=True) * 2.0
    with pytest.raises(RuntimeError, match=r"non-scalar.*\(3, 4\).*backward\(grad\)"):
        y.backward()
    with pytest.raises(ValueError, match=r"gradient has shape \(4,\), expected .*\(3, 4\)"):
        y.backward(np.ones(4))


def test_backward_without_gradients_and_twice_are_explained():
    with pytest.raises(RuntimeError, match="does not require gradients"):
        Tensor([1.0]).sum().backward()
    x = Tensor([1.0, 2.0], requires_grad=True)
    y = (x * x).sum()
    y.backward()
    with pytest.raises(RuntimeError, match="already freed"):
        y.backward()


def test_integer_tensors_cannot_require_gradients():
    with pytest.raises(TypeError, match="floating-point.*int64"):
        Tensor(np.arange(3), requires_grad=True)


def test_out_of_range_ids_and_targets_are_named():
    table = Tensor(np.zeros((5, 2), np.float32), requires_grad=True)
    with pytest.raises(IndexError, match=r"token id 7 is outside the vocabulary \[0, 5\)"):
        F.embedding(table, Tensor([1, 7]))
    logits = Tensor(np.zeros((2, 3), np.float32), requires_grad=True)
    with pytest.raises(IndexError, match=r"target 3 is outside \[0, 3\)"):
        F.cross_entropy(logits, Tensor([0, 3]))
    with pytest.raises(
        ValueError, match=r"targets of shape \(3,\).*expected targets of shape \(2,\)"
    ):
        F.cross_entropy(logits, Tensor([0, 1, 2]))


def test_bad_attention_and_norm_shapes_are_named():
    q = Tensor(np.zeros((1, 3, 4, 8), np.float32))
    kv = Tensor(np.zeros((1, 2, 4, 8), np.float32))
    with pytest.raises(ValueError, match="3 query heads cannot be shared evenly among 2"):
        F.scaled_dot_product_attention(q, kv, kv)
    with pytest.raises(ValueError, match=r"weight of shape \(3,\).*expected shape \(8,\)"):
        F.rms_norm(q, Tensor(np.ones(3, np.float32)))
    with pytest.raises(ValueError, match="approximate must be 'tanh' or 'none', got 'erf'"):
        F.gelu(q, approximate="erf")
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\), got 1.5"):
        F.dropout(q, 1.5, seed=0)
