"""What the benchmark scripts share: the timing loop and a line describing the machine."""

import os
import platform
import statistics
import time

import numpy as np


def machine():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu, cores = names[0], len(names)
    except (OSError, IndexError):
        cores = "?"
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{cpu}, {cores} cores (load average {load}); numpy {np.__version__}, {_torch()}"


def _torch():
    try:
        import torch
    except ImportError:
        return "torch not installed"
    return f"torch {torch.__version__} (threads: {torch.get_num_threads()})"


def median_ms(step, warmup, repeat):
    """Median wall time of ``step()`` in milliseconds, after ``warmup`` untimed calls.

    Each library is timed in a block of its own rather than taking turns call by call:
    both keep worker threads spinning for a while after a call (OpenBLAS for NumPy, OpenMP
    for torch), and on two cores the spinners of one slow the other down several-fold.
    """
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)
