"""Prompts of different lengths generated together: each row gets the tokens it gets alone."""

import numpy as np
import pytest

import tinyllm
from tinyllm.functional import attention
from tinyllm.infer import generate, stream_generate
from tinyllm.models import Transformer, get_preset

PROMPTS = [[5, 9], [1, 2, 3, 4, 5, 6, 7], [8, 3, 3, 1]]
CASES = {
    "gpt2": ("tiny", {}),  # learned positions: each row needs its own
    "llama": ("tiny-llama", {}),  # RoPE: distances only
    "mistral": ("tiny-llama", {"sliding_window": 3}),  # the window counts back from each query
}


def _model(case, seed=0, **overrides):
    preset, extra = CASES[case]
    # init_std=0.5: attention far from uniform, so a padding key seen would change the tokens
    config = get_preset(
        preset, n_layer=2, d_model=32, n_head=2, context_length=24, init_std=0.5,
        **extra, **overrides,
    )  # fmt: skip
    return Transformer(config, seed=seed)


def _alone(model, prompts, n, **kwargs):
    return [generate(model, [prompt], n, **kwargs)[0] for prompt in prompts]


@pytest.mark.parametrize("query_blocks", [False, True])
@pytest.mark.parametrize("case", CASES)
def test_prompts_of_different_lengths_get_what_they_get_alone(case, query_blocks, monkeypatch):
    """With ``query_blocks``, the padded prefill (a mask with the causal one) and the uncached
    steps run long causal attention's blocked path."""
    if query_blocks:
        monkeypatch.setattr(attention, "MIN_QUERY_BLOCK", 1)
    model = _model(case)
    together = generate(model, PROMPTS, 10, temperature=0)
    assert isinstance(together, list) and len(together) == 3
    for row, alone, prompt in zip(together, _alone(model, PROMPTS, 10, temperature=0), PROMPTS):
        assert row.dtype == np.int64 and len(row) == len(prompt) + 10
        np.testing.assert_array_equal(row, alone)
    uncached = generate(model, PROMPTS, 10, temperature=0, use_cache=False)
    for row, cached in zip(uncached, together):
        np.testing.assert_array_equal(row, cached)


@pytest.mark.parametrize("case", CASES)
def test_stop_tokens_stop_each_row_on_its_own(case):
    model = _model(case)
    free = _alone(model, PROMPTS, 10, temperature=0)
    stop = int(free[1][len(PROMPTS[1]) + 2])  # row 1's third new token
    together = generate(model, PROMPTS, 10, temperature=0, stop_token_ids=[stop])
    alone = _alone(model, PROMPTS, 10, temperature=0, stop_token_ids=[stop])
    for row, one in zip(together, alone):
        np.testing.assert_array_equal(row, one[one >= 0])  # the row ends at its stop token
    assert len(together[1]) <= len(PROMPTS[1]) + 3 and together[1][-1] == stop
    steps = list(stream_generate(model, PROMPTS, 10, temperature=0, stop_token_ids=[stop]))
    stopped_at = len(together[1]) - len(PROMPTS[1])
    assert all(step[1] == -1 for step in steps[stopped_at:])  # pad_id after the stop


def test_the_repetition_penalty_sees_no_padding():
    model = _model("llama")
    kwargs = dict(temperature=0, repetition_penalty=5.0)
    for row, alone in zip(
        generate(model, PROMPTS, 8, **kwargs), _alone(model, PROMPTS, 8, **kwargs)
    ):
        np.testing.assert_array_equal(row, alone)


def test_prompts_of_one_length_keep_the_array():
    model = _model("gpt2")
    out = generate(model, [[1, 2], [3, 4]], 3, temperature=0)
    assert isinstance(out, np.ndarray) and out.shape == (2, 5)


def test_a_ragged_batch_past_the_context_is_refused():
    model = _model("gpt2")  # context 24: the longest prompt 7 + 18 new tokens need 24 positions
    generate(model, PROMPTS, 18, temperature=0)
    with pytest.raises(ValueError, match="longest 7 tokens.*max_new_tokens=19.*context_length"):
        generate(model, PROMPTS, 19, temperature=0)


@pytest.mark.parametrize("prompts", [[[1, 2], []], [[1, 2], [1.5]], [[1, 2], 3]])
def test_a_bad_prompt_is_named(prompts):
    with pytest.raises(ValueError, match="prompt 1 is"):
        generate(_model("gpt2"), prompts, 2, temperature=0)


@pytest.mark.parametrize("case", ["gpt2", "llama"])
def test_jax_runs_a_ragged_batch_compiled_with_numpys_tokens(case, monkeypatch):
    pytest.importorskip("jax")
    reference = generate(_model(case), PROMPTS, 10, temperature=0)
    with tinyllm.use_backend("jax"):
        model = _model(case)  # the same weights: initialised on the host
    traces = []
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda *a, **k: traces.append(1) or forward(*a, **k))
    ours = generate(model, PROMPTS, 10, temperature=0)
    assert len(traces) == 2  # the prefill and the decoding step
    for row, expected in zip(ours, reference):
        np.testing.assert_array_equal(row, expected)
