"""Speculative decoding: greedy output equals the target's own, sampled output has exactly
the target's distribution (a chi-square test that a rule without the residual fails), the
caches roll back, the counts add up, and bad settings are named."""

import numpy as np
import pytest

from tinyllm.infer import GenerationStats, generate, speculative
from tinyllm.infer.sampling import next_token_probs
from tinyllm.infer.speculative import accept_or_resample, lookup_proposals, residual_distribution
from tinyllm.models import ModelConfig, Transformer

stats_module = pytest.importorskip("scipy.stats")

LLAMA = dict(
    position="rope", norm="rmsnorm", mlp="swiglu", bias=False, tie_embeddings=False, n_kv_head=2
)
CASES = {"gpt2": {}, "llama": LLAMA, "mistral-sliding-window": {**LLAMA, "sliding_window": 6}}


def model_of(options, seed, vocab_size=61, **sizes):
    sizes = {"d_model": 32, "n_layer": 2, "n_head": 4, **sizes}
    config = ModelConfig(vocab_size=vocab_size, context_length=48, init_std=0.3, **options, **sizes)
    return Transformer(config, seed=seed)


def draft_of(options, seed=1, vocab_size=61):
    return model_of(options, seed, vocab_size, d_model=16, n_layer=1, n_head=2)


# --- greedy: the target's own tokens ------------------------------------------------------------
@pytest.mark.parametrize("case", CASES)
def test_greedy_speculation_gives_the_targets_greedy_tokens(case):
    target, options = model_of(CASES[case], seed=0), CASES[case]
    prompt = np.array([[5, 6, 7, 8, 5, 6, 7, 9, 5, 6]])  # repetitive: prompt lookup finds n-grams
    expected = generate(target, prompt, 30, temperature=0)
    for speculation in (
        dict(draft=draft_of(options)),  # a different model: many rejections
        dict(draft=target, draft_tokens=3),  # the target itself: every proposal kept
        dict(prompt_lookup=3, draft_tokens=5),
        dict(draft=draft_of(options), repetition_penalty=1.3),
    ):
        settings = dict(temperature=0, **speculation)
        reference = expected
        if "repetition_penalty" in settings:
            reference = generate(target, prompt, 30, temperature=0, repetition_penalty=1.3)
        np.testing.assert_array_equal(generate(target, prompt, 30, **settings), reference)


def test_the_target_as_its_own_draft_keeps_every_proposal():
    target = model_of(LLAMA, seed=0)
    stats = GenerationStats()
    generate(target, [[1, 2, 3]], 20, temperature=0, draft=target, draft_tokens=4, stats=stats)
    # 20 tokens in rounds of 4 kept + 1 bonus: 4 forwards; the last round asks for 4 more
    assert (stats.new_tokens, stats.target_forwards) == (20, 4)
    assert stats.drafted == stats.accepted == 16 and stats.acceptance_rate == 1.0
    assert stats.tokens_per_forward == 5.0
    plain = GenerationStats()
    generate(target, [[1, 2, 3]], 20, temperature=0, stats=plain)
    assert (plain.new_tokens, plain.target_forwards, plain.drafted) == (20, 20, 0)


def test_stops_end_a_speculative_stream_where_they_end_a_plain_one():
    target = model_of(LLAMA, seed=0)
    prompt = [[3, 1, 4, 1, 5]]
    free = generate(target, prompt, 25, temperature=0)[0, 5:]
    stop = int(free[7])  # a token the greedy text reaches
    expected = generate(target, prompt, 25, temperature=0, stop_token_ids=[stop])
    ours = generate(target, prompt, 25, temperature=0, stop_token_ids=[stop], draft=target)
    np.testing.assert_array_equal(ours, expected)
    assert ours.shape[1] == 5 + list(free).index(stop) + 1  # the stop token, then nothing


def test_prompt_lookup_copies_what_followed_the_newest_ngram():
    ids = np.array([1, 2, 3, 4, 9, 1, 2, 3, 7, 1, 2, 3])
    np.testing.assert_array_equal(lookup_proposals(ids, 2, max_ngram=3), [7, 1])  # the latest
    # "3" last came at index 7; what followed runs up to the end of the text
    np.testing.assert_array_equal(lookup_proposals(ids, 5, max_ngram=1), [7, 1, 2, 3])
    assert len(lookup_proposals(np.array([1, 2, 3]), 4)) == 0  # nothing repeats
    np.testing.assert_array_equal(lookup_proposals(np.array([4, 4, 4]), 3, max_ngram=2), [4])


# --- sampling: exactly the target's distribution ----------------------------------------------
def chi_square_p_value(samples, probs, n_cells):
    """The p-value of ``samples`` (ints in 0 .. n_cells - 1) against ``probs`` (n_cells,);
    cells expected fewer than 5 times are pooled, as the test needs."""
    observed = np.bincount(samples, minlength=n_cells).astype(float)
    expected = probs * len(samples)
    small = expected < 5
    observed = np.append(observed[~small], observed[small].sum())
    expected = np.append(expected[~small], expected[small].sum())
    keep = expected > 0
    return stats_module.chisquare(observed[keep], expected[keep]).pvalue


def test_the_rule_keeps_the_target_distribution_and_the_residual_is_needed():
    rng = np.random.default_rng(0)
    p = np.array([0.5, 0.25, 0.15, 0.1, 0.0])  # the target
    q = np.array([0.1, 0.2, 0.2, 0.2, 0.3])  # a poor draft: token 4 the target never makes
    n = 20_000
    proposals = rng.choice(5, size=n, p=q)

    def outputs(rule):
        out = []
        for x in proposals:
            kept, token = rule(np.array([x]), q[None], np.stack([p, p]), rng)
            out.append(x if kept else token)
        return np.array(out)

    assert chi_square_p_value(outputs(accept_or_resample), p, 5) > 1e-3

    def no_residual(proposed, draft_probs, target_probs, rng):  # a rejected token redrawn from p
        kept, _ = accept_or_resample(proposed, draft_probs, target_probs, rng)
        return kept, int(rng.choice(len(p), p=target_probs[0]))

    assert chi_square_p_value(outputs(no_residual), p, 5) < 1e-6
    # max(0, p - q) = [0.4, 0.05, 0, 0, 0], normalised
    np.testing.assert_allclose(residual_distribution(p[None], q[None])[0], [8 / 9, 1 / 9, 0, 0, 0])


def exact_two_token_distribution(target, prompt, settings):
    """P(first, second new token) (V * V,) of ``target`` sampling after ``prompt`` (1-D)."""
    V = target.config.vocab_size
    first = next_token_probs(target(prompt[None])[0].numpy()[:, -1], **settings)[0]  # (V,)
    joint = np.zeros((V, V))
    for a in range(V):
        ids = np.append(prompt, a)
        joint[a] = first[a] * next_token_probs(target(ids[None])[0].numpy()[:, -1], **settings)[0]
    return joint.reshape(-1)


@pytest.mark.parametrize(
    "settings, speculation",
    [
        (dict(temperature=1.0), dict(draft="model", draft_tokens=2)),
        (dict(temperature=0.8, top_k=4), dict(draft="model", draft_tokens=3)),
        (dict(temperature=1.0), dict(prompt_lookup=2, draft_tokens=2)),
    ],
    ids=["draft", "draft-top-k", "prompt-lookup"],
)
def test_sampled_speculation_has_the_targets_distribution(settings, speculation, monkeypatch):
    V = 6
    target, draft = model_of(LLAMA, seed=0, vocab_size=V), draft_of(LLAMA, seed=3, vocab_size=V)
    for model in (target, draft):  # peaked, and different: P(first token) 0.02 .. 0.43
        model.lm_head.weight.data *= 10.0
    if speculation.get("draft") == "model":
        speculation = {**speculation, "draft": draft}
    prompt = np.array([1, 2, 3, 1, 2])  # "1 2" repeats: prompt lookup proposes "3 1"
    exact = exact_two_token_distribution(target, prompt, settings)

    def sampled(n=700):
        pairs = [
            generate(target, prompt[None], 2, seed=seed, **settings, **speculation)[0, -2:]
            for seed in range(n)
        ]
        return np.array([a * V + b for a, b in pairs])

    assert chi_square_p_value(sampled(), exact, V * V) > 1e-3
    # A rule that redraws a rejected token from the target instead of the residual is off
    monkeypatch.setattr(speculative, "residual_distribution", lambda p, q: p)
    assert chi_square_p_value(sampled(), exact, V * V) < 1e-3


# --- transformers' assisted generation as the outside oracle -------------------------------------
def test_greedy_speculation_equals_transformers_assisted_generation(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    shape = dict(vocab_size=61, max_position_embeddings=48, num_key_value_heads=2)
    configs = {
        "target": dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4),
        "draft": dict(hidden_size=16, intermediate_size=24, num_hidden_layers=1, num_attention_heads=2),
    }  # fmt: skip
    models = {}
    for name, sizes in configs.items():
        hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**shape, **sizes)).eval()
        with torch.no_grad():
            for param in hf.parameters():
                param.mul_(4.0)  # sharper logits: clear-cut greedy choices
        hf.save_pretrained(tmp_path / name)
        models[name] = (hf, Transformer.from_pretrained(tmp_path / name))
    prompt = np.array([[7, 3, 9, 3, 9, 1]])
    with torch.no_grad():
        expected = models["target"][0].generate(
            torch.tensor(prompt), assistant_model=models["draft"][0], max_new_tokens=20,
            do_sample=False, eos_token_id=None, pad_token_id=0,
        )  # fmt: skip
    ours = generate(models["target"][1], prompt, 20, temperature=0, draft=models["draft"][1])
    np.testing.assert_array_equal(ours, expected.numpy())


# --- bad settings ------------------------------------------------------------------------------
def test_bad_speculation_is_named():
    target = model_of(LLAMA, seed=0)
    prompt = [[1, 2, 3]]
    with pytest.raises(ValueError, match="vocabulary has 50 tokens, the target's 61"):
        generate(target, prompt, 4, draft=draft_of(LLAMA, vocab_size=50))
    with pytest.raises(ValueError, match="one prompt at a time; got a batch of 2"):
        generate(target, [[1, 2], [3, 4]], 4, draft=target)
    with pytest.raises(ValueError, match="a draft model or prompt_lookup, not both"):
        generate(target, prompt, 4, draft=target, prompt_lookup=2)
    with pytest.raises(ValueError, match="draft_tokens=0: expected a positive integer"):
        generate(target, prompt, 4, draft=target, draft_tokens=0)
    with pytest.raises(ValueError, match="prompt_lookup=0: expected the longest n-gram"):
        generate(target, prompt, 4, prompt_lookup=0)
    with pytest.raises(ValueError, match="draft='small': expected a Transformer"):
        generate(target, prompt, 4, draft="small")
    with pytest.raises(ValueError, match="runs past the context_length of 48"):
        generate(target, prompt, 47, draft=target)
    with pytest.raises(ValueError, match="needs the KV cache"):
        generate(target, prompt, 4, prompt_lookup=2, use_cache=False)
    with pytest.raises(ValueError, match="stats=.*expected a GenerationStats"):
        generate(target, prompt, 4, stats={})
