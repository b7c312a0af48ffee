"""Every differentiable op: finite-difference gradient checks on random shapes (float64,
NumPy), and the same op on JAX (CPU or GPU) and CuPy (a GPU) equal to NumPy within float32
tolerance.

Each case builds its inputs from a seeded generator, shapes included, so hypothesis
explores shapes by drawing seeds.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tinyllm
import tinyllm.functional as F
from tinyllm import Tensor, gradcheck


def shape(rng, ndim_low=1, ndim_high=3, size_high=4):
    return tuple(
        int(n) for n in rng.integers(1, size_high + 1, size=rng.integers(ndim_low, ndim_high + 1))
    )


def leaf(rng, shp, dtype, positive=False, away_from_zero=False):
    x = rng.normal(size=shp)
    if positive:
        x = np.abs(x) + 0.5
    if away_from_zero:
        x = np.where(x >= 0, x + 0.3, x - 0.3)
    return Tensor(x.astype(dtype), requires_grad=True)


def broadcast_partner(rng, shp):
    """A shape that broadcasts against ``shp``: some leading axes dropped, some axes set to 1."""
    partner = list(shp[rng.integers(0, len(shp) + 1) :])
    return tuple(1 if rng.random() < 0.3 else n for n in partner)


def unary(fn, **leaf_kwargs):
    return lambda rng, dt: (fn, [leaf(rng, shape(rng), dt, **leaf_kwargs)])


def binary(fn, **b_kwargs):
    def make(rng, dt):
        a_shape = shape(rng)
        return fn, [
            leaf(rng, a_shape, dt),
            leaf(rng, broadcast_partner(rng, a_shape), dt, **b_kwargs),
        ]

    return make


def reduction(fn):
    def make(rng, dt):
        x = leaf(rng, shape(rng), dt)
        axis = [None, -1, 0, tuple(range(x.ndim))][rng.integers(4)]
        keepdims = bool(rng.integers(2))
        return (lambda t: fn(t, axis=axis, keepdims=keepdims)), [x]

    return make


def matmul_case(rng, dt):
    m, k, n = rng.integers(1, 5, size=3)
    batch = shape(rng, 0, 2)
    kind = rng.integers(4)
    if kind == 0:  # batched, broadcast batch axes
        a, b = (*batch, m, k), (*broadcast_partner(rng, batch), k, n)
    elif kind == 1:  # activations times a weight matrix
        a, b = (*batch, m, k), (k, n)
    elif kind == 2:  # vector on the right
        a, b = (*batch, m, k), (k,)
    else:  # vector on the left
        a, b = (k,), (k, n)
    return F.matmul, [leaf(rng, a, dt), leaf(rng, b, dt)]


def getitem_case(rng, dt):
    x = leaf(rng, (4, 3, 2), dt)
    index = [
        (slice(1, 3), 0),
        np.array([0, 2, 2, 1]),  # repeated rows: their gradients add
        (Ellipsis, slice(None, None, -1)),
        (np.array([3, 0, 3]), slice(None), 1),
    ][rng.integers(4)]
    return (lambda t: t[index]), [x]


def concat_case(rng, dt):
    base = shape(rng, 2, 3)
    axis = int(rng.integers(len(base)))
    parts = []
    for _ in range(rng.integers(1, 4)):
        s = list(base)
        s[axis] = int(rng.integers(1, 4))
        parts.append(leaf(rng, tuple(s), dt))
    return (lambda *ts: F.concat(ts, axis=axis)), parts


def stack_case(rng, dt):
    s = shape(rng)
    axis = int(rng.integers(len(s) + 1))
    parts = [leaf(rng, s, dt) for _ in range(rng.integers(1, 4))]
    return (lambda *ts: F.stack(ts, axis=axis)), parts


def where_case(rng, dt):
    s = shape(rng)
    cond = Tensor(rng.random(s) < 0.5)  # constants go through Tensor, onto the active backend
    return (lambda a, b: F.where(cond, a, b)), [
        leaf(rng, s, dt),
        leaf(rng, broadcast_partner(rng, s), dt),
    ]


def embedding_case(rng, dt):
    vocab, dim = rng.integers(1, 6), rng.integers(1, 4)
    ids = Tensor(rng.integers(0, vocab, size=shape(rng, 1, 2)))
    return (lambda w: F.embedding(w, ids)), [leaf(rng, (vocab, dim), dt)]


def cross_entropy_case(rng, dt):
    lead = shape(rng, 1, 2)
    vocab = int(rng.integers(2, 6))
    targets = rng.integers(0, vocab, size=lead)
    targets = Tensor(np.where(rng.random(lead) < 0.25, -100, targets))  # some rows ignored
    reduction = ["mean", "sum", "none"][rng.integers(3)]
    return (lambda z: F.cross_entropy(z, targets, reduction=reduction)), [
        leaf(rng, (*lead, vocab), dt)
    ]


def norm_case(which):
    def make(rng, dt):
        s = shape(rng, 1, 3)
        c = s[-1] + 1  # at least 2 features so the normalisation is not degenerate
        x, w = leaf(rng, (*s[:-1], c), dt), leaf(rng, (c,), dt)
        if which == "rms":
            return F.rms_norm, [x, w]
        return F.layer_norm, [x, w, leaf(rng, (c,), dt)]

    return make


def attention_case(rng, dt):
    b, h_kv, groups, t, d = (int(n) for n in rng.integers(1, 4, size=5))
    s = t + int(rng.integers(0, 3))
    causal = bool(rng.integers(2))
    q = leaf(rng, (b, h_kv * groups, t, d), dt)
    k, v = leaf(rng, (b, h_kv, s, d), dt), leaf(rng, (b, h_kv, s, d), dt)
    return (lambda *qkv: F.scaled_dot_product_attention(*qkv, causal=causal)), [q, k, v]


def dropout_case(rng, dt):
    seed = int(rng.integers(1000))
    return (lambda t: F.dropout(t, 0.3, seed=seed)), [leaf(rng, shape(rng), dt)]


CASES = {
    "add": binary(F.add),
    "sub": binary(F.sub),
    "mul": binary(F.mul),
    "div": binary(F.div, away_from_zero=True),
    "neg": unary(F.neg),
    "pow_scalar": unary(lambda t: t**3.0),
    "pow_tensor": lambda rng, dt: (
        F.pow,
        [leaf(rng, (3, 2), dt, positive=True), leaf(rng, (2,), dt)],
    ),
    "exp": unary(F.exp),
    "log": unary(F.log, positive=True),
    "sqrt": unary(F.sqrt, positive=True),
    "tanh": unary(F.tanh),
    "relu": unary(F.relu, away_from_zero=True),
    "gelu_tanh": unary(F.gelu),
    "gelu_exact": unary(lambda t: F.gelu(t, approximate="none")),
    "silu": unary(F.silu),
    "log_sigmoid": unary(F.log_sigmoid),
    "dropout": dropout_case,
    "sum": reduction(F.sum),
    "mean": reduction(F.mean),
    "max": reduction(F.max),
    "matmul": matmul_case,
    "reshape": unary(lambda t: t.reshape(-1)),
    "transpose": unary(lambda t: t.T),
    "permute": lambda rng, dt: ((lambda t: t.permute(2, 0, 1)), [leaf(rng, shape(rng, 3, 3), dt)]),
    "getitem": getitem_case,
    "concat": concat_case,
    "stack": stack_case,
    "where": where_case,
    "embedding": embedding_case,
    "softmax": unary(lambda t: F.softmax(t, axis=0)),
    "log_softmax": unary(F.log_softmax),
    "cross_entropy": cross_entropy_case,
    "rms_norm": norm_case("rms"),
    "layer_norm": norm_case("layer"),
    "attention": attention_case,
}


@pytest.mark.parametrize("name", sorted(CASES))
@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_gradients_match_finite_differences(name, seed):
    fn, inputs = CASES[name](np.random.default_rng(seed), np.float64)
    assert gradcheck(fn, inputs, atol=1e-6, rtol=1e-5)


def _forward_backward(fn, inputs):
    out = fn(*inputs)
    direction = np.random.default_rng(0).normal(size=out.shape).astype(np.float32)
    out.backward(Tensor(direction))
    return [tinyllm.to_numpy(out)] + [tinyllm.to_numpy(t.grad) for t in inputs]


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("backend", ["jax", "cupy"])
def test_gpu_backends_match_numpy(backend, name):
    """Every op forward and backward on JAX (CPU or GPU) and on CuPy (a CUDA GPU), against
    NumPy; skipped, with the reason, where the backend cannot run."""
    works, detail = tinyllm.available_backends()[backend]
    if not works:
        pytest.skip(detail)
    seed = 1234
    fn, np_inputs = CASES[name](np.random.default_rng(seed), np.float32)
    expected = _forward_backward(fn, np_inputs)
    with tinyllm.use_backend(backend):
        fn, inputs = CASES[name](np.random.default_rng(seed), np.float32)
        assert all(t.backend.name == backend for t in inputs)
        got = _forward_backward(fn, inputs)
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize(
    "name",
    [
        "softmax",
        "log_softmax",
        "cross_entropy",
        "layer_norm",
        "rms_norm",
        "attention",
        "add",
        "embedding",
    ],
)
def test_numpy_speed_spellings_change_no_result(name, monkeypatch):
    """The NumPy backend's faster reductions give the ops the values of the plain ones."""
    from tinyllm.backend import Backend, NumpyBackend

    seed = 99
    fn, inputs = CASES[name](np.random.default_rng(seed), np.float32)
    fast = _forward_backward(fn, inputs)
    for method in ("sum_last", "max_last", "dot_last", "sum_first", "scatter_add"):
        monkeypatch.setattr(NumpyBackend, method, getattr(Backend, method))
    fn, inputs = CASES[name](np.random.default_rng(seed), np.float32)
    plain = _forward_backward(fn, inputs)
    for f, p in zip(fast, plain):
        np.testing.assert_allclose(f, p, rtol=1e-5, atol=1e-6)
