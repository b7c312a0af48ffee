"""The speedrun's pretraining stage on a quiet machine and beside one busy process.

``tinyllm speedrun`` on a CPU should finish its pretraining stage in minutes, and a laptop
is rarely quiet. This script runs the stage (the ``cpu`` preset of
``tinyllm.recipes.speedrun``, cut to ``--steps`` steps unless ``--full``) once on the
machine as it is, then again while a child process spins on one core (always killed, and
ending by itself if this script dies first), and prints the slowdown: busy / quiet, target
at most 1.5. It does so twice: with the BLAS thread count ``pretrain`` chooses
(``tinyllm.backend.threads``) and with the BLAS library's own default (one thread per
core), to show what the choice buys. The machine line carries the CPU, its vector
extensions and NumPy's float32 matmul speed, so that the figures say where they were
taken.

    python benchmarks/bench_speedrun.py            # 200 steps a run: a few minutes
    python benchmarks/bench_speedrun.py --full     # the whole stage, as the speedrun runs it
    python benchmarks/bench_speedrun.py --quick    # 3 steps a run: seconds
    python benchmarks/bench_speedrun.py --full --choice-only   # the stage, pretrain's threads
"""

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
from common import machine, median_ms

from tinyllm.backend.threads import ENV_VAR, blas_thread_counts, blas_threads
from tinyllm.recipes.pretrain import pretrain
from tinyllm.recipes.speedrun import PRESETS

SLOWDOWN_TARGET = 1.5  # busy / quiet
TIME_TARGET = 300.0  # seconds for the whole stage (--full), on the slowest CPU class we aim at


def cpu_flags():
    """The vector extensions the CPU reports (AVX, AVX2, AVX-512 ..., FMA)."""
    try:
        with open("/proc/cpuinfo") as file:
            flags = next(line for line in file if line.startswith("flags")).split(":", 1)[1]
    except (OSError, StopIteration):
        return "unknown"
    wanted = sorted(f for f in flags.split() if f.startswith(("avx", "fma", "amx")))
    return " ".join(wanted) or "none of avx/fma"


def matmul_gflops(threads=None, n=1024):
    """NumPy's float32 (n, n) @ (n, n) speed in GFLOP/s, with at most ``threads`` BLAS threads."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    with blas_threads(threads):
        ms = median_ms(lambda: a @ b, warmup=2, repeat=7)
    return 2 * n**3 / (ms / 1000) / 1e9


# spins until killed, or until its parent is gone (then it is re-parented): a benchmark
# killed by a timeout leaves no spinning child behind
SPIN = "import os\nparent = os.getppid()\nwhile os.getppid() == parent:\n    pass"


@contextlib.contextmanager
def busy_process():
    """One child process spinning on a core for the length of the block."""
    child = subprocess.Popen([sys.executable, "-c", SPIN])
    try:
        time.sleep(0.5)  # let it get going
        yield child
    finally:
        child.kill()
        child.wait()


@contextlib.contextmanager
def environment(name, value):
    """``os.environ[name] = value`` inside the block (``None``: unset), restored after."""
    before = os.environ.get(name)
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def stage_configs(steps, quick=False):
    """The ``cpu`` preset's configs; ``steps`` (None: the preset's) shortens the run, as
    ``tinyllm speedrun --steps`` does, with one evaluation at the end; ``quick`` also cuts
    the evaluation and the samples to a token's worth."""
    pretrain_config, train_config = PRESETS["cpu"]["pretrain"]
    train_config = train_config.replace(progress=False)
    if quick:
        pretrain_config = pretrain_config.replace(samples=1, sample_tokens=4)
        train_config = train_config.replace(eval_batches=1)
    if steps is not None:
        train_config = train_config.replace(
            steps=steps,
            warmup_steps=min(train_config.warmup_steps, steps // 10),
            eval_interval=0,
            checkpoint_interval=0,
        )
    return pretrain_config, train_config


def run_stage(pretrain_config, train_config):
    """Seconds for one pretraining stage into a fresh folder, and its validation loss."""
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        run = pretrain(pretrain_config.replace(out=out), train_config)
        return time.perf_counter() - start, run.result.val_loss


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 steps a run: seconds")
    parser.add_argument("--steps", type=int, default=None, help="steps a run (200)")
    parser.add_argument("--full", action="store_true", help="the whole stage, every step")
    parser.add_argument("--repeat", type=int, default=None, help="runs per case (1 if --full)")
    parser.add_argument(
        "--choice-only", action="store_true", help="skip the BLAS library's default threads"
    )
    args = parser.parse_args()
    steps = None if args.full else args.steps or (3 if args.quick else 200)
    repeat = args.repeat or (1 if args.full or args.quick else 2)
    pretrain_config, train_config = stage_configs(steps, args.quick)
    default_threads = max(blas_thread_counts() or [1])

    print(machine())
    print(f"cpu flags: {cpu_flags()}; BLAS threads by default: {default_threads}")
    print(
        f"numpy float32 matmul 1024^3: {matmul_gflops():.0f} GFLOP/s with the default threads, "
        f"{matmul_gflops(1):.0f} GFLOP/s with one"
    )
    print(
        f"stage: speedrun preset cpu - model {pretrain_config.preset}, context "
        f"{pretrain_config.context_length}, batch {train_config.batch_size}, "
        f"{train_config.steps} steps, eval every {train_config.eval_interval or 'end only'} "
        f"({train_config.eval_batches} batches), {pretrain_config.samples} samples of "
        f"{pretrain_config.sample_tokens} tokens; {repeat} run(s) a case, median\n"
    )
    run_stage(*stage_configs(1, quick=True))  # warm-up: tokenizer cache, imports, first allocations

    cases = (("pretrain's choice", None), ("BLAS default", str(default_threads)))
    cases = cases[:1] if args.choice_only else cases
    results = {}
    for label, threads in cases:
        with environment(ENV_VAR, threads):
            for where in ("quiet", "busy"):
                runs = []
                for _ in range(repeat):
                    with busy_process() if where == "busy" else contextlib.nullcontext():
                        runs.append(run_stage(pretrain_config, train_config))
                seconds = statistics.median(s for s, _ in runs)
                results[label, where] = seconds
                print(
                    f"{label:<18} {where:<6} {seconds:8.1f} s  (val loss {runs[-1][1]:.3f})",
                    flush=True,
                )

    met = {True: "met", False: "not met"}
    print()
    for label, _ in cases:
        ratio = results[label, "busy"] / results[label, "quiet"]
        print(
            f"slowdown beside one busy process, {label}: {ratio:.2f} "
            f"(target <= {SLOWDOWN_TARGET}: {met[ratio <= SLOWDOWN_TARGET]})"
        )
    if args.full:
        quiet = results["pretrain's choice", "quiet"]
        print(f"whole stage, quiet: {quiet:.0f} s (target <= {TIME_TARGET:.0f} s on this machine "
              f"class: {met[quiet <= TIME_TARGET]})")  # fmt: skip


if __name__ == "__main__":
    main()
