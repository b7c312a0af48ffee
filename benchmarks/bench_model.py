"""Training-step throughput on the CPU: tinyllm on NumPy and compiled on JAX, PyTorch eager
and torch.compile, same config, same data, same run.

A step is forward, backward and an AdamW update (no clipping). tinyllm-NumPy is the model and
AdamW called directly; tinyllm-JAX is tinyllm's ``Trainer`` on the JAX backend, whose whole
step is one ``jax.jit`` program (tinyllm's autograd traced into it). The PyTorch peer is
``common.torch_gpt`` (learned positions, LayerNorm, GELU, tied embeddings,
``scaled_dot_product_attention``), the same shape as tinyllm's ``tiny`` preset family, eager
and through ``torch.compile``. Each column warms up (its first step, compile included, is
reported apart), then the median step time of ``--steps`` steps gives tokens/s and the
throughput against torch eager's.

    python benchmarks/bench_model.py            # the tiny and the small shape
    python benchmarks/bench_model.py --quick    # the tiny shape, few steps
"""

import argparse

import numpy as np
from common import TorchSteps, TrainerSteps, machine, median_ms, table, timed

import tinyllm
from tinyllm.models import Transformer, get_preset
from tinyllm.optim import AdamW

SHAPES = {  # name: (config changes, batch size)
    "tiny": (dict(n_layer=4, n_head=4, d_model=128, context_length=64), 12),
    "small": (dict(n_layer=6, n_head=6, d_model=384, context_length=256), 12),
}
COLUMNS = ("tinyllm-NumPy", "tinyllm-JAX", "torch eager", "torch.compile")


def tinyllm_step(config, x, y):
    model = Transformer(config, seed=0)
    opt = AdamW(model, lr=1e-3, weight_decay=0.1)

    def step():
        model.zero_grad()
        _, loss = model(x, y)
        loss.backward()
        opt.step()

    return step


def jax_step(config, x, y):
    with tinyllm.use_backend("jax"):
        model = Transformer(config, seed=0)
    runner = TrainerSteps(model, x.shape[0], [(x, y)], grad_clip=0.0)
    return lambda: runner.run(1)


def torch_step(config, x, y, compile=None):
    runner = TorchSteps(config, [(x, y)], grad_clip=0.0, compile=compile)
    return lambda: runner.run(1)


def make_step(column, config, x, y, compile_backend):
    """One training step of ``column`` (one of ``COLUMNS``), as a function of no arguments."""
    if column == "tinyllm-NumPy":
        return tinyllm_step(config, x, y)
    if column == "tinyllm-JAX":
        return jax_step(config, x, y)
    return torch_step(config, x, y, compile_backend if column == "torch.compile" else None)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny shape only, few steps")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per shape")
    parser.add_argument(
        "--compile-backend",
        help="torch.compile's backend (default inductor; --quick aot_eager: the same graph "
        "capture and autograd without inductor's C++ code generation, which takes minutes here)",
    )  # fmt: skip
    args = parser.parse_args()
    shapes = ["tiny"] if args.quick else ["tiny", "small"]
    compile_backend = args.compile_backend or ("aot_eager" if args.quick else "inductor")
    print(machine())
    rows = []
    for name in shapes:
        changes, batch = SHAPES[name]
        config = get_preset("tiny", **changes)
        rng = np.random.default_rng(0)
        x = rng.integers(0, config.vocab_size, (batch, config.context_length))
        y = rng.integers(0, config.vocab_size, (batch, config.context_length))
        steps = args.steps or (5 if args.quick else {"tiny": 50, "small": 10}[name])
        warmup = 2 if args.quick else {"tiny": 10, "small": 3}[name]
        measured = {}  # column: (seconds per step, first step's seconds) or the reason it failed
        for column in COLUMNS:  # each in a block of its own (see median_ms)
            try:
                step = make_step(column, config, x, y, compile_backend)
                _, first = timed(step)  # compiles, where the column compiles
                measured[column] = median_ms(step, warmup - 1, steps) / 1000, first
            except Exception as err:  # noqa: BLE001 - a library this machine lacks
                measured[column] = f"unavailable: {str(err).strip().splitlines()[0][:100]}"
        tokens = batch * config.context_length
        eager = measured["torch eager"]
        for column, result in measured.items():
            if isinstance(result, str):
                rows.append([name, column, result, "", "", ""])
                continue
            seconds, first = result
            ratio = f"{eager[0] / seconds:.2f}" if isinstance(eager, tuple) else "-"
            rows.append([
                name, column, f"{seconds * 1e3:.1f}", f"{tokens / seconds:,.0f}", ratio,
                f"{first:.1f}",
            ])  # fmt: skip
    import torch

    table(
        f"Training step, batch {batch}, vocab 65 (torch threads: {torch.get_num_threads()}; "
        f"torch.compile backend: {compile_backend})",
        ["shape", "column", "ms / step", "tokens/s", "throughput / torch eager",
         "first step s"],
        rows,
    )  # fmt: skip


if __name__ == "__main__":
    main()
