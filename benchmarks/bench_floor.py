"""How close NumPy can get to PyTorch's fused softmax and LayerNorm on this CPU, and why.

bench_ops.py shows softmax and layer_norm 2.5-5x slower than torch. This script measures the
lower bound of any NumPy spelling of them, so the gap can be read as arithmetic, not guessed:

1. **The pass floor.** A NumPy op is a sequence of whole-array passes, each its own loop.
   Every pass the fused op makes is timed alone, on arrays of the op's shape, in its fastest
   NumPy spelling (the NumPy backend's BLAS and argmax reductions, results written into a
   scratch array), and the times are summed: that sum is the op's cost with zero Python
   overhead. It is compared with
   torch's fused forward+backward (its default threads, and one thread) and with the target,
   1.5x torch. ``exp`` alone is printed too, since no spelling of softmax avoids it.
2. **Threads.** NumPy releases the GIL inside its loops, so two Python threads could split
   each pass over the two cores as torch's OpenMP does. The script times what a hand-off to a
   worker thread costs (a round trip through ``ThreadPoolExecutor``) and ``exp`` split in two
   halves over two threads against one thread, at the op's size.

    python benchmarks/bench_floor.py           # tiny and small shapes
    python benchmarks/bench_floor.py --quick   # tiny shape, fewer repeats
"""

import argparse
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from bench_ops import SHAPES, forward_backward
from common import machine, median_ms

import tinyllm
import tinyllm.functional as F
from tinyllm.backend import NumpyBackend

try:
    import torch
    import torch.nn.functional as TF
except ImportError:  # the comparison needs torch; install it with the 'dev' extra
    torch = None


def softmax_passes(b, x, g):
    """The passes of a fused softmax (forward, then backward), one callable each.

    Each reads arrays that stay fixed and writes a scratch array, so values never drift
    into denormals or infinities from one timed call to the next.
    """
    col, y, out = b.max_last(x), F.softmax(tinyllm.Tensor(x)).numpy(), np.empty_like(x)
    return {
        "row max": lambda: b.max_last(x),
        "x - max": lambda: np.subtract(x, col, out=out),
        "exp": lambda: np.exp(x, out=out),
        "row sum": lambda: b.sum_last(y),
        "times 1/sum": lambda: np.multiply(y, col, out=out),
        "row dot (backward)": lambda: b.dot_last(g, y),
        "g - dot (backward)": lambda: np.subtract(g, col, out=out),
        "times y (backward)": lambda: np.multiply(g, y, out=out),
    }


def layer_norm_passes(b, x, g, w):
    """The passes of a fused LayerNorm (forward, then backward), as above."""
    C = x.shape[-1]
    rows, cols = x.reshape(-1, C), g.reshape(-1, C)
    col, out = b.sum_last(x) / C, np.empty_like(x)
    return {
        "row sum": lambda: b.sum_last(x),
        "x - mean": lambda: np.subtract(x, col, out=out),
        "row dot": lambda: b.dot_last(x, x),
        "times r": lambda: np.multiply(x, col, out=out),
        "times weight": lambda: np.multiply(x, w, out=out),
        "plus bias": lambda: np.add(x, w, out=out),
        "g = dy * weight (backward)": lambda: np.multiply(g, w, out=out),
        "row sum (backward)": lambda: b.sum_last(g),
        "row dot (backward)": lambda: b.dot_last(g, x),
        "g - mean (backward)": lambda: np.subtract(g, col, out=out),
        "xhat * dot (backward)": lambda: np.multiply(x, col, out=out),
        "minus xhat * dot (backward)": lambda: np.subtract(g, x, out=out),
        "times r (backward)": lambda: np.multiply(g, col, out=out),
        "weight grad (backward)": lambda: np.einsum("nc,nc->c", cols, rows),
        "bias grad (backward)": lambda: b.sum_first(cols),
    }


def cases(shape, rng):
    """``(label, tinyllm_fn, torch_fn, inputs, upstream, passes)`` for softmax and layer_norm."""
    B, T, C, H = shape.batch, shape.context, shape.width, shape.n_head
    f32, backend = np.float32, NumpyBackend()
    scores, up_scores = (rng.standard_normal((B, H, T, T), dtype=f32) for _ in range(2))
    yield (
        f"softmax ({B},{H},{T},{T})",
        F.softmax,
        lambda s: torch.softmax(s, dim=-1),
        [scores],
        up_scores,
        softmax_passes(backend, scores, up_scores),
    )
    x, up_x = (rng.standard_normal((B, T, C), dtype=f32) for _ in range(2))
    w, bias = 1 + 0.1 * rng.standard_normal(C, dtype=f32), 0.1 * rng.standard_normal(C, dtype=f32)
    yield (
        f"layer_norm ({B},{T},{C})",
        lambda x, w, b: F.layer_norm(x, w, b, eps=1e-5),
        lambda x, w, b: TF.layer_norm(x, (C,), w, b, eps=1e-5),
        [x, w, bias],
        up_x,
        layer_norm_passes(backend, x, up_x, w),
    )


def torch_ms(fn, arrays, upstream, warmup, repeat, threads=None):
    """torch's forward+backward time, on ``threads`` threads (None: torch's default)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads or previous)
    try:
        leaves = [torch.tensor(a, requires_grad=True) for a in arrays]
        return median_ms(forward_backward(fn, leaves, torch.tensor(upstream)), warmup, repeat)
    finally:
        torch.set_num_threads(previous)


def split_in_two(pool, fn, x, out):
    """``fn(x, out=out)`` with the second half of the rows done by the pool's worker thread."""
    half = x.shape[0] // 2
    other = pool.submit(fn, x[half:], out=out[half:])
    fn(x[:half], out=out[:half])
    other.result()


def measure(case, pool, warmup, repeat):
    """One table row: torch (default threads, one thread), the 1.5x budget, tinyllm, the
    pass floor, exp alone and exp split over two threads; plus each pass's time."""
    time = lambda step: median_ms(step, warmup, repeat)  # noqa: E731
    label, ours_fn, torch_fn, arrays, upstream, passes = case
    leaves = [tinyllm.Tensor(a, requires_grad=True) for a in arrays]
    ours = time(forward_backward(ours_fn, leaves, tinyllm.Tensor(upstream)))
    theirs = torch_ms(torch_fn, arrays, upstream, warmup, repeat)
    one = torch_ms(torch_fn, arrays, upstream, warmup, repeat, threads=1)
    each = {step: time(run) for step, run in passes.items()}
    x = arrays[0].reshape(-1, arrays[0].shape[-1])  # (rows, n): the op's input
    out = np.empty_like(x)
    exp_ms = time(lambda: np.exp(x, out=out))
    exp_two = time(lambda: split_in_two(pool, np.exp, x, out))
    figures = (theirs, one, 1.5 * theirs, ours, sum(each.values()), exp_ms, exp_two)
    return label, figures, each


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=50, help="timed runs per figure (median)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed runs before timing")
    parser.add_argument("--quick", action="store_true", help="tiny shape only, 20 repeats")
    args = parser.parse_args()
    if torch is None:
        raise SystemExit("bench_floor.py compares against PyTorch: pip install 'tinyllm[dev]'")
    names = ["tiny"] if args.quick else list(SHAPES)
    repeat = 20 if args.quick else args.repeat
    pool = ThreadPoolExecutor(max_workers=1)

    print(machine())
    print(f"float32, forward+backward, median of {repeat} after {args.warmup} warm-up")
    hand_off = 1000 * median_ms(lambda: pool.submit(int).result(), args.warmup, repeat)
    print(f"hand-off to a worker thread and back (ThreadPoolExecutor): {hand_off:.0f} us\n")
    print(
        "| shape | op | torch ms | torch 1 thread ms | 1.5x torch ms | tinyllm ms "
        "| pass floor ms | exp ms | exp on 2 threads ms |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    rng = np.random.default_rng(0)
    details = []
    with tinyllm.use_backend("numpy"):
        for name in names:
            for case in cases(SHAPES[name], rng):
                label, figures, each = measure(case, pool, args.warmup, repeat)
                print(f"| {name} | {label} | " + " | ".join(f"{ms:.3f}" for ms in figures) + " |")
                details.append((name, label, each))
    for name, label, each in details:
        print(f"\n{name} {label}, ms per pass:")
        for step, ms in each.items():
            print(f"  {step:<28} {ms:.3f}")


if __name__ == "__main__":
    main()
