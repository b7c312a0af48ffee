"""Forward + backward time of tinyllm's core ops against PyTorch eager on the CPU.

Each op runs at transformer-like sizes in float32, with tinyllm on the NumPy backend, with
tinyllm on the JAX backend compiled, and with PyTorch, in the same process. One timed call
is: build the output from leaves that require gradients, then ``backward`` with a fixed
upstream gradient (or from the scalar loss), then drop the gradients so the next call starts
clean; under JAX the call is one ``jax.jit`` program returning the output and the gradients
(as in tinyllm's compiled training step), timed to ``block_until_ready``. After warm-up runs,
the median of the repeats is reported, with the ratios tinyllm / torch.

    python benchmarks/bench_ops.py              # every shape, 30 repeats
    python benchmarks/bench_ops.py --quick      # tiny shape only, 10 repeats
    python benchmarks/bench_ops.py --repeat 50 --shape small
    python benchmarks/bench_ops.py --shape long --query-blocks 1   # attention in one block

Shapes follow DESIGN.md: "tiny" is nanoGPT's CPU recipe (batch 12, context 64, width 128,
4 heads, vocab 65); "small" is batch 12, context 256, width 384, 6 heads; "long" is GPT-2
small's context and width (batch 2, context 1024, width 768, 12 heads), where causal
attention runs in blocks of queries (``functional/attention.py``; ``--query-blocks`` sets
how many, 1 for the plain one-block attention).
"""

import argparse
import dataclasses

import numpy as np
from common import machine, median_ms

import tinyllm
import tinyllm.functional as F
from tinyllm.functional import attention

try:
    import torch
    import torch.nn.functional as TF
except ImportError:  # the comparison needs torch; install it with the 'dev' extra
    torch = None


@dataclasses.dataclass(frozen=True)
class Shape:
    name: str
    batch: int
    context: int
    width: int
    n_head: int


SHAPES = {
    "tiny": Shape("tiny", batch=12, context=64, width=128, n_head=4),
    "small": Shape("small", batch=12, context=256, width=384, n_head=6),
    "long": Shape("long", batch=2, context=1024, width=768, n_head=12),
}


def forward_backward(run, leaves, upstream):
    """One timed call: ``out = run(*leaves)``, backward, then clear the leaves' gradients.

    tinyllm and torch spell it the same: ``out.backward(upstream)``, where ``upstream`` is
    d(loss)/d(out), or None when ``out`` is already a scalar loss.
    """

    def step():
        out = run(*leaves)
        out.backward(upstream)
        for leaf in leaves:
            leaf.grad = None

    return step


def compiled_forward_backward(run, arrays, grad_flags, upstream):
    """The same call on the JAX backend as one ``jax.jit`` program: inputs and the upstream
    gradient in, the output and the gradients out. Call it inside ``use_backend("jax")``."""
    import jax

    moved = [tinyllm.Tensor(a).data for a in arrays]
    upstream = None if upstream is None else tinyllm.Tensor(upstream).data

    def program(arrays, upstream):
        leaves = [tinyllm.Tensor(a, requires_grad=g) for a, g in zip(arrays, grad_flags)]
        out = run(*leaves)
        out.backward(None if upstream is None else tinyllm.Tensor(upstream))
        return out.data, [leaf.grad for leaf in leaves if leaf.requires_grad]

    compiled = jax.jit(program)
    return lambda: jax.block_until_ready(compiled(moved, upstream))


def cases(shape, rng):
    """``(label, tinyllm_fn, torch_fn, [input arrays], [needs grad], upstream or None)``."""
    B, T, C, H = shape.batch, shape.context, shape.width, shape.n_head
    D = C // H
    f32 = np.float32

    def normal(*dims):
        return rng.standard_normal(dims).astype(f32)

    x = normal(B, T, C)
    yield (
        f"matmul ({B},{T},{C})x({C},{4 * C})",
        F.matmul,
        torch.matmul,
        [x, normal(C, 4 * C) / C**0.5],
        [True, True],
        normal(B, T, 4 * C),
    )

    q, k, v = normal(B, H, T, D), normal(B, H, T, D), normal(B, H, T, D)
    yield (
        f"attention causal ({B},{H},{T},{D})",
        lambda q, k, v: F.scaled_dot_product_attention(q, k, v, causal=True),
        lambda q, k, v: TF.scaled_dot_product_attention(q, k, v, is_causal=True),
        [q, k, v],
        [True, True, True],
        normal(B, H, T, D),
    )

    yield (
        f"softmax ({B},{H},{T},{T})",
        F.softmax,
        lambda s: torch.softmax(s, dim=-1),
        [normal(B, H, T, T)],
        [True],
        normal(B, H, T, T),
    )

    weight, bias = 1 + 0.1 * normal(C), 0.1 * normal(C)
    yield (
        f"rms_norm ({B},{T},{C})",
        lambda x, w: F.rms_norm(x, w, eps=1e-5),
        lambda x, w: TF.rms_norm(x, (C,), w, eps=1e-5),
        [x, weight],
        [True, True],
        normal(B, T, C),
    )
    yield (
        f"layer_norm ({B},{T},{C})",
        lambda x, w, b: F.layer_norm(x, w, b, eps=1e-5),
        lambda x, w, b: TF.layer_norm(x, (C,), w, b, eps=1e-5),
        [x, weight, bias],
        [True, True, True],
        normal(B, T, C),
    )

    for rows, vocab in ((B * T, 65), (B * T // 4, 8192), (64, 50257)):
        logits = normal(rows, vocab)
        targets = rng.integers(0, vocab, size=rows)
        torch_targets = torch.from_numpy(targets)
        yield (
            f"cross_entropy ({rows},{vocab})",
            lambda z, t=targets: F.cross_entropy(z, tinyllm.Tensor(t)),  # on z's backend
            lambda z, t=torch_targets: TF.cross_entropy(z, t),
            [logits],
            [True],
            None,
        )


def bench_case(case, warmup, repeat, jax_works):
    label, tinyllm_fn, torch_fn, arrays, grad_flags, upstream = case
    assert all(a.dtype != np.float64 for a in arrays), f"{label}: inputs must be float32"
    ours = [tinyllm.Tensor(a, requires_grad=g) for a, g in zip(arrays, grad_flags)]
    theirs = [torch.tensor(a, requires_grad=g) for a, g in zip(arrays, grad_flags)]
    up_ours = None if upstream is None else tinyllm.Tensor(upstream)
    up_theirs = None if upstream is None else torch.tensor(upstream)
    ms_ours = median_ms(forward_backward(tinyllm_fn, ours, up_ours), warmup, repeat)
    ms_jax = None
    if jax_works:
        with tinyllm.use_backend("jax"):
            step = compiled_forward_backward(tinyllm_fn, arrays, grad_flags, upstream)
            ms_jax = median_ms(step, warmup, repeat)
    ms_theirs = median_ms(forward_backward(torch_fn, theirs, up_theirs), warmup, repeat)
    return label, ms_ours, ms_jax, ms_theirs


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=30, help="timed runs per op (median)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed runs before timing")
    parser.add_argument("--shape", choices=[*SHAPES, "all"], default="all")
    parser.add_argument("--quick", action="store_true", help="tiny shape only, 10 repeats")
    parser.add_argument(
        "--query-blocks", type=int, default=attention.QUERY_BLOCKS,
        help="blocks of queries long causal attention runs in (1: one block, no tile skipped)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.query_blocks < 1:
        parser.error(f"--query-blocks must be 1 or more, got {args.query_blocks}")
    attention.QUERY_BLOCKS = args.query_blocks
    if torch is None:
        raise SystemExit("bench_ops.py compares against PyTorch: pip install 'tinyllm[dev]'")
    if args.quick:
        args.shape, args.repeat = "tiny", 10
    names = list(SHAPES) if args.shape == "all" else [args.shape]

    print(machine())
    print(
        f"float32, forward+backward, median of {args.repeat} after {args.warmup} warm-up; "
        f"blocks of queries in long causal attention: {args.query_blocks}\n"
    )
    jax_works, why = tinyllm.available_backends()["jax"]
    if not jax_works:
        print(f"(no tinyllm-JAX column: {why})\n")
    print("| shape | op | tinyllm ms | tinyllm-JAX ms | torch ms | tinyllm/torch | JAX/torch |")
    print("|---|---|---:|---:|---:|---:|---:|")
    rng = np.random.default_rng(0)
    with tinyllm.use_backend("numpy"):
        for name in names:
            for case in cases(SHAPES[name], rng):
                label, ours, jax_ms, theirs = bench_case(case, args.warmup, args.repeat, jax_works)
                jax_cells = (
                    ("-", "-") if jax_ms is None else (f"{jax_ms:.2f}", f"{jax_ms / theirs:.2f}")
                )
                print(
                    f"| {name} | {label} | {ours:.2f} | {jax_cells[0]} | {theirs:.2f} | "
                    f"{ours / theirs:.2f} | {jax_cells[1]} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
