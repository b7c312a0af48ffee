"""What the benchmark scripts share: the timing loop and a line describing the machine."""

import itertools
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
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    # under ``taskset -c 0`` NumPy's BLAS, torch and XLA each size their threads to one core
    cores = f"{cores} cores" + (f", {usable} usable" if usable != cores else "")
    return f"{cpu}, {cores} (load average {load}); numpy {np.__version__}, {_torch()}"


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


def torch_gpt(config, seed=0, checkpointing=False):
    """A plain PyTorch GPT of ``config``'s GPT-2 shape (learned positions, pre-LayerNorm
    blocks, GELU MLP, tied output layer) with GPT-2's initialization, as nanoGPT's:
    ``model(ids, targets)`` returns the mean cross-entropy. The peer the benchmarks time.
    ``checkpointing`` runs each block through ``torch.utils.checkpoint`` when training."""
    import math

    import torch
    from torch import nn
    from torch.nn import functional as F
    from torch.utils.checkpoint import checkpoint

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
            h = self.tok(ids) + self.pos(torch.arange(ids.shape[1], device=ids.device))
            for block in self.blocks:
                recompute = checkpointing and torch.is_grad_enabled()
                h = checkpoint(block, h, use_reentrant=False) if recompute else block(h)
            logits = self.ln_f(h) @ self.tok.weight.T  # tied output layer
            return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))

    torch.manual_seed(seed)
    return GPT()


# --- training steps, as the model benchmarks run them -----------------------------------------
def random_batches(config, batch_size, count=4, seed=0):
    """``count`` pairs ``(ids, targets)`` of random token ids (batch_size, context_length): the
    data every library of a benchmark trains on, each pair in turn."""
    rng = np.random.default_rng(seed)
    shape = (batch_size, config.context_length)
    return [
        (rng.integers(0, config.vocab_size, shape), rng.integers(0, config.vocab_size, shape))
        for _ in range(count)
    ]


def flops_per_token(config, n_params):
    """Model FLOPs per trained token, nanoGPT's ``estimate_mfu`` (PaLM's appendix B): 6 N for
    the matrix products forward and backward, plus 12 L H Q T for attention's scores and
    weighted sums (Q the head size, T the context).

    >>> from tinyllm.models import get_preset
    >>> flops_per_token(get_preset("tiny"), n_params=1000)  # 6 * 1000 + 12 * 4 * 4 * 32 * 64
    399216
    """
    L, H, T = config.n_layer, config.n_head, config.context_length
    return 6 * n_params + 12 * L * H * (config.d_model // H) * T


def non_embedding_params(model):
    """nanoGPT's N: a tinyllm model's parameters less the position table (the token table
    stays: tied, it is the output layer too)."""
    return sum(
        p.data.size
        for name, p in model.named_parameters()
        if not name.startswith("position_embedding")
    )


class TrainerSteps:
    """``run(n)`` takes ``n`` more optimizer steps of tinyllm's ``Trainer`` on ``model``, the
    loop users run: under JAX the whole step is one compiled program, on NumPy and CuPy it runs
    eagerly. Each call extends the run by ``n`` steps and calls ``fit`` (no evaluation, nothing
    written). AdamW as nanoGPT's recipe (lr 1e-3, betas 0.9 / 0.99, decay 0.1 on matrices);
    ``grad_clip`` 0 leaves out the clipping; ``changes`` are further ``TrainConfig`` fields."""

    def __init__(self, model, batch_size, batches, grad_clip=1.0, **changes):
        from tinyllm.train import TrainConfig, Trainer

        config = TrainConfig(
            steps=1, batch_size=batch_size, warmup_steps=0, grad_clip=grad_clip,
            eval_interval=0, progress=False, **changes,
        )  # fmt: skip
        self.trainer = Trainer(model, config, itertools.cycle(batches))
        self.backend = self.trainer.backend

    def run(self, n):
        from tinyllm import use_backend

        trainer = self.trainer
        trainer.config = trainer.config.replace(steps=trainer.step + n)
        with use_backend(self.backend):
            return trainer.fit()

    def sync(self):
        self.backend.synchronize()


class TorchSteps:
    """``run(n)`` takes ``n`` training steps of ``torch_gpt(config)`` as nanoGPT's loop takes
    them: the batch moved to ``device``, the forward (under ``torch.autocast`` to bfloat16 with
    ``bf16``), backward, gradient clipping at ``grad_clip`` (0: none), AdamW with decay on the
    matrices only (fused on a GPU). ``compile`` names a ``torch.compile`` backend
    ("inductor"), or None for eager; ``checkpointing`` recomputes each block's activations."""

    def __init__(self, config, batches, device="cpu", bf16=False, compile=None, grad_clip=1.0,
                 checkpointing=False):  # fmt: skip
        import torch

        self.torch, self.device, self.bf16, self.grad_clip = torch, device, bf16, grad_clip
        model = torch_gpt(config, seed=0, checkpointing=checkpointing).to(device)
        self.params = list(model.parameters())
        groups = [
            {"params": [p for p in self.params if p.dim() >= 2], "weight_decay": 0.1},
            {"params": [p for p in self.params if p.dim() < 2], "weight_decay": 0.0},
        ]
        fused = True if device == "cuda" else None
        self.optimizer = torch.optim.AdamW(groups, lr=1e-3, betas=(0.9, 0.99), fused=fused)
        self.model = model if compile is None else torch.compile(model, backend=compile)
        self.batches = itertools.cycle(
            [(torch.from_numpy(x), torch.from_numpy(y)) for x, y in batches]
        )

    def run(self, n):
        torch = self.torch
        for _ in range(n):
            ids, targets = (t.to(self.device, non_blocking=True) for t in next(self.batches))
            with torch.autocast(self.device, dtype=torch.bfloat16, enabled=self.bf16):
                loss = self.model(ids, targets)
            loss.backward()
            if self.grad_clip:
                torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)

    def sync(self):
        if self.device == "cuda":
            self.torch.cuda.synchronize()
