"""Serving many requests at once: continuous batching against static batching and one at a time.

One seeded stream of requests with mixed lengths - prompts uniform in a range, outputs
long-tailed (exponential, clipped), as in chat traffic where most answers are short and a
few are long - is served three ways at each concurrency (1, 4, 16 and 64 requests in flight),
its first 8 x concurrency requests (at least 16): enough that the end of the run, where the
last long requests finish with the batch no longer full (a tail a busy server does not
have), weighs little:

- **sequential**: ``generate`` on one request at a time, to its own length. Its rate does
  not depend on the concurrency, so it is measured once, over the first 16 requests (the
  requests of the first row: there static batching does the same);
- **static batching**: batches of up to ``concurrency`` requests in arrival order; each is
  one ``generate`` call on the ragged prompts (padded on the left) for as many tokens as its
  longest request needs. A short request's row keeps running until the batch ends, and the
  next batch waits for it: only each request's own tokens count as generated;
- **engine**: the continuous-batching ``Engine`` with ``max_batch=concurrency``, all
  requests queued at the start: a finished request leaves at once and a waiting one takes
  its place at the next step.

All greedy (each request's ``max_tokens`` is its output length, no stop tokens), on a
Llama-shaped random model: the tokens do not matter, their cost does. The first table is
generated tokens per second and the ratios; "same tokens" counts the requests whose tokens
the engine and static batching agree on (float32 sums in different batch shapes may break a
near-tie differently).

The second table is the KV memory of the engine runs, sampled after every step: the
**waste** of the paged cache (the unwritten share of the blocks in use: at most the tail
of each sequence's last block) against what a contiguous cache would reserve for the same
running requests - ``prompt + max_tokens`` positions each (the best case for it: here each
request's ``max_tokens`` is exactly its length; a real client asks for more than it uses),
or the whole context each.

    python benchmarks/bench_serve.py            # the full tables: a few minutes
    python benchmarks/bench_serve.py --quick    # seconds: a tiny model, few requests
"""

import argparse
import time

import numpy as np
from common import machine, table_head, table_row

from tinyllm.infer import generate
from tinyllm.infer.engine import Engine, SamplingParams
from tinyllm.models import ModelConfig, Transformer

LLAMA = dict(
    position="rope", norm="rmsnorm", mlp="swiglu", bias=False, qkv_bias=False,
    tie_embeddings=False, n_kv_head=2,
)  # fmt: skip
FULL = dict(
    model=dict(vocab_size=4096, context_length=512, d_model=256, n_layer=4, n_head=4, d_ff=688),
    prompt=(16, 256), output_mean=64, output=(4, 256), concurrency=(1, 4, 16, 64),
    requests_per_slot=8, min_requests=16, sequential_requests=16, block_size=16,
)  # fmt: skip
QUICK = dict(
    model=dict(vocab_size=256, context_length=128, d_model=32, n_layer=1, n_head=2, d_ff=64),
    prompt=(4, 32), output_mean=12, output=(2, 48), concurrency=(1, 4),
    requests_per_slot=2, min_requests=4, sequential_requests=4, block_size=8,
)  # fmt: skip


def workload(setup, n, seed=0):
    """``n`` requests ``(prompt, output_length)``: prompt lengths uniform in
    ``setup["prompt"]``, output lengths exponential with mean ``output_mean``, clipped."""
    rng = np.random.default_rng(seed)
    low, high = setup["prompt"]
    shortest, longest = setup["output"]
    vocab = setup["model"]["vocab_size"]
    prompt_lengths = rng.integers(low, high + 1, n)
    outputs = np.clip(rng.exponential(setup["output_mean"], n).round(), shortest, longest)
    return [(rng.integers(0, vocab, p).tolist(), int(o)) for p, o in zip(prompt_lengths, outputs)]


def sequential(model, requests):
    """Each request alone: (new tokens per request, seconds)."""
    start, outs = time.perf_counter(), []
    for prompt, n in requests:
        outs.append(generate(model, [prompt], n, temperature=0)[0, len(prompt) :].tolist())
    return outs, time.perf_counter() - start


def static(model, requests, concurrency):
    """Batches of ``concurrency`` requests, each run for its longest request's length:
    (each request's own new tokens, seconds)."""
    start, outs = time.perf_counter(), []
    for first in range(0, len(requests), concurrency):
        batch = requests[first : first + concurrency]
        longest = max(n for _, n in batch)
        rows = generate(model, [prompt for prompt, _ in batch], longest, temperature=0)
        if not isinstance(rows, list):  # prompts of one length: an array (B, T + longest)
            rows = list(rows)
        outs += [
            row[len(prompt) : len(prompt) + n].tolist() for row, (prompt, n) in zip(rows, batch)
        ]
    return outs, time.perf_counter() - start


def continuous(model, requests, concurrency, block_size):
    """The engine, every request queued at the start: (new tokens per request, seconds,
    the memory samples of each step, the engine's counts)."""
    engine = Engine(model, max_batch=concurrency, block_size=block_size)
    context = model.config.context_length
    start, samples = time.perf_counter(), []
    handles = [
        engine.add_request(p, SamplingParams(max_tokens=n, temperature=0)) for p, n in requests
    ]
    while engine.has_work():
        engine.step()
        memory = engine.memory()
        if memory["blocks"]:
            full = len(engine.running) * context
            samples.append((memory["waste"], 1 - memory["used"] / memory["contiguous"],
                            1 - memory["used"] / full))  # fmt: skip
    seconds = time.perf_counter() - start
    return [h.sequences[0].new_tokens for h in handles], seconds, samples, engine.counts


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a tiny model and few requests")
    parser.add_argument(
        "--concurrency", type=int, nargs="+", help="only these concurrencies (default: all)"
    )
    args = parser.parse_args()
    setup = QUICK if args.quick else FULL
    if args.concurrency:
        setup = {**setup, "concurrency": tuple(args.concurrency)}
    print(f"Machine: {machine()}")
    model = Transformer(ModelConfig(**setup["model"], **LLAMA), seed=0)
    stream = workload(setup, max(setup["requests_per_slot"] * max(setup["concurrency"]),
                                 setup["min_requests"], setup["sequential_requests"]))  # fmt: skip
    warm = stream[:2]
    sequential(model, [(p, 2) for p, _ in warm])  # warm up both paths
    continuous(model, [(p, 2) for p, _ in warm], 2, setup["block_size"])

    shape, (low, high) = setup["model"], setup["prompt"]
    about = (
        f"Llama shape, {shape['n_layer']} layers x {shape['d_model']}, GQA 2 key/value heads, "
        f"vocab {shape['vocab_size']}, context {shape['context_length']}; prompts {low}-{high} "
        f"tokens, outputs exponential (mean {setup['output_mean']}, clipped to "
        f"{setup['output'][0]}-{setup['output'][1]}); greedy"
    )
    table_head(
        f"Generated tokens/s: {about}",
        ["concurrency", "requests", "sequential", "static batching", "engine", "engine / static",
         "engine / sequential", "same tokens", "preemptions"],
    )  # fmt: skip
    first = stream[: setup["sequential_requests"]]
    _, seconds = sequential(model, first)
    sequential_rate = sum(length for _, length in first) / seconds
    memory_rows = []
    for concurrency in setup["concurrency"]:
        n = max(setup["requests_per_slot"] * concurrency, setup["min_requests"])
        requests = stream[:n]
        tokens = sum(length for _, length in requests)
        static_outs, static_seconds = static(model, requests, concurrency)
        engine_outs, engine_seconds, samples, counts = continuous(
            model, requests, concurrency, setup["block_size"]
        )
        same = sum(a == b for a, b in zip(engine_outs, static_outs))
        static_rate, engine_rate = tokens / static_seconds, tokens / engine_seconds
        table_row([
            str(concurrency), str(n), f"{sequential_rate:,.1f}", f"{static_rate:,.1f}",
            f"{engine_rate:,.1f}", f"{engine_rate / static_rate:.2f}x",
            f"{engine_rate / sequential_rate:.2f}x", f"{same}/{n}", str(counts["preemptions"]),
        ])  # fmt: skip
        waste = 100 * np.array(samples)  # (steps, 3): paged, prompt + max_tokens, context
        memory_rows.append([
            str(concurrency), str(len(samples)),
            *[f"{waste[:, i].mean():.1f} / {waste[:, i].max():.1f}" for i in range(3)],
        ])  # fmt: skip

    print(
        f"\n(sequential: one request at a time, measured once over the first "
        f"{len(first)} requests; static batching waits for each batch's longest request)"
    )
    table_head(
        f"KV memory waste (%, mean / max over the engine's steps; blocks of "
        f"{setup['block_size']} positions): the paged cache against a contiguous reservation",
        ["concurrency", "steps", "paged (unwritten share of blocks in use)",
         "contiguous prompt + max_tokens", f"contiguous full context ({shape['context_length']})"],
    )  # fmt: skip
    for row in memory_rows:
        table_row(row)


if __name__ == "__main__":
    main()
