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


def timed(fn, *args, **kwargs):
    """``(result, seconds)`` of one call ``fn(*args, **kwargs)``."""
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def table_head(title, header):
    """Print a Markdown table's title and header (the first column left-aligned)."""
    print(f"\n## {title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|")


def table_row(row):
    """Print one row of a table, at once (a long benchmark shows each row as it is measured)."""
    print("| " + " | ".join(row) + " |", flush=True)


def table(title, header, rows):
    table_head(title, header)
    for row in rows:
        table_row(row)


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


def torch_gpt(config, seed=0):
    """A plain PyTorch GPT of ``config``'s GPT-2 shape (learned positions, pre-LayerNorm
    blocks, GELU MLP, tied output layer) with GPT-2's initialization, as nanoGPT's:
    ``model(ids, targets)`` returns the mean cross-entropy. The peer the benchmarks time."""
    import math

    import torch
    from torch import nn
    from torch.nn import functional as F

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            d = config.d_model
            self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
            self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
            self.up, self.down = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

        def forward(self, h):
            B, T, C = h.shape
            q, k, v = self.qkv(self.ln1(h)).split(C, dim=2)
            q, k, v = (t.view(B, T, config.n_head, -1).transpose(1, 2) for t in (q, k, v))
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            h = h + self.proj(a.transpose(1, 2).reshape(B, T, C))
            return h + self.down(F.gelu(self.up(self.ln2(h)), approximate="tanh"))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.tok = nn.Embedding(config.vocab_size, config.d_model)
            self.pos = nn.Embedding(config.context_length, config.d_model)
            self.blocks = nn.ModuleList(Block() for _ in range(config.n_layer))
            self.ln_f = nn.LayerNorm(config.d_model)
            for name, p in self.named_parameters():  # GPT-2's initialization, as nanoGPT's
                if "ln" in name:  # LayerNorms keep their ones and zeros
                    continue
                if name.endswith("bias"):
                    nn.init.zeros_(p)
                    continue
                small = name.endswith(("proj.weight", "down.weight"))  # into the residual
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * config.n_layer) if small else 0.02)

        def forward(self, ids, targets):
            h = self.tok(ids) + self.pos(torch.arange(ids.shape[1]))
            for block in self.blocks:
                h = block(h)
            logits = self.ln_f(h) @ self.tok.weight.T  # tied output layer
            return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))

    torch.manual_seed(seed)
    return GPT()
