"""Training-step throughput: tinyllm (NumPy) against PyTorch eager CPU, same config, same data.

A step is forward, backward and an AdamW update. The PyTorch peer is a plain GPT written
here (learned positions, LayerNorm, GELU, tied embeddings, ``scaled_dot_product_attention``),
the same shape as tinyllm's ``tiny`` preset family. Both warm up, then the median step time
of ``--steps`` steps is reported with tokens/s and the ratio tinyllm/torch throughput.

    python benchmarks/bench_model.py            # the tiny and the small shape
    python benchmarks/bench_model.py --quick    # the tiny shape, few steps
"""

import argparse

import numpy as np
from common import machine, median_ms, torch_gpt

from tinyllm.models import Transformer, get_preset
from tinyllm.optim import AdamW

SHAPES = {  # name: (config changes, batch size)
    "tiny": (dict(n_layer=4, n_head=4, d_model=128, context_length=64), 12),
    "small": (dict(n_layer=6, n_head=6, d_model=384, context_length=256), 12),
}


def tinyllm_step(config, x, y):
    model = Transformer(config, seed=0)
    opt = AdamW(model, lr=1e-3, weight_decay=0.1)

    def step():
        model.zero_grad()
        _, loss = model(x, y)
        loss.backward()
        opt.step()

    return step


def torch_step(config, x, y):
    import torch

    model = torch_gpt(config, seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)

    def step():
        opt.zero_grad(set_to_none=True)
        model(tx, ty).backward()
        opt.step()

    return step, torch.get_num_threads()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny shape only, few steps")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per shape")
    args = parser.parse_args()
    shapes = ["tiny"] if args.quick else ["tiny", "small"]
    print(machine())
    print(f"{'shape':<6} {'tinyllm ms':>11} {'torch ms':>9} {'tinyllm tok/s':>14} "
          f"{'torch tok/s':>12} {'ratio':>6}")  # fmt: skip
    for name in shapes:
        changes, batch = SHAPES[name]
        config = get_preset("tiny", **changes)
        rng = np.random.default_rng(0)
        x = rng.integers(0, config.vocab_size, (batch, config.context_length))
        y = rng.integers(0, config.vocab_size, (batch, config.context_length))
        steps = args.steps or (5 if args.quick else {"tiny": 50, "small": 10}[name])
        warmup = 2 if args.quick else {"tiny": 10, "small": 3}[name]
        ours = median_ms(tinyllm_step(config, x, y), warmup, steps) / 1000
        step, threads = torch_step(config, x, y)
        theirs = median_ms(step, warmup, steps) / 1000
        tokens = batch * config.context_length
        print(f"{name:<6} {ours * 1e3:>11.1f} {theirs * 1e3:>9.1f} {tokens / ours:>14,.0f} "
              f"{tokens / theirs:>12,.0f} {theirs / ours:>6.2f}")  # fmt: skip
    print(
        f"(torch threads: {threads}; ratio = tinyllm throughput / torch throughput, target >= 0.8)"
    )


if __name__ == "__main__":
    main()
