"""Time of one AdamW step: tinyllm (NumPy backend) against ``torch.optim.AdamW`` on the CPU.

The parameters are float32 arrays shaped like a GPT-2-style transformer (embeddings,
per-layer norms, attention and MLP weights with biases, a final norm and an output head),
each with a fixed random gradient. One timed call is one ``opt.step()``; after warm-up
steps, the median of the repeats is reported for each library, in the same run:

- tinyllm's ``AdamW`` given the named parameters (two groups: matrices decayed, vectors not),
  eagerly on the NumPy backend, and (when JAX is installed) its pure ``update`` under
  ``jax.jit``, as a compiled training step runs it;
- ``torch.optim.AdamW`` with its defaults, on the same two groups (on the CPU, PyTorch's
  default is its single-tensor for-loop: foreach kernels are picked only on GPUs);
- for context, torch with ``foreach=True`` and with ``fused=True``.

    python benchmarks/bench_optim.py              # "small": 6 layers, width 384 (~10.7M values)
    python benchmarks/bench_optim.py --quick      # "tiny": 4 layers, width 128 (~0.8M values)
    python benchmarks/bench_optim.py --repeat 50

Shapes follow DESIGN.md: "tiny" is nanoGPT's CPU recipe (context 64, width 128, 4 layers,
vocab 65); "small" is context 256, width 384, 6 layers.
"""

import argparse

import numpy as np
from common import machine, median_ms

import tinyllm
from tinyllm.nn import Parameter
from tinyllm.optim import AdamW

try:
    import torch
except ImportError:  # the comparison needs torch; install it with the 'dev' extra
    torch = None

SHAPES = {  # (layers, width, context, vocab)
    "tiny": (4, 128, 64, 65),
    "small": (6, 384, 256, 65),
}


def transformer_shapes(n_layer, width, context, vocab):
    """{name: shape} of a GPT-2-style model's parameters, in the order a model lists them."""
    shapes = {"embed.weight": (vocab, width), "pos_embed.weight": (context, width)}
    for i in range(n_layer):
        shapes |= {
            f"blocks.{i}.norm1.weight": (width,),
            f"blocks.{i}.norm1.bias": (width,),
            f"blocks.{i}.attn.qkv.weight": (width, 3 * width),
            f"blocks.{i}.attn.qkv.bias": (3 * width,),
            f"blocks.{i}.attn.proj.weight": (width, width),
            f"blocks.{i}.attn.proj.bias": (width,),
            f"blocks.{i}.norm2.weight": (width,),
            f"blocks.{i}.norm2.bias": (width,),
            f"blocks.{i}.mlp.up.weight": (width, 4 * width),
            f"blocks.{i}.mlp.up.bias": (4 * width,),
            f"blocks.{i}.mlp.down.weight": (4 * width, width),
            f"blocks.{i}.mlp.down.bias": (width,),
        }
    shapes |= {"norm.weight": (width,), "norm.bias": (width,), "head.weight": (width, vocab)}
    return shapes


def tinyllm_step(shapes, rng):
    named = []
    for name, shape in shapes.items():
        p = Parameter(0.02 * rng.standard_normal(shape, dtype=np.float32))
        p.grad = rng.standard_normal(shape, dtype=np.float32)
        named.append((name, p))
    return AdamW(named, lr=1e-3, weight_decay=0.1).step


def tinyllm_jax_step(shapes, rng):
    """The pure ``update`` compiled by ``jax.jit``; the step waits for its result."""
    import jax

    with tinyllm.use_backend("jax"):
        named, grads = [], {}
        for name, shape in shapes.items():
            named.append((name, Parameter(0.02 * rng.standard_normal(shape, dtype=np.float32))))
            grads[name] = jax.numpy.asarray(rng.standard_normal(shape, dtype=np.float32))
        opt = AdamW(named, lr=1e-3, weight_decay=0.1)
        params = {name: p.data for name, p in named}
        arrays = {"params": params, "state": opt.init_state(params)}
    update = jax.jit(opt.update)

    def step():
        arrays["params"], arrays["state"] = update(arrays["params"], grads, arrays["state"], 1e-3)
        jax.block_until_ready(arrays["params"])

    return step


def torch_step(shapes, rng, **options):
    decay, no_decay = [], []
    for shape in shapes.values():
        p = torch.tensor(0.02 * rng.standard_normal(shape, dtype=np.float32), requires_grad=True)
        p.grad = torch.tensor(rng.standard_normal(shape, dtype=np.float32))
        (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=1e-3, **options).step


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=30, help="timed steps (median)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps before timing")
    parser.add_argument("--shape", choices=list(SHAPES), default="small")
    parser.add_argument("--quick", action="store_true", help="tiny shape, 10 repeats")
    args = parser.parse_args()
    if torch is None:
        raise SystemExit("bench_optim.py compares against PyTorch: pip install 'tinyllm[dev]'")
    if args.quick:
        args.shape, args.repeat = "tiny", 10
    shapes = transformer_shapes(*SHAPES[args.shape])
    size = sum(int(np.prod(s)) for s in shapes.values())

    print(machine())
    print(
        f"AdamW step, float32, shape {args.shape}: {len(shapes)} arrays, {size:,} values; "
        f"median of {args.repeat} after {args.warmup} warm-up\n"
    )
    rng = np.random.default_rng(0)
    steps = {}
    with tinyllm.use_backend("numpy"):
        steps["tinyllm AdamW (numpy, eager)"] = tinyllm_step(shapes, rng)
    try:
        steps["tinyllm AdamW.update (jax.jit)"] = tinyllm_jax_step(shapes, rng)
    except ImportError:
        print("(JAX is not installed: no jax.jit row)")
    steps["torch AdamW (defaults)"] = torch_step(shapes, rng)
    steps["torch AdamW (foreach=True)"] = torch_step(shapes, rng, foreach=True)
    steps["torch AdamW (fused=True)"] = torch_step(shapes, rng, fused=True)

    ms = {label: median_ms(step, args.warmup, args.repeat) for label, step in steps.items()}
    ours = ms["tinyllm AdamW (numpy, eager)"]
    print("| optimizer | ms per step | tinyllm numpy / this |")
    print("|---|---:|---:|")
    for label, value in ms.items():
        print(f"| {label} | {value:.2f} | {ours / value:.2f} |")
    print(f"\ntinyllm (numpy) / torch AdamW (defaults): {ours / ms['torch AdamW (defaults)']:.2f}")


if __name__ == "__main__":
    main()
