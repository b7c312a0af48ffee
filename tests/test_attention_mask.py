"""Attention with an explicit mask: gradients, PyTorch as the oracle, left-padded batches.

A mask is boolean (True = the query may see the key) or additive (0 or -inf added to the
scores), broadcastable to (B, H, T, S). Left padding is how batched generation lines up
prompts of different lengths: each row's real tokens must come out as they would alone.
"""

import numpy as np
import pytest

import tinyllm
import tinyllm.functional as F
from tinyllm import Tensor, gradcheck
from tinyllm.functional import attention
from tinyllm.models import Transformer, get_preset
from tinyllm.nn import CausalSelfAttention


def qkv(rng, B, H, H_kv, T, S, D, dtype=np.float64):
    q = rng.standard_normal((B, H, T, D)).astype(dtype)
    k, v = (rng.standard_normal((B, H_kv, S, D)).astype(dtype) for _ in range(2))
    return q, k, v


def random_mask(rng, shape, kind):
    """A boolean mask with some keys hidden, or the same as an additive float mask."""
    visible = rng.random(shape) < 0.7
    return visible if kind == "bool" else np.where(visible, 0.0, -np.inf)


def left_padding_mask(lengths, S):
    """(B, 1, 1, S): True on each row's last ``length`` keys, False on its padding."""
    lengths = np.asarray(lengths)
    return (np.arange(S) >= S - lengths[:, None])[:, None, None, :]


# --- gradients ------------------------------------------------------------------------------
MASK_SHAPES = [  # (B, H, T, S) broadcast targets of B=2, H=4, T=3, S=5
    (2, 4, 3, 5),  # one mask per head
    (2, 1, 1, 5),  # a padding mask: per row, per key
    (3, 5),  # one (T, S) mask for every row and head
    (2, 1, 3, 5),
    (4, 1, 5),  # per head, shared by the queries
]


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("kind", ["bool", "float"])
@pytest.mark.parametrize("mask_shape", MASK_SHAPES)
@pytest.mark.parametrize("H_kv", [4, 2, 1])
def test_gradients_match_finite_differences_with_a_mask(mask_shape, kind, H_kv, causal):
    rng = np.random.default_rng(sum(mask_shape) + H_kv)
    q, k, v = (Tensor(a, requires_grad=True) for a in qkv(rng, 2, 4, H_kv, 3, 5, 3))
    mask = random_mask(rng, mask_shape, kind)

    def fn(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, causal=causal, mask=mask)

    assert gradcheck(fn, [q, k, v], atol=1e-6, rtol=1e-5)


def test_a_query_that_sees_no_key_gives_zero_output_and_zero_gradient():
    rng = np.random.default_rng(0)
    q, k, v = (Tensor(a, requires_grad=True) for a in qkv(rng, 2, 2, 1, 3, 3, 4))
    mask = np.ones((2, 1, 3, 3), bool)
    mask[0, :, 1, :] = False  # batch row 0, query 1 sees nothing
    out = F.scaled_dot_product_attention(q, k, v, causal=False, mask=mask)
    out.backward(Tensor(rng.standard_normal(out.shape)))
    assert np.isfinite(out.numpy()).all() and np.isfinite(q.grad).all()
    assert np.isfinite(k.grad).all() and np.isfinite(v.grad).all()
    np.testing.assert_array_equal(out.numpy()[0, :, 1], 0.0)
    np.testing.assert_array_equal(q.grad[0, :, 1], 0.0)
    assert gradcheck(
        lambda q, k, v: F.scaled_dot_product_attention(q, k, v, causal=False, mask=mask),
        [q, k, v],
        atol=1e-6,
        rtol=1e-5,
    )


def _attention_and_gradients(q, k, v, **kwargs):
    """Output and dq, dk, dv (for an upstream gradient of ones) as arrays of the backend."""
    q, k, v = (Tensor(a, requires_grad=True) for a in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, **kwargs)
    out.backward(Tensor(out.backend.xp.ones(out.shape, out.dtype)))
    return [out.data, q.grad, k.grad, v.grad]


def _forward_backward(q, k, v, **kwargs):
    return [tinyllm.to_numpy(a) for a in _attention_and_gradients(q, k, v, **kwargs)]


@pytest.mark.parametrize("T, S", [(3, 5), (9, 11)])  # (9, 11): in four blocks of queries
@pytest.mark.parametrize("kind", ["bool", "float"])
def test_jax_matches_numpy_with_a_mask(monkeypatch, kind, T, S):
    jax = pytest.importorskip("jax")
    monkeypatch.setattr(attention, "MIN_QUERY_BLOCK", 2)
    rng = np.random.default_rng(1)
    q, k, v = qkv(rng, 2, 4, 2, T, S, 4, np.float32)
    mask = left_padding_mask([S, 2], S)
    mask = mask if kind == "bool" else np.where(mask, 0.0, -np.inf).astype(np.float32)
    expected = _forward_backward(q, k, v, mask=mask)
    with tinyllm.use_backend("jax"):
        eager = _forward_backward(*(jax.numpy.asarray(a) for a in (q, k, v)), mask=mask)
        jitted = jax.jit(lambda q, k, v, mask: _attention_and_gradients(q, k, v, mask=mask))
        compiled = [np.asarray(a) for a in jitted(q, k, v, jax.numpy.asarray(mask))]
    for got in (eager, compiled):
        for g, e in zip(got, expected):
            np.testing.assert_allclose(g, e, rtol=2e-5, atol=2e-5)


# --- PyTorch as the oracle ------------------------------------------------------------------
def _compare_with_torch(q, k, v, torch_mask, dtype=np.float64, tol=1e-10, **kwargs):
    """Our attention against torch's with k, v repeated to the query heads, forward and backward."""
    torch = pytest.importorskip("torch")
    TF = pytest.importorskip("torch.nn.functional")
    ours = _forward_backward(*(a.astype(dtype) for a in (q, k, v)), **kwargs)
    tq, tk, tv = (torch.tensor(a.astype(dtype), requires_grad=True) for a in (q, k, v))
    group = q.shape[1] // k.shape[1]
    out = TF.scaled_dot_product_attention(
        tq,
        tk.repeat_interleave(group, dim=1),
        tv.repeat_interleave(group, dim=1),
        attn_mask=torch_mask,
    )
    out.backward(torch.ones_like(out))
    theirs = [out.detach().numpy(), tq.grad.numpy(), tk.grad.numpy(), tv.grad.numpy()]
    for name, a, b in zip(["output", "dq", "dk", "dv"], ours, theirs):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol, err_msg=name)


@pytest.mark.parametrize("kind", ["bool", "float"])
@pytest.mark.parametrize("mask_shape", MASK_SHAPES)
@pytest.mark.parametrize("H_kv", [4, 2, 1])
def test_mask_matches_torch_attn_mask(mask_shape, kind, H_kv):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(len(mask_shape) + H_kv)
    q, k, v = qkv(rng, 2, 4, H_kv, 3, 5, 8)
    mask = random_mask(rng, mask_shape, kind)
    _compare_with_torch(q, k, v, torch.tensor(mask), causal=False, mask=mask)


@pytest.mark.parametrize("kind", ["bool", "float"])
@pytest.mark.parametrize("T, S", [(4, 4), (2, 6)])
def test_causal_and_mask_both_apply(kind, T, S):
    """causal=True with a mask is torch given the two masks and-ed (queries are the last T)."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(T)
    q, k, v = qkv(rng, 2, 6, 2, T, S, 8)
    visible = rng.random((2, 6, T, S)) < 0.7
    causal = np.tril(np.ones((T, S), bool), k=S - T)
    mask = visible if kind == "bool" else np.where(visible, 0.0, -np.inf)
    _compare_with_torch(q, k, v, torch.tensor(visible & causal), causal=True, mask=mask)
    window = 2  # and a sliding window on top
    in_window = ~np.tril(np.ones((T, S), bool), k=S - T - window)
    both = torch.tensor(visible & causal & in_window)
    _compare_with_torch(q, k, v, both, causal=True, window=window, mask=mask)


@pytest.mark.parametrize("T, S", [(8, 8), (9, 12)])
def test_blocked_causal_attention_with_a_mask_matches_torch(monkeypatch, T, S):
    """Long causal attention runs in blocks of queries (see ``functional/attention.py``); a
    padding mask and a per-query mask are cut into the same blocks."""
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(attention, "MIN_QUERY_BLOCK", 2)  # blocks from 8 queries on
    assert len(attention._blocks(T, S, True, None)) == attention.QUERY_BLOCKS
    rng = np.random.default_rng(S)
    q, k, v = qkv(rng, 2, 6, 2, T, S, 8)
    causal = np.tril(np.ones((T, S), bool), k=S - T)
    padding = left_padding_mask([S, S - 3], S)  # (2, 1, 1, S)
    _compare_with_torch(q, k, v, torch.tensor(padding & causal), causal=True, mask=padding)
    visible = rng.random((2, 1, T, S)) < 0.7
    _compare_with_torch(q, k, v, torch.tensor(visible & causal), causal=True, mask=visible)


def test_large_negative_additive_mask_matches_torch_in_float32():
    """Hugging Face's masks add the dtype's most negative number rather than -inf. (Every
    query sees a key here, its own: a row of nothing but that number would be a uniform
    average of rounding noise, not a mask.)"""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    q, k, v = qkv(rng, 2, 4, 2, 5, 5, 16)
    visible = left_padding_mask([5, 3], 5) & np.tril(np.ones((5, 5), bool)) | np.eye(5, dtype=bool)
    mask = np.where(visible, 0.0, np.finfo(np.float32).min).astype(np.float32)
    _compare_with_torch(
        q, k, v, torch.tensor(mask), np.float32, 1e-5, causal=False, mask=Tensor(mask)
    )


@pytest.mark.parametrize("H_kv", [4, 2, 1])
def test_left_padded_rows_give_the_outputs_of_each_row_alone(H_kv):
    """Causal attention over a left-padded batch: each row's real queries match the row
    run alone; padding queries see no key and give 0 - and torch agrees on all of it."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(H_kv)
    lengths, S = [5, 2, 3], 5
    q, k, v = qkv(rng, 3, 4, H_kv, S, S, 8)
    mask = left_padding_mask(lengths, S)  # (B, 1, 1, S)
    out, dq, dk, dv = _forward_backward(q, k, v, causal=True, mask=mask)
    for row, n in enumerate(lengths):
        real = slice(S - n, S)
        alone = _forward_backward(q[row : row + 1, :, real], k[row : row + 1, :, real],
                                  v[row : row + 1, :, real], causal=True)  # fmt: skip
        for got, want in zip((out, dq, dk, dv), alone):
            np.testing.assert_allclose(got[row : row + 1, :, real], want[0:1], rtol=1e-12)
        np.testing.assert_array_equal(out[row, :, : S - n], 0.0)
        np.testing.assert_array_equal(dq[row, :, : S - n], 0.0)
    both = torch.tensor(mask & np.tril(np.ones((S, S), bool)))
    _compare_with_torch(q, k, v, both, causal=True, mask=mask)


# --- bad masks ------------------------------------------------------------------------------
@pytest.mark.parametrize("mask_shape", [(2, 3, 3, 5), (3, 4), (5, 3), (1, 2, 1, 1, 5)])
def test_a_mask_that_does_not_broadcast_names_both_shapes(mask_shape):
    q, k, v = qkv(np.random.default_rng(0), 2, 4, 2, 3, 5, 8)
    with pytest.raises(ValueError, match=rf"mask of shape \({mask_shape[0]}, .*\(2, 4, 3, 5\)"):
        F.scaled_dot_product_attention(q, k, v, mask=np.ones(mask_shape, bool))


@pytest.mark.parametrize("dtype", [np.int64, np.uint8])
def test_a_mask_neither_boolean_nor_float_is_a_type_error(dtype):
    q, k, v = qkv(np.random.default_rng(0), 1, 2, 2, 3, 3, 4)
    with pytest.raises(TypeError, match=f"boolean .* or float .*got dtype {np.dtype(dtype)}"):
        F.scaled_dot_product_attention(q, k, v, mask=np.ones((3, 3), dtype))


# --- through the layer and the model --------------------------------------------------------
def test_attention_layer_passes_the_mask_on():
    attn = CausalSelfAttention(d_model=8, n_head=4, n_kv_head=2, seed=0)
    x = np.random.default_rng(0).standard_normal((2, 4, 8)).astype(np.float32)
    mask = left_padding_mask([4, 2], 4)
    padded = attn(x, mask=mask).numpy()
    np.testing.assert_allclose(padded[1, 2:], attn(x[1:, 2:]).numpy()[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(padded[0], attn(x[:1]).numpy()[0], rtol=1e-5, atol=1e-6)


def _tiny_model(preset, **changes):
    sizes = dict(vocab_size=13, context_length=16, d_model=16, n_layer=2, n_head=4)
    return Transformer(get_preset(preset, **{**sizes, **changes}), seed=0)


def _left_pad(prompts, pad_id=0):
    """Ids (B, T) padded on the left, the padding mask (B, 1, 1, T), positions (B, T)."""
    T = max(len(p) for p in prompts)
    ids = np.array([[pad_id] * (T - len(p)) + list(p) for p in prompts])
    positions = np.array([[0] * (T - len(p)) + list(range(len(p))) for p in prompts])
    return ids, left_padding_mask([len(p) for p in prompts], T), positions


@pytest.mark.parametrize(
    "preset, changes",
    [("tiny", {}), ("tiny-llama", {}), ("tiny-llama", {"sliding_window": 3})],
)
def test_left_padded_batch_gives_each_prompt_its_own_logits(preset, changes):
    model = _tiny_model(preset, **changes)
    prompts = [[3, 1, 4, 1, 5, 9, 2], [6, 5, 3]]
    ids, mask, positions = _left_pad(prompts)
    learned = model.config.position == "learned"
    logits, _ = model(ids, mask=mask, positions=positions if learned else None)
    logits = logits.numpy()
    for row, prompt in enumerate(prompts):
        alone, _ = model([prompt])
        np.testing.assert_allclose(
            logits[row, -len(prompt) :], alone.numpy()[0], rtol=1e-4, atol=1e-5
        )
        assert np.isfinite(logits[row]).all()  # padding positions too


def test_learned_positions_need_the_position_ids():
    """Without positions, a padded GPT-2-style row's tokens sit at shifted positions."""
    model = _tiny_model("tiny")
    prompts = [[3, 1, 4, 1, 5], [6, 5]]
    ids, mask, _ = _left_pad(prompts)
    shifted, _ = model(ids, mask=mask)
    alone, _ = model([prompts[1]])
    assert not np.allclose(shifted.numpy()[1, -2:], alone.numpy()[0], atol=1e-4)


def test_bad_positions_are_rejected():
    gpt2, llama = _tiny_model("tiny"), _tiny_model("tiny-llama")
    ids = np.zeros((2, 3), int)
    with pytest.raises(ValueError, match=r"positions of shape \(2, 2\) must match ids \(2, 3\)"):
        gpt2(ids, positions=np.zeros((2, 2), int))
    with pytest.raises(ValueError, match=r"positions of shape \(2, 2\) must match ids \(2, 3\)"):
        llama(ids, positions=np.zeros((2, 2), int))


@pytest.mark.parametrize("preset", ["tiny", "tiny-llama"])
def test_packed_documents_get_the_logits_and_gradients_they_get_alone(preset):
    """Two documents in one row: a mask keeps each to its own keys, positions restart at 0."""
    model = _tiny_model(preset)
    docs = [[3, 1, 4, 1, 5], [9, 2, 6]]
    ids = np.array([docs[0] + docs[1]])  # (1, 8)
    document = np.array([0] * 5 + [1] * 3)
    mask = (document[:, None] == document[None, :])[None, None]  # (1, 1, 8, 8)
    positions = np.array([[0, 1, 2, 3, 4, 0, 1, 2]])
    targets = np.array([docs[0][1:] + [-100] + docs[1][1:] + [-100]])  # no target across docs
    packed_logits, packed_loss = model(ids, targets=targets, mask=mask, positions=positions)
    packed_loss.backward()
    packed_grads = {n: p.grad.copy() for n, p in model.named_parameters()}
    model.zero_grad()
    alone_loss = 0
    for doc, start in zip(docs, (0, 5)):
        logits, loss = model([doc], targets=[doc[1:] + [-100]])
        np.testing.assert_allclose(
            packed_logits.numpy()[0, start : start + len(doc)], logits.numpy()[0], atol=1e-5
        )
        alone_loss = alone_loss + loss * (len(doc) - 1)
    (alone_loss / 6).backward()  # the packed mean runs over the 6 scored tokens
    np.testing.assert_allclose(packed_loss.item(), alone_loss.item() / 6, rtol=1e-5)
    for name, param in model.named_parameters():
        np.testing.assert_allclose(packed_grads[name], param.grad, atol=1e-6, err_msg=name)
