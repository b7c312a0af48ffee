"""``tinyllm speedrun``: the whole pipeline on the shipped corpus, end to end, with a report.

Stages, each timed:

1. **tokenizer** - a byte-level BPE trained on the training part of tiny Shakespeare;
2. **pretrain** - a small GPT-shaped model trained from scratch (the shared ``Trainer``);
3. **sample** - text generated from the model at each evaluation;
4. **report** - ``report.md`` in the run folder: how the run ended, the configs, the
   losses, training throughput, samples and the loss-curve plot.

The preset follows the device: ``cpu`` (minutes on a 2-core laptop) unless the backend
computes on a GPU (CuPy, or JAX with a GPU), which gets ``gpu``, a bigger model trained
longer. Ctrl-C or SIGTERM stops at the next step, saves, and still writes the report;
``--resume`` continues the run, and on a finished run only rewrites the report.
"""

import json
import math
import os
import platform
import time

import numpy as np

import tinyllm

from ..backend import get_backend, use_backend
from ..files import atomic_open
from ..train import TrainConfig
from .pretrain import PretrainConfig, pretrain, show

PRESETS = {
    # 16 x 128 tokens a step: 0.12 s on a 2-core AVX-512 machine, 0.47 s on an AVX2 one
    "cpu": (
        PretrainConfig(preset="tiny", tokenizer="bpe", vocab_size=1024, context_length=128),
        TrainConfig(
            steps=2000,
            batch_size=16,
            lr=2e-3,
            min_lr=2e-4,
            warmup_steps=100,
            eval_interval=500,
            eval_batches=8,
            checkpoint_interval=500,
        ),
    ),  # fmt: skip
    "gpu": (
        PretrainConfig(preset="small", tokenizer="bpe", vocab_size=4096, context_length=256),
        TrainConfig(
            steps=3000,
            batch_size=64,
            lr=1e-3,
            min_lr=1e-4,
            warmup_steps=200,
            eval_interval=500,
            eval_batches=20,
            checkpoint_interval=500,
        ),
    ),  # fmt: skip
}


def preset_for(backend):
    """The speedrun preset for a backend: ``gpu`` when it computes on a GPU, else ``cpu``.

    >>> preset_for(get_backend("numpy"))
    'cpu'
    """
    return "gpu" if runs_on_gpu(backend) else "cpu"


def runs_on_gpu(backend):
    """Whether ``backend`` computes on an accelerator: CuPy always, JAX when its default
    device is not the CPU (JAX installed without CUDA runs on the CPU), NumPy never."""
    if backend.name == "cupy":
        return True
    if backend.name == "jax":
        return backend.jax.default_backend() != "cpu"
    return False


def speedrun(out="runs/speedrun", *, backend=None, preset=None, resume=False, **train_changes):
    """Run every stage into ``out``; returns the path of ``report.md``.

    ``train_changes`` override the preset's ``TrainConfig`` fields (``steps=...``).
    """
    with use_backend(backend):  # None: the current backend
        name = preset or preset_for(get_backend())
        if name not in PRESETS:
            raise ValueError(f"unknown speedrun preset {name!r}; choose one of {sorted(PRESETS)}")
        pretrain_config, train_config = PRESETS[name]
        pretrain_config = pretrain_config.replace(out=str(out), resume=resume)
        if "steps" in train_changes:  # the preset's warmup is for its length: TrainConfig's
            train_changes = {"warmup_steps": None, **train_changes}  # rule fits the new one
        train_config = train_config.replace(**train_changes)
        started = time.perf_counter()
        run = pretrain(pretrain_config, train_config)
        seconds = time.perf_counter() - started
        return write_report(run, pretrain_config, train_config, name, seconds)


def write_report(run, pretrain_config, train_config, preset, seconds):
    """``report.md`` (and ``report.json``) in the run folder; returns the report's path.

    Every figure may be missing - a run stopped before its first evaluation has no
    validation loss, a finished run resumed trained nothing - and the report says so.
    """
    result, model = run.result, run.model
    facts = {
        "outcome": run.outcome,
        "preset": preset,
        "backend": get_backend().describe(),
        "machine": f"{_cpu_name()} ({os.cpu_count()} cores), Python "
        f"{platform.python_version()}, NumPy {np.__version__}, tinyllm {tinyllm.__version__}",
        "parameters": model.num_parameters(),
        "steps": result.step,
        "trained_steps": run.trained_steps,
        "stopped_by": result.stopped_by,
        "train_loss": result.train_loss,
        "val_loss": run.val_loss,
        "val_step": run.val_step,
        "best_val_loss": result.best_val_loss,
        "tokens_per_second": result.tokens_per_second,  # in optimizer steps only
        "train_seconds": result.seconds,
        "total_seconds": seconds,
        "data": run.data,
        "model_config": model.config.to_dict(),
        "pretrain_config": pretrain_config.to_dict(),
        "train_config": train_config.to_dict(),
        "samples": run.samples,
    }
    facts = {key: _nan_to_none(value) for key, value in facts.items()}
    with atomic_open(run.out / "report.json", "w") as file:
        json.dump(facts, file, indent=1)
    path = run.out / "report.md"
    with atomic_open(path, "w", encoding="utf-8") as file:
        file.write(_markdown(facts))
    return path


def _nan_to_none(value):
    """JSON has no NaN: a figure nothing measured is null."""
    return None if isinstance(value, float) and math.isnan(value) else value


def _markdown(f):
    d = f["data"]
    ppl = show(math.exp(min(f["val_loss"], 50)), ".1f") if f["val_loss"] is not None else "-"
    val_at = f" at step {f['val_step']:,}" if f["val_step"] is not None else " (no evaluation yet)"
    trained = f"{f['steps']:,} steps"
    if f["trained_steps"] != f["steps"]:
        trained += f" ({f['trained_steps']:,} in this session)"
    lines = [
        "# tinyllm speedrun",
        "",
        f"Preset `{f['preset']}` on {f['backend']}; {f['machine']}.",
        "",
        f"**Outcome:** {f['outcome']}.",
        "",
        "| stage | result |",
        "|---|---|",
        f"| tokenizer | byte-level BPE, {d['vocab_size']:,} tokens: {d['tokens']:,} tokens of "
        f"`{d['corpus']}` ({d['train_tokens']:,} train / {d['val_tokens']:,} validation), "
        f"{d['tokenize_seconds']:.1f} s (tokenizer and ids are cached after the first run) |",
        f"| pretrain | {f['parameters']:,} parameters, {trained} in {f['train_seconds']:.0f} s "
        f"(training throughput {show(f['tokens_per_second'], ',.0f')} tokens/s) |",
        f"| loss | train {show(f['train_loss'], '.3f')}, validation {show(f['val_loss'], '.3f')}"
        f"{val_at} (perplexity {ppl}), best validation {show(f['best_val_loss'], '.3f')} |",
        f"| total | {f['total_seconds']:.0f} s |",
        "",
        "![loss curves](loss.png)",
        "",
        "## Samples",
        "",
    ]
    for text in f["samples"]:
        lines += ["```text", text, "```", ""]
    if not f["samples"]:
        lines += ["None yet: samples are generated at each evaluation.", ""]
    lines += ["## Configs", ""]
    for key in ("model_config", "pretrain_config", "train_config"):
        lines += [f"### {key}", "", "```json", json.dumps(f[key], indent=1), "```", ""]
    lines += [
        "The model folder here loads with `Transformer.from_pretrained` and `transformers`;",
        "`tinyllm generate` streams text from it. `metrics.jsonl` holds every logged step.",
        "",
    ]
    return "\n".join(lines)


def _cpu_name():
    """The CPU's model name where Linux tells it, else the architecture."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as file:
            for line in file:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()
