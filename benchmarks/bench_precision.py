"""Mixed precision: training steps per second and the loss reached at each compute dtype.

On the backend given (``--backend``, default jax), one model trains for the same steps on the
same batches from the same initialization at float32 and at each 16-bit compute dtype the
backend supports (JAX: bfloat16, float16; CuPy: float16), through ``Trainer`` (one compiled
step under JAX, eager under CuPy; float16 with loss scaling). Reported per dtype: the step
time (the median over the timed steps, after a warm-up session that also compiles), tokens/s,
the speed-up over float32, and the last training loss against float32's. The peer is PyTorch
on the same GPT shape, float32 and ``torch.autocast`` bfloat16 (on CUDA where torch sees a
GPU, else on its CPU).

On a CPU the 16-bit products run slower than float32 (no fast 16-bit units): the speed-up
is for a GPU; the loss column holds anywhere. Under JAX on a recent GPU the float32 baseline
may already multiply through TF32 (XLA's default precision for float32 products), which
narrows bfloat16's lead.

    python benchmarks/bench_precision.py --quick                 # a tiny model: seconds
    python benchmarks/bench_precision.py --shape gpt2 --backend cupy
"""

import argparse
import time

import numpy as np
from common import machine, median_ms, torch_gpt

import tinyllm
from tinyllm.backend.precision import SUPPORTED
from tinyllm.data import RandomBatches
from tinyllm.models import Transformer, get_preset
from tinyllm.train import TrainConfig, Trainer

SHAPES = {  # name: (config changes, batch size)
    "tiny": (dict(n_layer=2, n_head=4, d_model=64, context_length=64), 8),
    "small": (dict(n_layer=6, n_head=6, d_model=384, context_length=256), 32),
    "gpt2": (dict(n_layer=12, n_head=12, d_model=768, context_length=512, vocab_size=8192), 16),
}


def tinyllm_run(config, batch, dtype, warmup, steps):
    """``(step seconds, last loss)`` of ``warmup`` untimed then ``steps`` timed steps."""
    tokens = np.random.default_rng(0).integers(0, config.vocab_size, 200_000)
    train = TrainConfig(
        steps=warmup, batch_size=batch, warmup_steps=0, lr=3e-4, schedule="constant",
        eval_interval=0, progress=False, dtype=dtype,
    )  # fmt: skip
    model = Transformer(config, seed=0)
    trainer = Trainer(model, train, RandomBatches(tokens, batch, config.context_length, seed=0))
    trainer.fit()  # compiles (JAX), warms the allocator
    times = []
    for step in range(warmup + 1, warmup + steps + 1):  # one step per session: its own time
        trainer.config = train.replace(steps=step)
        result = trainer.fit()
        times.append(batch * config.context_length / result.tokens_per_second)
    return float(np.median(times)), result.train_loss


def torch_run(config, batch, dtype, warmup, steps):
    """PyTorch's ``(step seconds, last loss)`` for the same shape, float32 or autocast bf16."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = torch_gpt(config, seed=0).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1)
    rng = np.random.default_rng(0)
    x, y = (torch.from_numpy(rng.integers(0, config.vocab_size, (batch, config.context_length)))
            .to(device) for _ in range(2))  # fmt: skip
    losses = []

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
            loss = model(x, y)
        loss.backward()
        opt.step()
        losses.append(loss.item())  # waits for the device

    return median_ms(step, warmup, steps) / 1000, losses[-1], device


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the tiny shape, few steps")
    parser.add_argument("--shape", choices=SHAPES, default="small", help="(default: small)")
    parser.add_argument("--backend", choices=("jax", "cupy"), default="jax")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: 20)")
    args = parser.parse_args()
    shape = "tiny" if args.quick else args.shape
    changes, batch = SHAPES[shape]
    config = get_preset("tiny", **changes)
    warmup, steps = (2, 3) if args.quick else (5, args.steps or 20)
    print(machine())
    with tinyllm.use_backend(args.backend) as backend:
        print(f"{backend.describe()}; shape {shape} ({changes}, batch {batch})")
        print(f"{'library':<8} {'dtype':<9} {'ms/step':>9} {'tok/s':>10} {'speed-up':>9} "
              f"{'last loss':>10} {'vs f32':>8}")  # fmt: skip
        tokens = batch * config.context_length
        base = None
        for dtype in SUPPORTED[backend.name]:
            started = time.perf_counter()
            seconds, loss = tinyllm_run(config, batch, dtype, warmup, steps)
            base = base or (seconds, loss)
            print(f"{'tinyllm':<8} {dtype:<9} {seconds * 1e3:>9.1f} {tokens / seconds:>10,.0f} "
                  f"{base[0] / seconds:>9.2f} {loss:>10.4f} {loss - base[1]:>+8.4f}"
                  f"   ({time.perf_counter() - started:.0f} s with compilation)")  # fmt: skip
    try:
        base = None
        for dtype in ("float32", "bfloat16"):
            seconds, loss, device = torch_run(config, batch, dtype, warmup, steps)
            base = base or (seconds, loss)
            print(f"{'torch':<8} {dtype:<9} {seconds * 1e3:>9.1f} {tokens / seconds:>10,.0f} "
                  f"{base[0] / seconds:>9.2f} {loss:>10.4f} {loss - base[1]:>+8.4f}"
                  f"   (on {device})")  # fmt: skip
    except ImportError:
        print("torch is not installed: no peer")


if __name__ == "__main__":
    main()
