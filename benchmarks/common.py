"""What the benchmark scripts share: a line describing the machine they ran on."""

import os
import platform

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
