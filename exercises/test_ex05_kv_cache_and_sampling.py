"""Grading tests for exercises/ex05_kv_cache_and_sampling.py (lesson 05: KV cache and sampling).

Answers come from small cases worked out by hand in the comments, from tinyllm's own
``KVCache``, ``scaled_dot_product_attention``, ``keep_top_p``, ``keep_min_p`` and
``penalize_repetition``, from a real model decoding through your cache and your attention
(which must give the logits of recomputing every prefix), and, where they are installed,
from PyTorch's ``scaled_dot_product_attention`` and ``transformers``' ``TopPLogitsWarper``,
``MinPLogitsWarper`` and ``RepetitionPenaltyLogitsProcessor``.
"""

import importlib.util
import math

import numpy as np
import pytest

import tinyllm
import tinyllm.nn.attention
from tinyllm import Tensor
from tinyllm import functional as F
from tinyllm.infer import KVCache, keep_min_p, keep_top_p, penalize_repetition
from tinyllm.models import ModelConfig, Transformer

EX = "ex05_kv_cache_and_sampling"

# An outside library joins the oracles only where it can run. (A skipped case would be
# graded as failed, so without it the tinyllm cases carry all the points.)
HAS_TORCH = importlib.util.find_spec("torch") is not None
HAS_TRANSFORMERS = HAS_TORCH and importlib.util.find_spec("transformers") is not None
TORCH_ORACLES = ["tinyllm", "torch"] if HAS_TORCH else ["tinyllm"]
HF_ORACLES = ["tinyllm", "transformers"] if HAS_TRANSFORMERS else ["tinyllm"]

LLAMA = dict(
    position="rope", norm="rmsnorm", mlp="swiglu", bias=False, qkv_bias=False,
    tie_embeddings=False,
)  # fmt: skip
BASE = dict(vocab_size=61, context_length=24, d_model=32, n_layer=2, n_head=4, init_std=0.1)
MODELS = {
    "gpt2": {},  # learned positions, multi-head attention
    "llama-gqa": {**LLAMA, "n_kv_head": 2},  # RoPE, 2 key/value heads for 4 query heads
    "mistral-window": {**LLAMA, "n_kv_head": 2, "sliding_window": 5},  # 24 positions: past it
}


def model_of(case, seed=0):
    return Transformer(ModelConfig(**{**BASE, **MODELS[case]}), seed=seed)


def last_logits(model, ids, cache=None):
    """The last position's logits (B, V) of ``ids`` (B, T), with or without a cache."""
    with tinyllm.no_grad():
        logits, _ = model(ids, cache=cache)
    return logits.numpy()[:, -1]


def decode_and_recompute(model, cache, steps=14):
    """Greedy decoding from a random prompt (2, 5): at each step the last logits from
    ``cache`` (prefill once, then one token a step) and from rerunning the whole prefix."""
    ids = np.random.default_rng(1).integers(0, model.config.vocab_size, (2, 5))
    cached, recomputed = [last_logits(model, ids, cache)], [last_logits(model, ids)]
    for _ in range(steps):
        ids = np.concatenate([ids, cached[-1].argmax(-1)[:, None]], axis=1)
        cached.append(last_logits(model, ids[:, -1:], cache))
        recomputed.append(last_logits(model, ids))
    return np.stack(cached), np.stack(recomputed)


# --- 5.1 the cache update ---------------------------------------------------------------------
@pytest.mark.exercise("5.1", points=1)
def test_kv_cache_update_by_hand(exercise):
    """kv_cache_update: writes in place at `length`, returns what is filled"""
    ex = exercise(EX)
    keys, values = np.zeros((1, 1, 4, 2)), np.zeros((1, 1, 4, 2))
    k_new = np.array([1.0, 1.0, 2.0, 2.0]).reshape(1, 1, 2, 2)  # positions 0 and 1
    v_new = -k_new  # values differ from keys: a mix-up shows
    k, v = ex.kv_cache_update(keys, values, k_new, v_new, 0)
    np.testing.assert_array_equal(k, k_new)
    np.testing.assert_array_equal(v, v_new)
    np.testing.assert_array_equal(keys[0, 0], [[1, 1], [2, 2], [0, 0], [0, 0]])  # in place
    np.testing.assert_array_equal(values[0, 0], [[-1, -1], [-2, -2], [0, 0], [0, 0]])
    # One decode step at length 2: the keys so far are positions 0, 1 and the new 2.
    k, v = ex.kv_cache_update(
        keys, values, np.full((1, 1, 1, 2), 3.0), np.full((1, 1, 1, 2), -3.0), 2
    )
    np.testing.assert_array_equal(k[0, 0], [[1, 1], [2, 2], [3, 3]])
    np.testing.assert_array_equal(v[0, 0], [[-1, -1], [-2, -2], [-3, -3]])
    # Rolled back to length 1: position 1 is overwritten, and 2 (stale now) is not returned.
    k, v = ex.kv_cache_update(
        keys, values, np.full((1, 1, 1, 2), 9.0), np.full((1, 1, 1, 2), -9.0), 1
    )
    np.testing.assert_array_equal(k[0, 0], [[1, 1], [9, 9]])
    np.testing.assert_array_equal(v[0, 0], [[-1, -1], [-9, -9]])
    # Past max_len: a clear error naming max_len (4), not NumPy's complaint about shapes.
    with pytest.raises(ValueError, match=r"\b4\b"):
        ex.kv_cache_update(keys, values, np.ones((1, 1, 2, 2)), np.ones((1, 1, 2, 2)), 3)


@pytest.mark.exercise("5.1", points=1)
def test_kv_cache_update_matches_tinyllms_cache(exercise):
    """kv_cache_update: tinyllm's KVCache.update over a prefill, decode steps and a rollback"""
    ex = exercise(EX)
    rng = np.random.default_rng(0)
    B, H_kv, max_len, D = 2, 3, 12, 4
    library = KVCache(n_layer=1, batch_size=B, n_kv_head=H_kv, max_len=max_len, head_dim=D)
    keys = np.zeros((B, H_kv, max_len, D), np.float32)
    values = np.zeros((B, H_kv, max_len, D), np.float32)
    for T, rollback in [(5, None), (1, None), (1, None), (3, None), (2, 7), (1, None), (4, 3)]:
        if rollback is not None:
            library.truncate(rollback)
        k_new = rng.standard_normal((B, H_kv, T, D)).astype(np.float32)
        v_new = rng.standard_normal((B, H_kv, T, D)).astype(np.float32)
        want_k, want_v = library.update(0, Tensor(k_new), Tensor(v_new))
        k, v = ex.kv_cache_update(keys, values, k_new, v_new, library.length)
        library.advance(T)
        np.testing.assert_array_equal(np.asarray(k), want_k.numpy())
        np.testing.assert_array_equal(np.asarray(v), want_v.numpy())
        filled = library.length
        np.testing.assert_array_equal(keys[:, :, :filled], library.keys[0][:, :, :filled])
        np.testing.assert_array_equal(values[:, :, :filled], library.values[0][:, :, :filled])


class YourCache(KVCache):
    """tinyllm's KVCache with ``update`` done by your ``kv_cache_update``: the model calls
    it in every layer, and reads ``length`` and calls ``advance`` itself."""

    def __init__(self, update, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.your_update = update

    def update(self, layer, k_new, v_new):
        k, v = self.your_update(
            self.keys[layer], self.values[layer], k_new.numpy(), v_new.numpy(), self.length
        )
        return Tensor(np.asarray(k)), Tensor(np.asarray(v))


@pytest.mark.exercise("5.1", points=2)
@pytest.mark.parametrize("case", MODELS)
def test_decoding_through_your_cache_equals_recomputing(exercise, case):
    """kv_cache_update: a model decoding through it gives the logits of recomputing"""
    ex = exercise(EX)
    model = model_of(case)
    c = model.config
    cache = YourCache(ex.kv_cache_update, c.n_layer, 2, c.kv_heads, c.context_length, c.head_dim)
    cached, recomputed = decode_and_recompute(model, cache)
    np.testing.assert_allclose(cached, recomputed, atol=1e-4, rtol=0)
    assert np.abs(np.diff(cached, axis=0)).max() > 1e-2  # the steps differ: a real test


# --- 5.2 attention over the cache -------------------------------------------------------------
@pytest.mark.exercise("5.2", points=1)
def test_cached_attention_by_hand(exercise):
    """cached_attention: the offset mask, stale keys, the window and the scale by hand"""
    ex = exercise(EX)
    # A zero query scores every key 0, so it averages the values it may see.
    v = np.array([1.0, 2.0, 4.0, 8.0, 1000.0, -1000.0]).reshape(1, 1, 6, 1)  # 4, 5: stale
    k = np.ones((1, 1, 6, 1))
    q = np.zeros((1, 1, 2, 1))  # two new queries at positions 2 and 3
    out = ex.cached_attention(q, k, v, start=2)
    assert out.shape == (1, 1, 2, 1)
    np.testing.assert_allclose(out[0, 0, :, 0], [(1 + 2 + 4) / 3, (1 + 2 + 4 + 8) / 4])
    one = ex.cached_attention(q[:, :, :1], k, v, start=0)  # the first token sees itself only
    np.testing.assert_allclose(one[0, 0, :, 0], [1.0])
    # A window of 2: position 2 sees keys 1, 2; position 3 sees 2, 3.
    out = ex.cached_attention(q, k, v, start=2, window=2)
    np.testing.assert_allclose(out[0, 0, :, 0], [(2 + 4) / 2, (4 + 8) / 2])
    # The scale 1/sqrt(4) = 1/2: q . k1 = 2 ln 3 becomes ln 3, so key 1 gets 3/4, key 0 1/4.
    q = np.array([2.0, 0, 0, 0]).reshape(1, 1, 1, 4)
    k = np.array([[0.0, 0, 0, 0], [math.log(3), 0, 0, 0], [50.0, 0, 0, 0]]).reshape(1, 1, 3, 4)
    v = np.eye(4)[:3].reshape(1, 1, 3, 4)  # key 2 is stale, and would win if seen
    out = ex.cached_attention(q, k, v, start=1)
    np.testing.assert_allclose(out[0, 0, 0], [0.25, 0.75, 0.0, 0.0], rtol=1e-7, atol=1e-12)
    out = ex.cached_attention(q, k, v, start=1, scale=1.0)  # scores 0 and 2 ln 3: 1/10, 9/10
    np.testing.assert_allclose(out[0, 0, 0], [0.1, 0.9, 0.0, 0.0], rtol=1e-7, atol=1e-12)


def library_cached_attention(oracle, q, k, v, start, scale, window):
    """tinyllm's attention over the filled keys, or PyTorch's with a mask over all of them."""
    T = q.shape[2]
    if oracle == "tinyllm":
        filled = slice(0, start + T)
        out = F.scaled_dot_product_attention(
            Tensor(q), Tensor(k[:, :, filled]), Tensor(v[:, :, filled]),
            causal=True, scale=scale, window=window,
        )  # fmt: skip
        return out.numpy()
    import torch

    G = q.shape[1] // k.shape[1]
    query_positions = start + np.arange(T)[:, None]  # (T, 1)
    keys = np.arange(k.shape[2])[None, :]  # (1, S)
    visible = keys <= query_positions
    if window is not None:
        visible &= keys > query_positions - window
    k, v = (torch.tensor(a).repeat_interleave(G, dim=1) for a in (k, v))  # (B, H, S, D)
    out = torch.nn.functional.scaled_dot_product_attention(
        torch.tensor(q), k, v, attn_mask=torch.tensor(visible), scale=scale
    )
    return out.numpy()


ATTENTION_CASES = [  # (B, H, H_kv, T, start, S, D, window, scale)
    (2, 4, 2, 1, 7, 12, 8, None, None),  # one decode step, grouped-query, a stale tail
    (1, 4, 1, 3, 5, 10, 8, None, None),  # three new tokens (a draft), multi-query
    (2, 2, 2, 4, 0, 6, 4, None, 0.3),  # the prefill, multi-head, a given scale
    (1, 4, 2, 2, 9, 16, 8, 4, None),  # a sliding window of 4
    (2, 8, 8, 1, 0, 3, 4, None, None),  # the very first token
    (1, 6, 3, 5, 11, 16, 16, 6, None),  # five new tokens under a window of 6
]


@pytest.mark.exercise("5.2", points=2)
@pytest.mark.parametrize("oracle", TORCH_ORACLES)
def test_cached_attention_matches_the_libraries(exercise, oracle):
    """cached_attention: a library's attention, with stale keys after the filled ones"""
    ex = exercise(EX)
    rng = np.random.default_rng(0)
    for B, H, H_kv, T, start, S, D, window, scale in ATTENTION_CASES:
        q = rng.standard_normal((B, H, T, D))
        k, v = rng.standard_normal((B, H_kv, S, D)), rng.standard_normal((B, H_kv, S, D))
        k[:, :, start + T :] *= 100  # stale: huge scores, if a query saw them
        v[:, :, start + T :] = 1e6
        want = library_cached_attention(oracle, q, k, v, start, scale, window)
        got = ex.cached_attention(q, k, v, start, scale=scale, window=window)
        assert np.shape(got) == (B, H, T, D)
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


@pytest.mark.exercise("5.2", points=1)
@pytest.mark.parametrize("case", MODELS)
def test_decoding_through_your_attention_equals_recomputing(exercise, case, monkeypatch):
    """cached_attention: a model decoding through it gives the logits of recomputing"""
    ex = exercise(EX)
    model = model_of(case)
    calls = []

    def your_attention(q, k, v, causal=True, scale=None, window=None, mask=None):
        assert causal and mask is None
        start = k.shape[2] - q.shape[2]  # the cache hands over exactly the filled keys
        calls.append(start)
        return Tensor(
            np.asarray(ex.cached_attention(q.numpy(), k.numpy(), v.numpy(), start, scale, window))
        )

    cache = KVCache.for_model(model.config, 2)
    with monkeypatch.context() as patch:  # the model's attention layers call yours
        patch.setattr(tinyllm.nn.attention, "F", _Functional(your_attention))
        cached = decode_and_recompute(model, cache)[0]
    _, recomputed = decode_and_recompute(model, KVCache.for_model(model.config, 2))
    assert max(calls) > 0  # decode steps went through it, with cached keys
    np.testing.assert_allclose(cached, recomputed, atol=1e-4, rtol=0)


class _Functional:
    """Stands in for ``tinyllm.functional`` inside the attention layer: only its attention."""

    def __init__(self, attention):
        self.scaled_dot_product_attention = attention


# --- 5.3 top-p --------------------------------------------------------------------------------
def random_logits(seed, rows=6, vocab=50, scale=2.0):
    return np.random.default_rng(seed).normal(0, scale, (rows, vocab))


def random_history(seed, rows=6, vocab=50, length=12):
    return np.random.default_rng(seed + 100).integers(0, vocab, (rows, length))  # with repeats


def transformers_processor(name, *args):
    from transformers.generation import logits_process

    return getattr(logits_process, name)(*args)


def kept(filtered):
    return ~np.isneginf(np.asarray(filtered))


@pytest.mark.exercise("5.3", points=1)
def test_top_p_filter_by_hand(exercise):
    """top_p_filter: the fewest likeliest tokens that reach top_p"""
    ex = exercise(EX)
    logits = np.log(np.array([[0.1, 0.6, 0.3], [0.3, 0.3, 0.4]]))
    before = logits.copy()
    # Row 0: 0.6 < 0.8, 0.6 + 0.3 reaches it; row 1: 0.4 + 0.3 = 0.7 < 0.8, so all three.
    out = np.asarray(ex.top_p_filter(logits, 0.8))
    np.testing.assert_array_equal(kept(out), [[False, True, True], [True, True, True]])
    np.testing.assert_allclose(out[kept(out)], logits[kept(out)])  # kept logits unchanged
    np.testing.assert_array_equal(logits, before)
    # 0.5: the likeliest alone reaches it in row 0 (0.6); row 1 needs 0.4 and one 0.3.
    out = np.asarray(ex.top_p_filter(logits, 0.5))
    assert kept(out)[0].tolist() == [False, True, False]
    assert kept(out)[1].sum() == 2 and kept(out)[1, 2]
    # A tiny top_p keeps the likeliest token only; 1.0 keeps every token.
    np.testing.assert_array_equal(kept(ex.top_p_filter(logits, 1e-9)).sum(axis=-1), [1, 1])
    np.testing.assert_array_equal(kept(ex.top_p_filter(logits, 1.0)), True)
    # Large logits: the same tokens (the softmax subtracts each row's max).
    with np.errstate(over="raise", invalid="raise"):
        shifted = np.asarray(ex.top_p_filter(logits + 1000.0, 0.8))
    np.testing.assert_array_equal(kept(shifted), [[False, True, True], [True, True, True]])


@pytest.mark.exercise("5.3", points=2)
@pytest.mark.parametrize("oracle", HF_ORACLES)
def test_top_p_filter_matches_the_libraries(exercise, oracle):
    """top_p_filter: tinyllm's keep_top_p or transformers' TopPLogitsWarper"""
    ex = exercise(EX)
    for seed in range(3):
        logits = random_logits(seed, scale=[1.0, 2.0, 4.0][seed])
        for top_p in [0.05, 0.3, 0.5, 0.8, 0.9, 0.95, 1.0]:
            if oracle == "tinyllm":
                want = keep_top_p(logits, top_p)
            else:
                import torch

                want = transformers_processor("TopPLogitsWarper", top_p)(None, torch.tensor(logits))
                want = want.numpy()
            got = np.asarray(ex.top_p_filter(logits, top_p))
            assert got.shape == logits.shape
            np.testing.assert_array_equal(kept(got), kept(want), err_msg=f"top_p={top_p}")
            np.testing.assert_allclose(got[kept(got)], logits[kept(got)])


# --- 5.4 min-p --------------------------------------------------------------------------------
@pytest.mark.exercise("5.4", points=1)
def test_min_p_filter_by_hand(exercise):
    """min_p_filter: a line at min_p times the top probability"""
    ex = exercise(EX)
    logits = np.log(np.array([[0.9, 0.05, 0.05], [0.4, 0.35, 0.25]]))
    before = logits.copy()
    out = np.asarray(ex.min_p_filter(logits, 0.1))  # lines at 0.09 and 0.04
    np.testing.assert_array_equal(kept(out), [[True, False, False], [True, True, True]])
    np.testing.assert_allclose(out[kept(out)], logits[kept(out)])
    np.testing.assert_array_equal(logits, before)
    out = np.asarray(ex.min_p_filter(logits, 0.7))  # lines at 0.63 and 0.28
    np.testing.assert_array_equal(kept(out), [[True, False, False], [True, True, False]])
    # min_p = 1 keeps the likeliest only (and any token tied with it).
    tied = np.log(np.array([[0.4, 0.4, 0.2]]))
    np.testing.assert_array_equal(kept(ex.min_p_filter(tied, 1.0)), [[True, True, False]])
    with np.errstate(over="raise", invalid="raise"):
        shifted = np.asarray(ex.min_p_filter(logits + 1000.0, 0.1))
    np.testing.assert_array_equal(kept(shifted), [[True, False, False], [True, True, True]])


@pytest.mark.exercise("5.4", points=2)
@pytest.mark.parametrize("oracle", HF_ORACLES)
def test_min_p_filter_matches_the_libraries(exercise, oracle):
    """min_p_filter: tinyllm's keep_min_p or transformers' MinPLogitsWarper"""
    ex = exercise(EX)
    for seed in range(3):
        logits = random_logits(seed, scale=[1.0, 2.0, 4.0][seed])
        for min_p in [0.01, 0.05, 0.1, 0.3, 0.5, 1.0]:
            if oracle == "tinyllm":
                want = keep_min_p(logits, min_p)
            else:
                import torch

                want = transformers_processor("MinPLogitsWarper", min_p)(None, torch.tensor(logits))
                want = want.numpy()
            got = np.asarray(ex.min_p_filter(logits, min_p))
            assert got.shape == logits.shape
            np.testing.assert_array_equal(kept(got), kept(want), err_msg=f"min_p={min_p}")
            np.testing.assert_allclose(got[kept(got)], logits[kept(got)])


# --- 5.5 the repetition penalty ---------------------------------------------------------------
@pytest.mark.exercise("5.5", points=1)
def test_repetition_penalty_by_hand(exercise):
    """apply_repetition_penalty: the CTRL rule, each seen token once"""
    ex = exercise(EX)
    logits = np.array([[2.0, -1.0, 0.5, 3.0], [2.0, -1.0, 0.5, 3.0]])
    before = logits.copy()
    history = np.array([[0, 1, 0], [3, 3, 3]])
    # Row 0: token 0 (twice) is halved once, token 1 (negative) doubled; row 1: token 3 only.
    out = np.asarray(ex.apply_repetition_penalty(logits, history, 2.0))
    np.testing.assert_allclose(out, [[1.0, -2.0, 0.5, 3.0], [2.0, -1.0, 0.5, 1.5]])
    np.testing.assert_array_equal(logits, before)  # a new array
    # A penalty below 1 rewards repeats; 1 changes nothing; no history, nothing to penalize.
    out = np.asarray(ex.apply_repetition_penalty(logits, history, 0.5))
    np.testing.assert_allclose(out, [[4.0, -0.5, 0.5, 3.0], [2.0, -1.0, 0.5, 6.0]])
    np.testing.assert_allclose(ex.apply_repetition_penalty(logits, history, 1.0), logits)
    empty = np.zeros((2, 0), dtype=np.int64)
    np.testing.assert_allclose(ex.apply_repetition_penalty(logits, empty, 1.5), logits)


@pytest.mark.exercise("5.5", points=2)
@pytest.mark.parametrize("oracle", HF_ORACLES)
def test_repetition_penalty_matches_the_libraries(exercise, oracle):
    """apply_repetition_penalty: tinyllm's penalize_repetition or transformers' processor"""
    ex = exercise(EX)
    for seed in range(3):
        logits, history = random_logits(seed), random_history(seed, length=[1, 12, 40][seed])
        for penalty in [0.5, 1.0, 1.2, 1.3, 2.0]:
            if oracle == "tinyllm":
                want = penalize_repetition(logits, history, penalty)
            else:
                import torch

                processor = transformers_processor("RepetitionPenaltyLogitsProcessor", penalty)
                want = processor(torch.tensor(history), torch.tensor(logits)).numpy()
            got = np.asarray(ex.apply_repetition_penalty(logits, history, penalty))
            np.testing.assert_allclose(got, want, rtol=1e-12, err_msg=f"penalty={penalty}")
