"""Activation checkpointing: what recomputing each block's activations saves in memory and
costs in time, tinyllm on NumPy and compiled on JAX, beside PyTorch eager with
``torch.utils.checkpoint``, same config, same data, same run.

Each column is timed twice, plain and recomputing (``--gradient-checkpointing``: tinyllm's
``Trainer`` with ``gradient_checkpointing``; torch's blocks through ``checkpoint``), at
bench_model.py's shapes and at a deeper one (the small shape with 12 layers), where kept
activations weigh more. The cost is the step time's ratio, recomputing over plain (a block's
forward runs twice: about 4/3 in theory). The memory is measured per library where it can
be: NumPy's peak during one forward and backward pass (``tracemalloc``, which counts NumPy's
arrays), and XLA's temporary buffers of the compiled step (``memory_analysis``). torch's CPU
allocator has no peak counter; its column is the time alone.

    python benchmarks/bench_recompute.py            # tiny, small, small with 12 layers
    python benchmarks/bench_recompute.py --quick    # the tiny shape, few steps
"""

import argparse

import numpy as np
from bench_model import SHAPES
from common import TorchSteps, TrainerSteps, machine, median_ms, table_head, table_row

import tinyllm
from tinyllm.models import Transformer, get_preset
from tinyllm.nn.recompute import peak_training_bytes

DEEP = {"small, 12 layers": ({**SHAPES["small"][0], "n_layer": 12}, SHAPES["small"][1])}
MIB = 2**20


def tinyllm_runner(backend, config, x, y, checkpointing):
    with tinyllm.use_backend(backend):
        model = Transformer(config, seed=0)
    runner = TrainerSteps(
        model, x.shape[0], [(x, y)], grad_clip=0.0, gradient_checkpointing=checkpointing
    )
    return model, runner


def measure(column, config, x, y, checkpointing, steps, warmup):
    """(ms per step, memory in bytes or None) of one column, plain or recomputing."""
    if column == "torch eager":
        runner = TorchSteps(config, [(x, y)], grad_clip=0.0, checkpointing=checkpointing)
        return median_ms(lambda: runner.run(1), warmup, steps), None
    backend = "numpy" if column == "tinyllm-NumPy" else "jax"
    model, runner = tinyllm_runner(backend, config, x, y, checkpointing)
    ms = median_ms(lambda: runner.run(1), warmup, steps)
    if backend == "numpy":
        return ms, peak_training_bytes(model, x, y)
    return ms, runner.trainer.step_program.memory_analysis().temp_size_in_bytes


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny shape only, few steps")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per column")
    args = parser.parse_args()
    shapes = {"tiny": SHAPES["tiny"]} if args.quick else {**SHAPES, **DEEP}
    print(machine())
    table_head(
        "Activation checkpointing: a training step plain and recomputing each block",
        ["shape", "column", "ms / step plain", "recomputing", "time ratio",
         "memory plain MiB", "recomputing MiB", "memory ratio"],
    )  # fmt: skip
    for name, (changes, batch) in shapes.items():
        config = get_preset("tiny", **changes)
        rng = np.random.default_rng(0)
        x = rng.integers(0, config.vocab_size, (batch, config.context_length))
        y = rng.integers(0, config.vocab_size, (batch, config.context_length))
        steps = args.steps or (3 if args.quick else 5 if "small" in name else 30)
        warmup = 1 if args.quick or "small" in name else 5
        for column in ("tinyllm-NumPy", "tinyllm-JAX", "torch eager"):
            try:
                (plain, kept), (again, recomputed) = (
                    measure(column, config, x, y, c, steps, warmup) for c in (False, True)
                )
            except ImportError as err:  # a library this machine lacks
                table_row([name, column, f"unavailable: {err}", "", "", "", "", ""])
                continue
            memory = ["-", "-", "-"]
            if kept is not None:
                memory = [
                    f"{kept / MIB:.1f}",
                    f"{recomputed / MIB:.1f}",
                    f"{recomputed / kept:.2f}",
                ]
            table_row([name, column, f"{plain:.1f}", f"{again:.1f}", f"{again / plain:.2f}",
                       *memory])  # fmt: skip


if __name__ == "__main__":
    main()
