"""PyTorch as an outside oracle for tinyllm's fused ops: forward values and gradients.

Each test builds the same inputs for both libraries, runs the op forward, sends the same
random upstream gradient back through it, and compares the output and every input's
gradient. float64 pins the math down to rounding (rtol 1e-10); one float32 case per op
checks that the float32 path (what training runs) agrees to float32 precision.
Skipped where torch is not installed; CI installs it with the ``dev`` extra.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as TF  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import tinyllm  # noqa: E402
import tinyllm.functional as F  # noqa: E402
from tinyllm.functional import attention  # noqa: E402

FEW = settings(max_examples=12, deadline=None, derandomize=True)
TOLERANCE = {np.float64: dict(rtol=1e-10, atol=1e-12), np.float32: dict(rtol=1e-5, atol=1e-5)}


def compare(tinyllm_fn, torch_fn, arrays, wants_grad, dtype=np.float64, seed=0, tol=None):
    """Run both functions on ``arrays``; assert equal outputs and input gradients.

    ``arrays`` are NumPy arrays (floats are cast to ``dtype``); ``wants_grad[i]`` says
    whether input i is a leaf whose gradient is compared. A scalar output is
    differentiated as is; any other gets the same random upstream gradient in both.
    """
    tol = tol or TOLERANCE[dtype]
    arrays = [a.astype(dtype) if np.issubdtype(a.dtype, np.floating) else a for a in arrays]
    ours = [tinyllm.Tensor(a, requires_grad=g) for a, g in zip(arrays, wants_grad)]
    theirs = [torch.tensor(a, requires_grad=g) for a, g in zip(arrays, wants_grad)]

    out_ours = tinyllm_fn(*ours)
    out_theirs = torch_fn(*theirs)
    assert out_ours.dtype == dtype, "tinyllm changed the dtype"
    np.testing.assert_allclose(out_ours.numpy(), out_theirs.detach().numpy(), **tol)

    upstream = np.random.default_rng(seed + 1).standard_normal(out_ours.shape).astype(dtype)
    if out_ours.ndim == 0:
        upstream = np.ones((), dtype)
    out_ours.backward(tinyllm.Tensor(upstream))
    out_theirs.backward(torch.tensor(upstream))
    for i, (a, b) in enumerate(zip(ours, theirs)):
        if wants_grad[i]:
            assert a.grad.dtype == dtype, f"gradient of input {i} changed dtype"
            np.testing.assert_allclose(
                a.grad, b.grad.numpy(), err_msg=f"gradient of input {i}", **tol
            )


def normal(rng, *shape):
    return rng.standard_normal(shape)


shapes = st.lists(st.integers(1, 6), min_size=1, max_size=4)


# --- softmax and log-softmax --------------------------------------------------------------
@FEW
@given(shape=shapes, axis_pick=st.integers(0, 3), seed=st.integers(0, 2**16))
def test_softmax_and_log_softmax_match_torch(shape, axis_pick, seed):
    x = 3 * normal(np.random.default_rng(seed), *shape)
    axis = axis_pick % len(shape) - len(shape) * (axis_pick % 2)  # positive and negative
    compare(
        lambda t: F.softmax(t, axis=axis),
        lambda t: torch.softmax(t, dim=axis),
        [x],
        [True],
        seed=seed,
    )
    compare(
        lambda t: F.log_softmax(t, axis=axis),
        lambda t: torch.log_softmax(t, dim=axis),
        [x],
        [True],
        seed=seed,
    )


@pytest.mark.parametrize(
    "op, oracle", [(F.softmax, torch.softmax), (F.log_softmax, torch.log_softmax)]
)
def test_softmax_float32_matches_torch(op, oracle):
    x = 4 * normal(np.random.default_rng(1), 4, 8, 33)
    compare(lambda t: op(t, axis=1), lambda t: oracle(t, dim=1), [x], [True], np.float32)


# --- cross-entropy ------------------------------------------------------------------------
def _targets(rng, shape, vocab, ignore_index):
    """Random class ids with about a quarter of them set to ``ignore_index`` (never all)."""
    targets = rng.integers(0, vocab, size=shape)
    ignored = rng.random(shape) < 0.25
    ignored.reshape(-1)[0] = False
    return np.where(ignored, ignore_index, targets)


def _torch_cross_entropy(targets, ignore_index, reduction):
    """torch's cross-entropy on logits (..., V), flattened to rows like tinyllm's."""
    t = torch.from_numpy(targets.reshape(-1))

    def fn(logits):
        loss = TF.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), t, ignore_index=ignore_index, reduction=reduction
        )
        return loss.reshape(targets.shape) if reduction == "none" else loss

    return fn


@FEW
@given(
    lead=st.lists(st.integers(1, 5), min_size=1, max_size=2),  # (N,) or (B, T)
    vocab=st.integers(2, 40),
    reduction=st.sampled_from(["mean", "sum", "none"]),
    ignore_index=st.sampled_from([-100, 0]),
    seed=st.integers(0, 2**16),
)
def test_cross_entropy_matches_torch(lead, vocab, reduction, ignore_index, seed):
    rng = np.random.default_rng(seed)
    logits = 2 * normal(rng, *lead, vocab)
    targets = _targets(rng, tuple(lead), vocab, ignore_index)
    compare(
        lambda z: F.cross_entropy(z, targets, ignore_index=ignore_index, reduction=reduction),
        _torch_cross_entropy(targets, ignore_index, reduction),
        [logits],
        [True],
        seed=seed,
    )


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_float32_3d_matches_torch(reduction):
    rng = np.random.default_rng(2)
    logits = 3 * normal(rng, 3, 7, 65)
    targets = _targets(rng, (3, 7), 65, -100)
    compare(
        lambda z: F.cross_entropy(z, targets, reduction=reduction),
        _torch_cross_entropy(targets, -100, reduction),
        [logits],
        [True],
        np.float32,
    )


# --- norms --------------------------------------------------------------------------------
@FEW
@given(shape=shapes, eps=st.sampled_from([1e-5, 1e-6, 0.1]), seed=st.integers(0, 2**16))
def test_rms_norm_matches_torch(shape, eps, seed):
    rng = np.random.default_rng(seed)
    x, weight = normal(rng, *shape), 1 + 0.3 * normal(rng, shape[-1])
    C = shape[-1]
    compare(
        lambda x, w: F.rms_norm(x, w, eps=eps),
        lambda x, w: TF.rms_norm(x, (C,), w, eps=eps),
        [x, weight],
        [True, True],
        seed=seed,
    )


@FEW
@given(shape=shapes, with_bias=st.booleans(), seed=st.integers(0, 2**16))
def test_layer_norm_matches_torch(shape, with_bias, seed):
    rng = np.random.default_rng(seed)
    C = shape[-1]
    x, weight, bias = 2 + normal(rng, *shape), 1 + 0.3 * normal(rng, C), normal(rng, C)
    if with_bias:
        compare(
            lambda x, w, b: F.layer_norm(x, w, b, eps=1e-5),
            lambda x, w, b: TF.layer_norm(x, (C,), w, b, eps=1e-5),
            [x, weight, bias],
            [True, True, True],
            seed=seed,
        )
    else:
        compare(
            lambda x, w: F.layer_norm(x, w, eps=1e-5),
            lambda x, w: TF.layer_norm(x, (C,), w, None, eps=1e-5),
            [x, weight],
            [True, True],
            seed=seed,
        )


@pytest.mark.parametrize("with_bias", [True, False])
def test_norms_float32_match_torch(with_bias):
    rng = np.random.default_rng(3)
    x, weight, bias = normal(rng, 4, 9, 48), 1 + 0.3 * normal(rng, 48), normal(rng, 48)
    compare(
        lambda x, w: F.rms_norm(x, w, eps=1e-5),
        lambda x, w: TF.rms_norm(x, (48,), w, eps=1e-5),
        [x, weight],
        [True, True],
        np.float32,
    )
    b = [bias] if with_bias else []
    compare(
        lambda x, w, *b: F.layer_norm(x, w, *b, eps=1e-5),
        lambda x, w, *b: TF.layer_norm(x, (48,), w, *(b or [None]), eps=1e-5),
        [x, weight, *b],
        [True] * (2 + len(b)),
        np.float32,
    )


# --- attention ----------------------------------------------------------------------------
def _sliding_window_mask(T, S, window):
    """(T, S) booleans, True where a query sees a key: the query at position p (the T queries
    are the last T of S positions) sees key j iff p - window < j <= p. This is Mistral's
    sliding window as transformers defines it (checked below against its mask function)."""
    query_position = torch.arange(S - T, S)[:, None]  # (T, 1)
    key_position = torch.arange(S)[None, :]  # (1, S)
    return (key_position <= query_position) & (key_position > query_position - window)


def _torch_attention(T, S, causal, scale, window=None):
    """torch's attention with k, v repeated to H heads; a causal mask aligned bottom-right.

    tinyllm lines the T queries up with the *last* T keys (query i sees keys j <= i + S - T,
    as when a KV cache holds the past); torch's ``is_causal`` aligns them top-left, so the
    mask is built explicitly. A ``window`` hides, in addition, keys too far back.
    """
    mask = None
    if causal:
        mask = torch.from_numpy(np.tril(np.ones((T, S), dtype=bool), k=S - T))
    if window is not None:
        mask = _sliding_window_mask(T, S, window)

    def fn(q, k, v):
        group = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        return TF.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)

    return fn


@FEW
@given(
    B=st.integers(1, 2),
    H_kv=st.integers(1, 3),
    group=st.sampled_from([1, 2, 3]),  # 1: multi-head; more: grouped-query
    T=st.integers(1, 7),
    extra_keys=st.sampled_from([0, 0, 3]),  # S > T: queries are the last T positions
    D=st.integers(1, 8),
    causal=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_attention_matches_torch(B, H_kv, group, T, extra_keys, D, causal, seed):
    rng = np.random.default_rng(seed)
    H, S = H_kv * group, T + extra_keys
    q, k, v = normal(rng, B, H, T, D), normal(rng, B, H_kv, S, D), normal(rng, B, H_kv, S, D)
    compare(
        lambda q, k, v: F.scaled_dot_product_attention(q, k, v, causal=causal),
        _torch_attention(T, S, causal, scale=None),
        [q, k, v],
        [True, True, True],
        seed=seed,
    )


@pytest.mark.parametrize("H, H_kv, T, S", [(4, 4, 5, 5), (6, 2, 4, 9), (4, 1, 1, 6)])
def test_attention_gqa_and_kv_cache_shapes_match_torch(H, H_kv, T, S):
    rng = np.random.default_rng(4)
    q, k, v = normal(rng, 2, H, T, 8), normal(rng, 2, H_kv, S, 8), normal(rng, 2, H_kv, S, 8)
    compare(
        lambda q, k, v: F.scaled_dot_product_attention(q, k, v, causal=True, scale=0.3),
        _torch_attention(T, S, True, scale=0.3),
        [q, k, v],
        [True, True, True],
    )


def test_attention_matches_torch_is_causal_and_enable_gqa():
    """Where both alignments agree (S == T), torch's own causal and GQA paths agree too."""
    rng = np.random.default_rng(5)
    q, k, v = normal(rng, 2, 6, 10, 16), normal(rng, 2, 3, 10, 16), normal(rng, 2, 3, 10, 16)
    compare(
        lambda q, k, v: F.scaled_dot_product_attention(q, k, v, causal=True),
        lambda q, k, v: TF.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True),
        [q, k, v],
        [True, True, True],
    )


@pytest.mark.parametrize(
    "H, H_kv, T, S, D",
    [(4, 2, 16, 20, 32), (2, 1, 512, 512, 16)],  # 512 queries: in four blocks (the defaults)
)
def test_attention_float32_matches_torch(H, H_kv, T, S, D):
    rng = np.random.default_rng(6)
    q, k, v = normal(rng, 2, H, T, D), normal(rng, 2, H_kv, S, D), normal(rng, 2, H_kv, S, D)
    compare(
        lambda q, k, v: F.scaled_dot_product_attention(q, k, v, causal=True),
        _torch_attention(T, S, True, scale=None),
        [q, k, v],
        [True, True, True],
        np.float32,
    )


# --- long causal attention, in blocks of queries ------------------------------------------
@pytest.fixture
def small_query_blocks(monkeypatch):
    """Blocks of queries from 4 * 2 queries on, so that small cases take the blocked path."""
    monkeypatch.setattr(attention, "MIN_QUERY_BLOCK", 2)


@pytest.mark.parametrize(
    "H, H_kv, T, S, window",
    [
        (4, 4, 8, 8, None),  # four blocks of 2 queries
        (6, 2, 11, 14, None),  # grouped-query; 11 queries: blocks of 2, 3, 3, 3; past keys
        (4, 1, 9, 9, 3),  # a sliding window: later blocks skip the keys long past too
        (2, 2, 13, 20, 5),
    ],
)
def test_blocked_causal_attention_matches_torch(small_query_blocks, H, H_kv, T, S, window):
    assert len(attention._blocks(T, S, True, window)) == attention.QUERY_BLOCKS
    rng = np.random.default_rng(T + S)
    q, k, v = normal(rng, 2, H, T, 8), normal(rng, 2, H_kv, S, 8), normal(rng, 2, H_kv, S, 8)
    compare(
        lambda q, k, v: F.scaled_dot_product_attention(q, k, v, causal=True, window=window),
        _torch_attention(T, S, True, scale=None, window=window),
        [q, k, v],
        [True, True, True],
    )


# --- sliding-window attention -------------------------------------------------------------
def test_sliding_window_mask_is_transformers_mistral_mask():
    """The mask the window tests give torch is the one transformers builds for Mistral."""
    masking = pytest.importorskip("transformers.masking_utils")
    for T, S, window in [(1, 1, 1), (5, 5, 2), (4, 9, 3), (3, 8, 1), (6, 6, 10)]:
        mask_fn = masking.sliding_window_causal_mask_function(window)
        zero = torch.tensor(0)
        theirs = mask_fn(zero, zero, torch.arange(S - T, S)[:, None], torch.arange(S)[None, :])
        assert torch.equal(_sliding_window_mask(T, S, window), theirs), (T, S, window)


@FEW
@given(
    B=st.integers(1, 2),
    H_kv=st.integers(1, 3),
    group=st.sampled_from([1, 2, 3]),
    T=st.integers(1, 7),
    extra_keys=st.sampled_from([0, 0, 3]),
    D=st.integers(1, 8),
    window=st.integers(1, 9),  # wider than T + extra_keys: the plain causal mask
    seed=st.integers(0, 2**16),
)
def test_sliding_window_attention_matches_torch(B, H_kv, group, T, extra_keys, D, window, seed):
    rng = np.random.default_rng(seed)
    H, S = H_kv * group, T + extra_keys
    q, k, v = normal(rng, B, H, T, D), normal(rng, B, H_kv, S, D), normal(rng, B, H_kv, S, D)
    compare(
        lambda q, k, v: F.scaled_dot_product_attention(q, k, v, window=window),
        _torch_attention(T, S, True, scale=None, window=window),
        [q, k, v],
        [True, True, True],
        seed=seed,
    )


def test_sliding_window_attention_float32_matches_torch():
    rng = np.random.default_rng(8)
    q, k, v = normal(rng, 2, 4, 16, 32), normal(rng, 2, 2, 20, 32), normal(rng, 2, 2, 20, 32)
    compare(
        lambda q, k, v: F.scaled_dot_product_attention(q, k, v, window=5),
        _torch_attention(16, 20, True, scale=None, window=5),
        [q, k, v],
        [True, True, True],
        np.float32,
    )


# --- activations --------------------------------------------------------------------------
ACTIVATIONS = {
    "gelu_tanh": (F.gelu, lambda t: TF.gelu(t, approximate="tanh")),
    "gelu_exact": (lambda t: F.gelu(t, approximate="none"), lambda t: TF.gelu(t)),
    "silu": (F.silu, TF.silu),
    "log_sigmoid": (F.log_sigmoid, TF.logsigmoid),
}


@FEW
@given(shape=shapes, spread=st.sampled_from([1.0, 4.0, 30.0]), seed=st.integers(0, 2**16))
@pytest.mark.parametrize("name", ACTIVATIONS)
def test_activations_match_torch(name, shape, spread, seed):
    ours, theirs = ACTIVATIONS[name]
    x = spread * normal(np.random.default_rng(seed), *shape)  # 30: deep in both tails
    compare(ours, theirs, [x], [True], seed=seed)


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_activations_float32_match_torch(name):
    ours, theirs = ACTIVATIONS[name]
    tails = np.array([-100.0, -30.0, -8.0, -1e-3, 0.0, 1e-3, 8.0, 30.0, 100.0])
    x = np.concatenate([tails, 3 * normal(np.random.default_rng(9), 200)]).reshape(11, 19)
    compare(ours, theirs, [x], [True], np.float32)


# --- matmul -------------------------------------------------------------------------------
MATMUL_SHAPES = [
    ((3, 4), (4, 5)),  # plain matrices
    ((2, 3, 4), (2, 4, 5)),  # batched
    ((2, 1, 3, 4), (5, 4, 6)),  # batch axes broadcast both ways
    ((2, 7, 4), (4, 6)),  # activations (B, T, C) times a weight (C, D)
    ((4,), (2, 4, 3)),  # a vector on the left
    ((2, 3, 4), (4,)),  # a vector on the right
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape_a, shape_b", MATMUL_SHAPES)
def test_matmul_matches_torch(shape_a, shape_b, dtype):
    rng = np.random.default_rng(7)
    compare(
        F.matmul, torch.matmul, [normal(rng, *shape_a), normal(rng, *shape_b)], [True, True], dtype
    )


@FEW
@given(
    B=st.integers(1, 4),
    T=st.integers(1, 9),
    C=st.integers(1, 9),
    D=st.integers(1, 9),
    seed=st.integers(0, 2**16),
)
def test_linear_layer_matmul_matches_torch(B, T, C, D, seed):
    """The weight-gradient path: (B, T, C) @ (C, D) summed as one (C, B*T) x (B*T, D)."""
    rng = np.random.default_rng(seed)
    compare(
        F.matmul, torch.matmul, [normal(rng, B, T, C), normal(rng, C, D)], [True, True], seed=seed
    )
    compare(
        F.matmul, torch.matmul, [normal(rng, B, T, C), normal(rng, C, D)], [False, True], seed=seed
    )
