"""llama.cpp itself runs tinyllm's GGUF files: it tokenizes as tinyllm does, its greedy
tokens are tinyllm's at f32, f16 and q8_0, and at every type its log-likelihood of a text is
tinyllm's on the file's weights (``stored_model``), up to llama.cpp's own arithmetic.

Opt-in: it needs llama-cpp-python (``pip install 'tinyllm[gguf-check]'``, which builds
llama.cpp from source for minutes) and is skipped without it. The models are random, their
output layer scaled up so that greedy choices are clear-cut rather than near-ties: a wrong
tensor name, RoPE order or tokenizer entry changes the tokens all the same.
``benchmarks/bench_gguf.py`` runs the same comparison on a trained model.
"""

import numpy as np
import pytest

from tinyllm.models import Transformer, get_preset
from tinyllm.quant.gguf_check import llama_cpp_outputs, tinyllm_outputs
from tinyllm.quant.gguf_export import stored_model, write_gguf
from tinyllm.tokenizer import Tokenizer

llama_cpp = pytest.importorskip(
    "llama_cpp",
    reason="llama.cpp's Python binding is not installed: pip install 'tinyllm[gguf-check]' "
    "(it builds llama.cpp from source, which takes minutes)",
)
pytest.importorskip("gguf", reason="the gguf package writes GGUF (the 'dev' extra)")

TEXT = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n"
    "'Tis 1,024 times   nobler in the mind -- to suffer the slings?\n"
) * 6
PROMPT = "All:\nSpeak,  'tis 42 times"
CONTEXT = 48
NEW_TOKENS = 16


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.train(TEXT, vocab_size=300)


def confident_model(arch, tokenizer, **changes):
    """A random model whose logits are spread wide (greedy picks are not near-ties)."""
    shapes = dict(context_length=CONTEXT, d_model=64, n_layer=2, n_head=4, vocab_size=300)
    if arch == "llama":
        config = get_preset("tiny-llama", **{"n_kv_head": 2, "d_ff": 128, **shapes, **changes})
    else:
        config = get_preset("tiny", **{**shapes, **changes})
    model = Transformer(config, seed=0)
    rng = np.random.default_rng(0)
    state = {}
    for name, value in model.state_dict().items():
        if name.endswith("norm.weight"):
            state[name] = 1 + 0.1 * rng.standard_normal(value.shape).astype(np.float32)
        else:
            state[name] = 0.1 * rng.standard_normal(value.shape).astype(np.float32)
    head = "lm_head.weight" if "lm_head.weight" in state else "token_embedding.weight"
    state[head] = state[head] * 20
    return model.load_state_dict(state).eval()


def tinyllm_run(model, prompt, window):
    greedy, (nll,) = tinyllm_outputs(model, prompt, NEW_TOKENS, [window])
    return greedy, nll


def llama_cpp_run(path, window):
    prompt, greedy, (nll,) = llama_cpp_outputs(path, PROMPT, NEW_TOKENS, [window], CONTEXT)
    return prompt, greedy, nll


@pytest.mark.parametrize("file_type", ["f32", "f16", "q8_0", "q4_0", "q4_1"])
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_llama_cpp_runs_the_file_as_tinyllm_runs_its_weights(arch, file_type, tokenizer, tmp_path):
    model = confident_model(arch, tokenizer)
    path = write_gguf(model, tokenizer, tmp_path / "m.gguf", file_type).path
    window = tokenizer.encode(TEXT)[: CONTEXT + 1]
    prompt = tokenizer.encode(PROMPT)
    ours_greedy, ours_nll = tinyllm_run(stored_model(model, file_type), prompt, window)
    their_prompt, their_greedy, their_nll = llama_cpp_run(path, window)
    assert their_prompt == prompt
    if file_type in ("f32", "f16", "q8_0"):
        assert their_greedy == ours_greedy
    # llama.cpp rounds activations to f16 (f16 weights) or to Q8_0 blocks (block weights)
    # before multiplying, so the log-likelihoods agree closely, not exactly (measured: below
    # 4e-5 relative at f32 and f16, 2e-3 at the block types; without the RoPE reordering 4e-2)
    tolerance = 2e-4 if file_type in ("f32", "f16") else 5e-3
    assert abs(their_nll.mean() - ours_nll.mean()) < tolerance * ours_nll.mean()
    assert np.corrcoef(their_nll, ours_nll)[0, 1] > 0.999


@pytest.mark.parametrize(
    "arch, changes",
    [
        ("llama", dict(rope_scaling={"type": "linear", "factor": 2.0})),  # rope.scaling.*
        ("llama", dict(d_head=32)),  # heads wider than d_model / n_head: key_length
        ("llama", dict(n_kv_head=1, rope_theta=1e6, norm_eps=1e-6)),
        ("llama", dict(tie_embeddings=True)),  # no output.weight: llama.cpp reuses token_embd
        ("gpt2", dict(tie_embeddings=False)),
    ],
)
def test_llama_cpp_runs_each_option_the_export_writes(arch, changes, tokenizer, tmp_path):
    model = confident_model(arch, tokenizer, **changes)
    path = write_gguf(model, tokenizer, tmp_path / "m.gguf", "f32").path
    window = tokenizer.encode(TEXT)[: CONTEXT + 1]
    ours_greedy, ours_nll = tinyllm_run(model, tokenizer.encode(PROMPT), window)
    _, their_greedy, their_nll = llama_cpp_run(path, window)
    assert their_greedy == ours_greedy
    assert abs(their_nll.mean() - ours_nll.mean()) < 2e-4 * ours_nll.mean()


@pytest.mark.parametrize("pattern", ["gpt2", "gpt4"])  # llama.cpp's gpt-2 and dbrx
def test_llama_cpp_tokenizes_as_tinyllm_does(pattern, tmp_path):
    from tinyllm.data import load_corpus

    shakespeare = load_corpus("tinyshakespeare")[:30_000]
    tokenizer = Tokenizer.train(shakespeare, vocab_size=600, pattern=pattern)
    model = confident_model("gpt2", tokenizer, vocab_size=600)
    llm = llama_cpp.Llama(
        model_path=str(write_gguf(model, tokenizer, tmp_path / "m.gguf", "f16").path),
        n_ctx=CONTEXT,
        verbose=False,
    )
    tricky = (
        "It'S 2024!!  We'LL see...\n\n\n  Don't stop\t\tnow, café naïve 12345 — ok?\r\n"
        "  \nEND<|endoftext|>x<|user|>"
    )
    for text in (tricky, shakespeare[1000:3000]):
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == tokenizer.encode(text)
    llm.close()
