"""Generation speed: the KV cache, transformers' ``generate``, speculative decoding, backends.

Four tables, each a ratio against a peer measured in the same run (greedy decoding, batch 1):

1. **KV cache**: tokens/s of ``generate`` with the cache and with ``use_cache=False``
   (every step reruns the whole sequence) at 64, 256, 512 and 1024 new tokens, on a
   GPT-2-shaped model. The gap grows with the length: O(T) against O(T^2) position passes.
2. **transformers**: tinyllm's cached decoding against ``transformers``' ``generate`` on the
   same Llama-shaped weights (saved by ``transformers``, loaded by ``from_pretrained``).
3. **speculative decoding**: a Llama-shaped target and a draft several times smaller, both
   trained here on the shipped Shakespeare corpus (once: kept in ``$TINYLLM_CACHE`` or
   ``~/.cache/tinyllm``), generating from validation-text prompts: tinyllm with the draft
   and with prompt lookup against tinyllm's target alone, beside ``transformers``' assisted
   generation (``assistant_model=``) against its own target alone; with the acceptance
   rate, the tokens per target forward and the formula's expectation.
4. **backends**: JAX's compiled cached decoding (and CuPy's, where a GPU is) against NumPy's.

    python benchmarks/bench_generate.py            # the full tables: about 10 minutes
    python benchmarks/bench_generate.py --quick    # seconds: tiny shapes, untrained models
"""

import argparse
import contextlib
from pathlib import Path

import numpy as np
from common import machine, table, timed

import tinyllm
from tinyllm.data import RandomBatches, corpus_tokens
from tinyllm.data.tokens import resolve_cache_dir
from tinyllm.infer import GenerationStats, generate
from tinyllm.infer.speculative import expected_tokens_per_round
from tinyllm.models import ModelConfig, Transformer
from tinyllm.train import TrainConfig, Trainer

LLAMA = dict(
    position="rope", norm="rmsnorm", mlp="swiglu", bias=False, tie_embeddings=False, n_kv_head=2
)
FULL = dict(
    cache=dict(lengths=(64, 256, 512, 1024), model=dict(d_model=256, n_layer=4, n_head=4)),
    hf=dict(tokens=256, model=dict(d_model=256, n_layer=4, n_head=4, d_ff=688)),
    spec=dict(
        tokens=200, prompts=3, steps=(300, 300), k=(2, 4, 6, 8),
        target=dict(d_model=384, n_layer=6, n_head=6, d_ff=1024),
        draft=dict(d_model=96, n_layer=1, n_head=2, d_ff=256),
    ),
    backends=dict(tokens=256),
)  # fmt: skip
QUICK = dict(
    cache=dict(lengths=(8, 16), model=dict(d_model=32, n_layer=1, n_head=2)),
    hf=dict(tokens=8, model=dict(d_model=32, n_layer=1, n_head=2, d_ff=64)),
    spec=dict(
        tokens=12, prompts=1, steps=(2, 2), k=(2,),
        target=dict(d_model=32, n_layer=2, n_head=2, d_ff=64),
        draft=dict(d_model=16, n_layer=1, n_head=2, d_ff=32),
    ),
    backends=dict(tokens=8),
)  # fmt: skip
PROMPT_TOKENS = 16


# --- 1. the KV cache ------------------------------------------------------------------------
def bench_cache(setup):
    lengths = setup["lengths"]
    config = ModelConfig(
        vocab_size=65, context_length=PROMPT_TOKENS + max(lengths), **setup["model"]
    )  # GPT-2's shape: learned positions, LayerNorm, GELU MLP, tied embeddings
    model = Transformer(config, seed=0)
    prompt = np.arange(PROMPT_TOKENS)[None] % 65
    generate(model, prompt, 4, temperature=0)  # warm up
    rows = []
    for n in lengths:
        cached, with_cache = timed(generate, model, prompt, n, temperature=0)
        recomputed, without = timed(generate, model, prompt, n, temperature=0, use_cache=False)
        assert (cached == recomputed).all()  # the same tokens, or the comparison means nothing
        rows.append([
            str(n), f"{n / with_cache:,.1f}", f"{n / without:,.1f}", f"{without / with_cache:.2f}x",
        ])  # fmt: skip
    shape = setup["model"]
    table(
        f"KV cache: GPT-2 shape, {shape['n_layer']} layers x {shape['d_model']}, vocab 65, "
        f"prompt {PROMPT_TOKENS}",
        ["new tokens", "cached tokens/s", "recomputed tokens/s", "cache speedup"],
        rows,
    )


# --- 2. against transformers' generate --------------------------------------------------------
def hf_llama(sizes, vocab_size, context_length, seed=0):
    """A ``transformers`` Llama with tinyllm's shape names, in eval mode."""
    import torch
    import transformers

    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=vocab_size, hidden_size=sizes["d_model"], intermediate_size=sizes["d_ff"],
        num_hidden_layers=sizes["n_layer"], num_attention_heads=sizes["n_head"],
        num_key_value_heads=2, max_position_embeddings=context_length,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(config).eval()


def hf_generate(model, prompt, n, **extra):
    import torch

    with torch.no_grad():
        out = model.generate(
            torch.tensor(prompt), max_new_tokens=n, min_new_tokens=n, do_sample=False,
            eos_token_id=None, pad_token_id=0, **extra,
        )  # fmt: skip
    return out.numpy()


def bench_transformers(setup, work):
    n = setup["tokens"]
    hf = hf_llama(setup["model"], 4096, PROMPT_TOKENS + n + 8)
    hf.save_pretrained(work / "hf-llama")
    ours = Transformer.from_pretrained(work / "hf-llama")
    prompt = np.random.default_rng(0).integers(0, 4096, (1, PROMPT_TOKENS))
    hf_generate(hf, prompt, 4)  # warm up both
    generate(ours, prompt, 4, temperature=0)
    theirs, hf_seconds = timed(lambda: hf_generate(hf, prompt, n))
    tokens, our_seconds = timed(lambda: generate(ours, prompt, n, temperature=0))
    same = "yes" if (tokens == theirs).all() else "no"
    shape = setup["model"]
    table(
        f"Against transformers' generate: Llama shape, {shape['n_layer']} layers x "
        f"{shape['d_model']}, GQA 2 key/value heads, vocab 4096, {n} new tokens",
        ["", "tokens/s", "same tokens"],
        [
            ["transformers generate", f"{n / hf_seconds:,.1f}", ""],
            ["tinyllm generate", f"{n / our_seconds:,.1f}", same],
            ["tinyllm / transformers", f"{hf_seconds / our_seconds:.2f}x", ""],
        ],
    )
    return ours, prompt


# --- 3. speculative decoding -------------------------------------------------------------------
def trained(name, sizes, steps, tokens, context=128):
    """A Llama-shaped char model of ``sizes`` trained ``steps`` steps on ``tokens``, loaded
    from the cache folder when an earlier run trained the same."""
    folder = (
        resolve_cache_dir()
        / "bench_generate"
        / (f"{name}-" + "-".join(f"{k}{v}" for k, v in sizes.items()) + f"-steps{steps}")
    )
    if (folder / "config.json").exists():
        return Transformer.from_pretrained(folder), 0.0
    config = ModelConfig(vocab_size=65, context_length=256, **LLAMA, **sizes)
    model = Transformer(config, seed=0)
    train = TrainConfig(
        steps=steps, batch_size=8, lr=2e-3, min_lr=2e-4, warmup_steps=min(20, steps // 10),
        eval_interval=steps, eval_batches=1, log_interval=steps, progress=False,
    )  # fmt: skip
    batches = RandomBatches(tokens, 8, context, seed=0)
    _, seconds = timed(lambda: Trainer(model, train, batches).fit())
    model.save_pretrained(folder)
    return model, seconds


def bench_speculative(setup, work):
    view = corpus_tokens("tinyshakespeare", view="char")
    tokens = view.tokens.astype(np.int64)
    split = int(0.9 * len(tokens))
    target, target_seconds = trained("target", setup["target"], setup["steps"][0], tokens[:split])
    draft, draft_seconds = trained("draft", setup["draft"], setup["steps"][1], tokens[:split])
    if target_seconds or draft_seconds:
        print(
            f"\n(trained the target in {target_seconds:.0f} s, the draft in {draft_seconds:.0f} s)"
        )
    n = setup["tokens"]
    starts = np.linspace(split, len(tokens) - 200, setup["prompts"]).astype(int)
    prompts = [tokens[s : s + 2 * PROMPT_TOKENS][None] for s in starts]  # validation text

    def run(**speculation):
        stats, total = GenerationStats(), 0.0
        outs = []
        for prompt in prompts:
            out, seconds = timed(
                generate, target, prompt, n, temperature=0, stats=stats, **speculation
            )
            outs.append(out)
            total += seconds
        return outs, stats, total

    run(draft=draft, draft_tokens=2)  # warm up
    plain, _, plain_seconds = run()
    cost = _draft_cost(target, draft, prompts[0])
    rows = [["target alone", f"{len(prompts) * n / plain_seconds:,.1f}", "", "1.00", "", "1.00x"]]
    for label, speculation in [
        *[(f"draft, k={k}", dict(draft=draft, draft_tokens=k)) for k in setup["k"]],
        ("prompt lookup (n <= 3), k=4", dict(prompt_lookup=3, draft_tokens=4)),
    ]:
        outs, stats, seconds = run(**speculation)
        assert all((a == b).all() for a, b in zip(outs, plain))  # greedy: the target's tokens
        k = speculation["draft_tokens"]
        a = stats.acceptance_rate
        formula = expected_tokens_per_round(a, k)
        expected = formula / (k * (cost if "draft" in speculation else 0.0) + 1)
        rows.append([
            label, f"{len(prompts) * n / seconds:,.1f}", f"{a:.0%}",
            f"{stats.tokens_per_forward:.2f}", f"{formula:.2f} / {expected:.2f}x",
            f"{plain_seconds / seconds:.2f}x",
        ])  # fmt: skip
    hf_rows = _hf_assisted(target, draft, prompts, n, work)
    t, d = setup["target"], setup["draft"]
    table(
        f"Speculative decoding: target {t['n_layer']} x {t['d_model']}, draft {d['n_layer']} x "
        f"{d['d_model']} ({_parameters(target) / _parameters(draft):.0f}x fewer parameters; one "
        f"draft forward costs {cost:.2f} of the target's), trained {setup['steps'][0]} / "
        f"{setup['steps'][1]} steps on Shakespeare characters; {len(prompts)} validation "
        f"prompts x {n} new tokens",
        ["", "tokens/s", "accepted", "tokens / target forward",
         "formula: tokens / round, speedup", "speedup"],
        rows + hf_rows,
    )  # fmt: skip


def _parameters(model):
    return sum(p.data.size for p in model.parameters())


def _draft_cost(target, draft, prompt, repeat=20):
    """One cached one-token forward of ``draft`` over one of ``target``, in time."""

    def per_token(model):
        generate(model, prompt, 4, temperature=0)
        _, seconds = timed(lambda: generate(model, prompt, repeat, temperature=0))
        return seconds

    return per_token(draft) / per_token(target)


def _hf_assisted(target, draft, prompts, n, work):
    """Rows for ``transformers``' assisted generation and its target alone, on our weights."""
    import transformers

    models = []
    for name, model in (("target", target), ("draft", draft)):
        model.save_pretrained(work / f"spec-{name}")
        models.append(
            transformers.AutoModelForCausalLM.from_pretrained(work / f"spec-{name}").eval()
        )
    hf_target, hf_draft = models
    hf_generate(hf_target, prompts[0], 4, assistant_model=hf_draft)  # warm up
    _, alone = timed(lambda: [hf_generate(hf_target, p, n) for p in prompts])
    _, assisted = timed(
        lambda: [hf_generate(hf_target, p, n, assistant_model=hf_draft) for p in prompts]
    )
    total = len(prompts) * n
    return [
        ["transformers: target alone", f"{total / alone:,.1f}", "", "", "", "1.00x"],
        ["transformers: assisted (its own k)", f"{total / assisted:,.1f}", "", "", "", f"{alone / assisted:.2f}x"],
    ]  # fmt: skip


# --- 4. backends ----------------------------------------------------------------------------------
def bench_backends(setup, model, prompt):
    n = setup["tokens"]
    reference, numpy_seconds = timed(lambda: generate(model, prompt, n, temperature=0))
    rows = [["numpy", f"{n / numpy_seconds:,.1f}", "", "1.00x", "yes"]]
    for name in ("jax", "cupy"):
        try:
            with tinyllm.use_backend(name) as backend:
                moved = Transformer.from_pretrained(_saved(model))
                _, compile_seconds = timed(generate, moved, prompt, n, temperature=0)
                out, seconds = timed(generate, moved, prompt, n, temperature=0)
                where = backend.describe()
        except Exception as err:  # noqa: BLE001 - a backend this machine lacks
            rows.append([name, "-", "", "", f"not run: {str(err).splitlines()[0][:80]}"])
            continue
        same = "yes" if (out == reference).all() else "no"
        rows.append([
            f"{name} ({where})", f"{n / seconds:,.1f}", f"{compile_seconds:.1f}",
            f"{numpy_seconds / seconds:.2f}x", same,
        ])  # fmt: skip
    table(
        f"Backends: the Llama model of table 2, {n} new tokens (after a first, compiling run)",
        ["backend", "tokens/s", "first run s", "vs numpy", "same tokens"],
        rows,
    )


_SAVED = {}


def _saved(model):
    if id(model) not in _SAVED:
        import tempfile

        folder = Path(tempfile.mkdtemp(prefix="bench-generate-"))
        model.save_pretrained(folder)
        _SAVED[id(model)] = folder
    return _SAVED[id(model)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes, seconds")
    parser.add_argument(
        "--only", choices=("cache", "transformers", "speculative", "backends"), action="append",
        help="run only these tables (repeatable; default: all)",
    )  # fmt: skip
    args = parser.parse_args()
    setup = QUICK if args.quick else FULL
    only = set(args.only or ("cache", "transformers", "speculative", "backends"))
    print(f"Machine: {machine()}")
    import tempfile

    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack():
        work = Path(tmp)
        if "cache" in only:
            bench_cache(setup["cache"])
        if only & {"transformers", "backends"}:
            model, prompt = bench_transformers(setup["hf"], work)
            if "backends" in only:
                bench_backends(setup["backends"], model, prompt)
        if "speculative" in only:
            bench_speculative(setup["spec"], work)


if __name__ == "__main__":
    main()
