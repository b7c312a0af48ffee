"""GPU throughput: tinyllm on JAX and on CuPy against PyTorch eager and torch.compile, one run.

Two training shapes, every library on the same random token batches in the same process
(GPT-2 small's first: the targets are read there, and a short ``--budget`` cuts the last):

- nanoGPT's Shakespeare-character GPU recipe: 6 layers, 6 heads, d_model 384, context 256,
  vocabulary 65, batch 64 (dropout off: the timing is of the arithmetic);
- GPT-2 small: 12 layers, 12 heads, d_model 768, context 1024, vocabulary 50304 (GPT-2's
  50257 padded to a multiple of 64, as nanoGPT trains it), batch 12.

A training step is forward, backward, clipping at 1.0 and AdamW. tinyllm runs through its own
``Trainer`` (under JAX the whole step is one ``jax.jit`` program; CuPy runs eagerly), in
float32 and in 16 bits: JAX in bfloat16 (attention through cuDNN's fused kernel), CuPy in
float16 with loss scaling (CuPy has no bfloat16). The PyTorch peer is ``common.torch_gpt`` in
nanoGPT's loop (fused AdamW on a GPU), eager and through ``torch.compile``, each in float32
and under ``torch.autocast`` to bfloat16. Each column warms up (the first steps compile; their
time, less the steps, is the compile column), then runs as many steps as ``--seconds`` allows
(at least 3), synchronised before the clock is read. MFU is nanoGPT's: (6 N + 12 L H Q T)
FLOPs per token, against the bfloat16 matrix product rate measured at the start (torch,
n x n x n), and for float32 runs also against the float32 rate the same library reaches at
the precision the column runs in: full float32, no TF32 (torch's and CuPy's default;
tinyllm's JAX backend asks JAX for it).

Generation: greedy tokens/s with the KV cache at the nanoGPT shape, batch 1 and batch 8:
tinyllm-JAX (compiled decoding over a ``StaticKVCache``), tinyllm-CuPy (eager, ``KVCache``)
and ``transformers``' GPT-2 ``generate`` (its dynamic cache, eager), all float32.

Fusion: each elementwise chain of ``tinyllm/backend/fused.py`` on CuPy, as the plain
function (one kernel per operation, a temporary each) against ``cupy.fuse``'s one kernel
(AdamW: its in-place ``ElementwiseKernel`` against the plain chain and copies back), on arrays
the size of the nanoGPT shape's activations; the ratio is unfused time / fused time. Without
a GPU the rows say why.

Every column runs under a time limit (``--column-limit``, or what is left of ``--budget``) and
a try/except: a failure or a missing library prints its reason in the table ("unavailable:
...", "error: ...", "stopped: ...") instead of ending the run. With ``--out`` the figures are
also written as JSON, after every row, so a run cut short keeps what it measured.

    python benchmarks/bench_gpu.py --out bench_gpu.json   # on a GPU: at most --budget, 7 min
    python benchmarks/bench_gpu.py --quick                # seconds, anywhere: checks the script
"""

import argparse
import contextlib
import dataclasses
import gc
import json
import os
import signal
import time
from pathlib import Path

import numpy as np
from common import (
    TorchSteps,
    TrainerSteps,
    flops_per_token,
    machine,
    non_embedding_params,
    random_batches,
    table_head,
    table_row,
)

SHAPES = {  # name: (preset, changes, batch size, title)
    "nanogpt": (
        "small", dict(dropout=0.0), 64,
        "nanoGPT Shakespeare-char GPU: 6 layers, 6 heads, d_model 384, context 256, vocab 65, batch 64",
    ),
    "gpt2": (
        "gpt2-like", dict(vocab_size=50304), 12,
        "GPT-2 small: 12 layers, 12 heads, d_model 768, context 1024, vocab 50304, batch 12",
    ),
}  # fmt: skip
QUICK_CHANGES = dict(n_layer=1, n_head=2, d_model=32, context_length=16)  # --quick: tiny models
QUICK_BATCH = 2
LOW_PRECISION = {"jax": "bfloat16", "cupy": "float16"}  # tinyllm's 16 bits (CuPy has no bf16)
# (label, library, dtype): tinyllm's backends, then torch eager and compiled
TRAIN_COLUMNS = [
    ("tinyllm-JAX", "jax", "float32"),
    ("tinyllm-CuPy", "cupy", "float32"),
    ("torch eager", "eager", "float32"),
    ("torch eager", "eager", "bfloat16"),
    ("torch.compile", "compile", "bfloat16"),
    ("torch.compile", "compile", "float32"),  # last: the first a tight --budget leaves out
]
FUSION_ROWS, FUSION_COLUMNS = 64 * 256, 1536  # the nanoGPT shape's MLP activations (B*T, 4d)
QUICK_FUSION = (16, 32)
# chain: its arguments, "x" (rows, columns), "row" (rows, 1), "col" (columns,), or a number
FUSION_CASES = {
    "gelu_tanh": ("x",),
    "gelu_tanh_backward": ("x", "x", "x"),
    "swiglu": ("x", "x"),
    "swiglu_backward": ("x", "x", "x", "x"),
    "norm_scale": ("x", "row", "col"),
    "norm_backward": ("x", "x", "row", "row", "row", 384),
    "softmax_exp": ("x", "row"),
    "normalise": ("x", "row"),
    "softmax_backward": ("x", "x", "row"),
    "adamw_moments": ("flat", "flat", "flat", 0.9, 0.95, 1e-3, 1e-8),  # in place
}
GENERATE_COLUMNS = [
    ("tinyllm-JAX", "jax"),
    ("tinyllm-CuPy", "cupy"),
    ("torch (transformers)", "hf"),
]


class ColumnTimeout(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds):
    """Raise ``ColumnTimeout`` in the main thread after ``seconds`` (a compile inside C++
    is interrupted once it returns to Python)."""

    def expire(signum, frame):
        raise ColumnTimeout(f"over its {seconds:.0f} s limit")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def reason(err):
    """One line saying why a column did not run."""
    from tinyllm.backend import BackendUnavailable

    text = str(err).strip().splitlines()[0][:160] if str(err).strip() else ""
    if isinstance(err, (BackendUnavailable, ImportError)):
        return f"unavailable: {text}"
    if isinstance(err, ColumnTimeout):
        return f"stopped: {text}"
    return f"error: {type(err).__name__}: {text}"


# --- the libraries: devices, synchronisation, memory ----------------------------------------
def torch_device():
    try:
        import torch
    except ImportError:
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


class Memory:
    """Peak device memory of one column, where the library tells it (None on a CPU).

    torch: ``max_memory_allocated`` since a reset; CuPy: its memory pool's size, emptied first
    (the pool keeps what the column needed at its peak); JAX: the process's peak so far
    (``memory_stats``; it cannot be reset, so a column below an earlier peak reads "<=").
    """

    def __init__(self, library):
        self.library, self.before = library, None
        if library in ("eager", "compile", "hf") and torch_device() == "cuda":
            import torch

            torch.cuda.reset_peak_memory_stats()
        elif library == "cupy":
            import cupy

            cupy.get_default_memory_pool().free_all_blocks()
        elif library == "jax":
            self.before = self._jax_peak()

    @staticmethod
    def _jax_peak():
        import jax

        stats = jax.local_devices()[0].memory_stats() or {}
        return stats.get("peak_bytes_in_use")

    def peak(self):
        """``(gigabytes, note)``: the peak, and "<=" where it is an upper bound."""
        if self.library in ("eager", "compile", "hf") and torch_device() == "cuda":
            import torch

            return torch.cuda.max_memory_allocated() / 1e9, ""
        if self.library == "cupy":
            import cupy

            return cupy.get_default_memory_pool().total_bytes() / 1e9, ""
        if self.library == "jax":
            peak = self._jax_peak()
            if peak is None:
                return None, ""
            return peak / 1e9, "<=" if self.before is not None and peak <= self.before else ""
        return None, ""


def release(library):
    """Hand back what a finished column held, so the next one finds the device empty."""
    gc.collect()
    if library in ("eager", "compile", "hf"):
        import torch

        if library == "compile":
            torch._dynamo.reset()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    elif library == "cupy":
        # CuPy without a CUDA driver imports, then fails (RuntimeError) at its first device call
        with contextlib.suppress(ImportError, RuntimeError):
            import cupy

            cupy.get_default_memory_pool().free_all_blocks()


def matmul_rates(n, repeat):
    """``{name: TFLOP/s or the reason it is missing}`` of an (n, n) @ (n, n) product: torch in
    bfloat16 (the peak MFU is read against) and float32 (its default, and TF32 on a GPU), JAX
    in bfloat16 and float32 (at the precision tinyllm's JAX backend sets: full float32, no
    TF32), CuPy in float32."""
    rates = {}

    def measure(name, make, multiply, sync):
        try:
            a, b = make()
            for _ in range(2):
                out = multiply(a, b)
            sync(out)
            start = time.perf_counter()
            for _ in range(repeat):
                out = multiply(a, b)
            sync(out)
            rates[name] = 2 * n**3 * repeat / (time.perf_counter() - start) / 1e12
        except Exception as err:  # noqa: BLE001 - a library this machine lacks
            rates[name] = reason(err)

    host = np.random.default_rng(0).standard_normal((2, n, n)).astype(np.float32)
    try:
        import torch

        device = torch_device()

        def torch_sync(out):
            if device == "cuda":
                torch.cuda.synchronize()

        def torch_pair(dtype):
            return [torch.from_numpy(x).to(device, getattr(torch, dtype)) for x in host]

        for dtype in ("bfloat16", "float32"):
            measure(f"torch {dtype}", lambda d=dtype: torch_pair(d), torch.matmul, torch_sync)
        if device == "cuda":
            before = torch.get_float32_matmul_precision()
            torch.set_float32_matmul_precision("high")  # TF32
            measure("torch float32 (TF32)", lambda: torch_pair("float32"), torch.matmul, torch_sync)
            torch.set_float32_matmul_precision(before)
    except ImportError as err:
        rates["torch bfloat16"] = reason(err)
    try:
        import jax.numpy as jnp

        import tinyllm

        tinyllm.get_backend("jax")  # float32 products as tinyllm asks for them: no TF32
        for dtype in ("bfloat16", "float32"):
            measure(
                f"jax {dtype}", lambda d=dtype: [jnp.asarray(x, dtype=d) for x in host],
                jnp.matmul, lambda out: out.block_until_ready(),
            )  # fmt: skip
    except ImportError as err:
        rates["jax float32"] = reason(err)
    try:
        import cupy

        measure(
            "cupy float32", lambda: [cupy.asarray(x) for x in host], cupy.matmul,
            lambda out: cupy.cuda.Device().synchronize(),
        )  # fmt: skip
    except ImportError as err:
        rates["cupy float32"] = reason(err)
    release("cupy")
    return rates


def own_rate_name(library, dtype):
    """The matrix-product rate a column's float32 MFU is read against: its library's own
    (16-bit columns: the bfloat16 rate; float16's tensor-core rate is the same)."""
    if dtype in ("bfloat16", "float16"):
        return "torch bfloat16"
    return {"jax": "jax float32", "cupy": "cupy float32"}.get(library, "torch float32")


# --- one column -------------------------------------------------------------------------------
def tinyllm_dtype_option():
    """The config field that sets tinyllm's compute dtype, if this version has one:
    ``("train" | "model", name)``, else None (tinyllm then runs float32 only)."""
    from tinyllm.models import ModelConfig
    from tinyllm.train import TrainConfig

    for where, cls in (("train", TrainConfig), ("model", ModelConfig)):
        names = {f.name for f in dataclasses.fields(cls)}
        for name in ("compute_dtype", "dtype"):
            if name in names:
                return where, name
    return None


def train_runner(library, dtype, config, batch_size, batches, args):
    if library in ("jax", "cupy"):
        import tinyllm
        from tinyllm.models import Transformer

        option, train_changes = tinyllm_dtype_option(), {}
        if dtype != "float32":
            where, name = option
            if where == "model":
                config = config.replace(**{name: dtype})
            else:
                train_changes[name] = dtype
        with tinyllm.use_backend(library):
            model = Transformer(config, seed=0)
        return TrainerSteps(model, batch_size, batches, **train_changes)
    import torch  # noqa: F401 - the reason in the table when torch is missing

    compile = args.compile_backend if library == "compile" else None
    return TorchSteps(config, batches, torch_device(), dtype == "bfloat16", compile)


def time_steps(runner, warmup, max_steps, seconds):
    """``(seconds per step, steps timed, compile seconds)``: ``warmup`` steps (the first
    compile), one more to size the timed block, then up to ``max_steps`` steps or about
    ``seconds``, at least 3, synchronised before each clock reading."""
    start = time.perf_counter()
    runner.run(warmup)
    runner.sync()
    warm_seconds = time.perf_counter() - start
    start = time.perf_counter()
    runner.run(1)
    runner.sync()
    probe = time.perf_counter() - start
    steps = max(3, min(max_steps, int(seconds / max(probe, 1e-6))))
    start = time.perf_counter()
    runner.run(steps)
    runner.sync()
    per_step = (time.perf_counter() - start) / steps
    return per_step, steps, max(0.0, warm_seconds - warmup * per_step)


def train_column(label, library, dtype, setup, rates, args, limit=None):
    config, batch_size, batches, flops = setup
    row = dict(column=label, dtype=dtype)
    try:
        with time_limit(limit or args.column_limit):
            runner = train_runner(library, dtype, config, batch_size, batches, args)
            memory = Memory(library)  # after the runner: its reason first, where one is missing
            per_step, steps, compile_seconds = time_steps(
                runner, args.warmup, args.max_steps, args.seconds
            )
            peak, note = memory.peak()
    except Exception as err:  # noqa: BLE001 - reported in the table
        return row | dict(status=reason(err))
    finally:
        runner = None
        release(library)
    tokens_per_second = batch_size * config.context_length / per_step
    achieved = flops * tokens_per_second / 1e12  # TFLOP/s
    own = rates.get(own_rate_name(library, dtype))
    peak_bf16 = rates.get("torch bfloat16")
    return row | dict(
        status="ok", step_ms=1000 * per_step, tokens_per_s=tokens_per_second,
        tflops=achieved, steps=steps, compile_s=compile_seconds,
        mfu_bf16=achieved / peak_bf16 if isinstance(peak_bf16, float) else None,
        mfu_own=achieved / own if isinstance(own, float) else None,
        own_rate=own_rate_name(library, dtype), peak_gb=peak, peak_note=note,
    )  # fmt: skip


def generate_column(label, library, config, prompt, n, args, limit=None):
    row = dict(column=label, batch=int(prompt.shape[0]), new_tokens=n)
    try:
        with time_limit(limit or args.column_limit):
            run = generate_runner(library, config, prompt, n)
            memory = Memory(library)
            start = time.perf_counter()
            run()
            first = time.perf_counter() - start
            start = time.perf_counter()
            run()
            seconds = time.perf_counter() - start
            peak, note = memory.peak()
    except Exception as err:  # noqa: BLE001 - reported in the table
        return row | dict(status=reason(err))
    finally:
        run = None
        release(library)
    return row | dict(
        status="ok", tokens_per_s=prompt.shape[0] * n / seconds, first_s=first,
        peak_gb=peak, peak_note=note,
    )  # fmt: skip


def generate_runner(library, config, prompt, n):
    """A function generating ``n`` greedy tokens after ``prompt`` with the KV cache, on the
    host when it returns."""
    if library in ("jax", "cupy"):
        import tinyllm
        from tinyllm.infer import generate
        from tinyllm.models import Transformer

        backend = tinyllm.get_backend(library)
        with tinyllm.use_backend(backend):
            model = Transformer(config, seed=0)

        def run():
            with tinyllm.use_backend(backend):
                return generate(model, prompt, n, temperature=0)

        return run
    import torch
    import transformers

    device = torch_device()
    hf_config = transformers.GPT2Config(
        vocab_size=config.vocab_size, n_positions=config.context_length, n_embd=config.d_model,
        n_layer=config.n_layer, n_head=config.n_head, resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0, bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(hf_config).to(device).eval()
    ids = torch.from_numpy(prompt).to(device)

    def run():
        with torch.no_grad():
            out = model.generate(
                ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                do_sample=False, pad_token_id=0,
            )  # fmt: skip
        return out.cpu().numpy()

    return run


# --- the tables -------------------------------------------------------------------------------
def _num(value, spec, dash="-"):
    return dash if value is None else format(value, spec)


def print_train_row(row):
    if row["status"] != "ok":
        table_row([row["column"], row["dtype"], row["status"], *[""] * 7])
        return
    peak = _num(row["peak_gb"], ".2f")
    table_row([
        row["column"], row["dtype"], f"{row['step_ms']:.1f}", f"{row['tokens_per_s']:,.0f}",
        f"{row['tflops']:.3g}", _num(row["mfu_bf16"], ".1%"),
        f"{_num(row['mfu_own'], '.1%')} ({row['own_rate']})", f"{row['compile_s']:.1f}",
        f"{row['peak_note']}{peak}", str(row["steps"]),
    ])  # fmt: skip


def print_generate_row(row):
    if row["status"] != "ok":
        table_row([row["column"], str(row["batch"]), row["status"], "", ""])
        return
    peak = f"{row['peak_note']}{_num(row['peak_gb'], '.2f')}"
    table_row([
        row["column"], str(row["batch"]), f"{row['tokens_per_s']:,.1f}",
        f"{row['first_s']:.1f}", peak,
    ])  # fmt: skip


class Report:
    """The run's figures as JSON at ``path`` (None: none written), rewritten after every row
    so that a run cut short still leaves what it measured."""

    def __init__(self, path, **head):
        self.path, self.data = path, dict(head, train=[], generate=[], fusion=[])

    def add(self, section, row):
        self.data[section].append(row)
        self.save()

    def save(self):
        if self.path is None:
            return
        partial = Path(f"{self.path}.partial")
        partial.write_text(json.dumps(self.data, indent=1))
        os.replace(partial, self.path)


def model_setup(name, quick):
    from tinyllm.models import Transformer, get_preset

    preset, changes, batch_size, title = SHAPES[name]
    config = get_preset(preset, **changes)
    if quick:
        config, batch_size = config.replace(**QUICK_CHANGES), QUICK_BATCH
        title = f"{title} (--quick: shrunk to 1 layer x 32, context 16, batch {batch_size})"
    n_params = non_embedding_params(Transformer(config, seed=0))
    batches = random_batches(config, batch_size)
    return title, (config, batch_size, batches, flops_per_token(config, n_params)), n_params


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="tiny models, seconds: checks the script"
    )
    parser.add_argument("--out", type=Path, help="also write the figures as JSON here")
    parser.add_argument(
        "--shapes", nargs="+", choices=tuple(SHAPES),
        help="training shapes, in order (default: gpt2, whose figures the targets are read at, "
        "then nanogpt; --quick: nanogpt); generation and fusion follow nanogpt's",
    )  # fmt: skip
    parser.add_argument(
        "--seconds", type=float, help="timed seconds per column (default 5; --quick 0)"
    )
    parser.add_argument(
        "--max-steps", type=int, help="timed steps per column at most (default 50; --quick 3)"
    )
    parser.add_argument(
        "--warmup", type=int, help="untimed steps first, compiling (default 2; --quick 1)"
    )
    parser.add_argument(
        "--column-limit", type=float, default=150.0, help="seconds one column may take in all"
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=420.0,
        help="seconds for the whole run: later columns are skipped",
    )
    parser.add_argument(
        "--new-tokens", type=int, help="generated tokens per call (default 200; --quick 8)"
    )
    parser.add_argument(
        "--matmul-size",
        type=int,
        help="n of the n x n x n peak product (default 8192 on a GPU, 1024 on a CPU; --quick 256)",
    )
    parser.add_argument(
        "--compile-backend",
        help="torch.compile's backend (default inductor; --quick aot_eager: the same graph "
        "capture and autograd, without inductor's code generation, which takes minutes on a CPU)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    quick = args.quick
    defaults = dict(
        seconds=0.0 if quick else 5.0, max_steps=3 if quick else 50, warmup=1 if quick else 2,
        new_tokens=8 if quick else 200, shapes=["nanogpt"] if quick else ["gpt2", "nanogpt"],
        compile_backend="aot_eager" if quick else "inductor",
        matmul_size=256 if quick else (8192 if torch_device() == "cuda" else 1024),
    )  # fmt: skip
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def main(argv=None):
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # JAX shares the card
    from tinyllm.backend import available_backends
    from tinyllm.models import get_preset

    args = parse_args(argv)
    started = time.perf_counter()
    print(f"Machine: {machine()}")
    device = torch_device()
    if device == "cuda":
        import torch

        device = f"cuda: {torch.cuda.get_device_name()} (torch {torch.__version__})"
    print(f"torch device: {device}")
    backends = {name: detail for name, (_, detail) in available_backends().items()}
    for name, detail in backends.items():  # where tinyllm's columns run (JAX: GPU or CPU?)
        print(f"tinyllm backend {name}: {detail}")
    rates = matmul_rates(args.matmul_size, repeat=3 if args.quick else 10)
    settings = vars(args) | {"out": str(args.out)}
    report = Report(
        args.out, machine=machine(), device=device, tinyllm_backends=backends, args=settings,
        matmul_tflops=rates,
    )  # fmt: skip
    n = args.matmul_size
    print(f"\nMatrix product {n} x {n} x {n}, TFLOP/s (the peaks MFU is read against):")
    for name, rate in rates.items():
        print(f"  {name}: {_num(rate, '.2f') if isinstance(rate, float) else rate}")
    option = tinyllm_dtype_option()
    low = LOW_PRECISION if option else {}  # each backend's 16-bit dtype, if tinyllm has one
    print("tinyllm compute dtypes: float32" + "".join(f", {d} ({b})" for b, d in low.items())
          + ("" if option else " (this version has no compute-dtype option)"))  # fmt: skip

    def column_limit():
        """Seconds for the next column: its own limit, or what is left of the budget; 0 when
        too little is left to start one."""
        left = args.budget - (time.perf_counter() - started)
        return 0 if left < 10 else min(args.column_limit, left)

    skipped = f"skipped: the run's --budget of {args.budget:.0f} s is spent"
    for preset, changes, _, _ in SHAPES.values():  # every shape's config is valid, in --quick too
        get_preset(preset, **changes)
    for name in args.shapes:
        title, setup, n_params = model_setup(name, args.quick)
        table_head(
            f"Training: {title}; N = {n_params / 1e6:.2f}M, {setup[3] / 1e6:.1f} MFLOP/token",
            ["column", "dtype", "ms / step", "tokens/s", "TFLOP/s", "MFU (bf16 peak)",
             "MFU (own dtype's rate)", "compile s", "peak GB", "steps"],
        )  # fmt: skip
        columns = [
            *((label, lib, dt) for label, lib, _ in TRAIN_COLUMNS[:2]
              for dt in ("float32", low.get(lib)) if dt),  # tinyllm: float32, then 16 bits
            *TRAIN_COLUMNS[2:],
        ]  # fmt: skip
        for label, library, dtype in columns:
            limit = column_limit()
            if not limit:
                row = dict(column=label, dtype=dtype, status=skipped)
            else:
                row = train_column(label, library, dtype, setup, rates, args, limit)
            print_train_row(row)
            report.add("train", row | dict(shape=name))
        if name == "nanogpt":  # generation and fusion at its shape
            generation(setup[0], args, report, column_limit, skipped)
            fusion(args, report, column_limit, skipped)
    print(f"\n(total {time.perf_counter() - started:.0f} s)")


def fusion_row(name, args, limit):
    """Fused and unfused seconds of one chain on CuPy, and their ratio."""
    from tinyllm.backend import fused, get_backend

    row = dict(chain=name)
    try:
        with time_limit(limit):
            backend = get_backend("cupy")
            xp, chain = backend.xp, getattr(fused, name)
            rows, columns = QUICK_FUSION if args.quick else (FUSION_ROWS, FUSION_COLUMNS)
            shapes = {"x": (rows, columns), "row": (rows, 1), "col": (columns,)}
            shapes["flat"] = (rows * columns,)
            rng = np.random.default_rng(0)
            arrays = [
                backend.asarray(rng.uniform(0.1, 1.0, shapes[a]).astype(np.float32))
                if isinstance(a, str) else a
                for a in FUSION_CASES[name]
            ]  # fmt: skip
            if name == "adamw_moments":  # in place: the kernel against the chain + copies
                fast = lambda: backend.update_in_place(chain, *arrays)  # noqa: E731

                def slow():
                    for target, result in zip(arrays, chain(xp, *arrays)):
                        xp.copyto(target, result)
            else:
                fast = lambda: backend.fused(chain)(*arrays)  # noqa: E731
                slow = lambda: chain(xp, *arrays)  # noqa: E731
            repeat = 3 if args.quick else 20
            times = {}
            for label, run in (("unfused", slow), ("fused", fast)):
                run()  # the first call compiles
                backend.synchronize()
                start = time.perf_counter()
                for _ in range(repeat):
                    run()
                backend.synchronize()
                times[label] = (time.perf_counter() - start) / repeat
    except Exception as err:  # noqa: BLE001 - reported in the table
        return row | dict(status=reason(err))
    return row | dict(
        status="ok", elements=rows * columns, unfused_us=1e6 * times["unfused"],
        fused_us=1e6 * times["fused"], ratio=times["unfused"] / times["fused"],
    )  # fmt: skip


def fusion(args, report, column_limit, skipped):
    table_head(
        "Fusion on CuPy: the chains of tinyllm/backend/fused.py, plain (a kernel per "
        "operation) against cupy.fuse (one kernel), float32",
        ["chain", "elements", "unfused us", "fused us", "unfused / fused"],
    )
    for name in FUSION_CASES:
        limit = column_limit()
        row = fusion_row(name, args, limit) if limit else dict(chain=name, status=skipped)
        if row["status"] == "ok":
            cells = [f"{row['elements']:,}", _num(row["unfused_us"], ".0f"),
                     _num(row["fused_us"], ".0f"), _num(row["ratio"], ".2f") + "x"]  # fmt: skip
        else:
            cells = [row["status"], "", "", ""]
        table_row([name, *cells])
        report.add("fusion", row)
        if row["status"].startswith("unavailable"):
            break  # no CuPy here: one row says why


def generation(config, args, report, column_limit, skipped):
    n = args.new_tokens
    prompt_length = min(16, config.context_length - n)
    table_head(
        f"Generation: the first shape, greedy, prompt {prompt_length} + {n} new tokens, "
        "float32, with the KV cache (the second call timed; the first compiles)",
        ["column", "batch", "tokens/s", "first call s", "peak GB"],
    )
    rng = np.random.default_rng(1)
    for batch in (1,) if args.quick else (1, 8):
        prompt = rng.integers(0, config.vocab_size, (batch, prompt_length))
        for label, library in GENERATE_COLUMNS:
            limit = column_limit()
            if not limit:
                row = dict(column=label, batch=batch, new_tokens=n, status=skipped)
            else:
                row = generate_column(label, library, config, prompt, n, args, limit)
            print_generate_row(row)
            report.add("generate", row)


if __name__ == "__main__":
    main()
