"""``tinyllm speedrun``: the whole pipeline on the shipped corpus, end to end, with a report.

Stages, each timed:

1. **tokenizer** - a byte-level BPE trained on the training part of tiny Shakespeare;
2. **pretrain** - a small GPT-shaped model trained from scratch (the shared ``Trainer``);
3. **sample** - text generated from the trained model;
4. **report** - ``report.md`` in the run folder: the configs, the losses, throughput,
   samples and the loss-curve plot.

The ``cpu`` preset finishes in minutes on a 2-core laptop; ``--backend jax`` or ``cupy``
picks the ``gpu`` preset, a bigger model trained longer. Later stages of the course (fine
tuning, preference tuning, quantization, speculative decoding) append to the same run.
"""

import json
import os
import platform
import time

import numpy as np

import tinyllm

from ..backend import get_backend, use_backend
from ..files import atomic_open
from ..train import TrainConfig
from .pretrain import PretrainConfig, pretrain

PRESETS = {
    # 16 x 128 tokens a step, about 0.15 s each on two CPU cores: about 5 minutes
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


def preset_for(backend_name):
    """The speedrun preset for a backend: ``gpu`` for CuPy and JAX, ``cpu`` for NumPy."""
    return "cpu" if backend_name == "numpy" else "gpu"


def speedrun(out="runs/speedrun", *, backend=None, preset=None, resume=False, **train_changes):
    """Run every stage into ``out``; returns the path of ``report.md``.

    ``train_changes`` override the preset's ``TrainConfig`` fields (``steps=...``).
    """
    with use_backend(backend):  # None: the current backend
        name = preset or preset_for(get_backend().name)
        if name not in PRESETS:
            raise ValueError(f"unknown speedrun preset {name!r}; choose one of {sorted(PRESETS)}")
        pretrain_config, train_config = PRESETS[name]
        pretrain_config = pretrain_config.replace(out=str(out), resume=resume)
        if "steps" in train_changes:  # a shorter run warms up for at most a tenth of it
            warmup = min(train_config.warmup_steps, train_changes["steps"] // 10)
            train_changes = {"warmup_steps": warmup, **train_changes}
        train_config = train_config.replace(**train_changes)
        started = time.perf_counter()
        run = pretrain(pretrain_config, train_config)
        seconds = time.perf_counter() - started
        return write_report(run, pretrain_config, train_config, name, seconds)


def write_report(run, pretrain_config, train_config, preset, seconds):
    """``report.md`` (and ``report.json``) in the run folder; returns the report's path."""
    result, model = run.result, run.model
    facts = {
        "preset": preset,
        "backend": get_backend().describe(),
        "machine": f"{_cpu_name()} ({os.cpu_count()} cores), Python "
        f"{platform.python_version()}, NumPy {np.__version__}, tinyllm {tinyllm.__version__}",
        "parameters": model.num_parameters(),
        "steps": result.step,
        "train_loss": result.train_loss,
        "val_loss": result.val_loss,
        "best_val_loss": result.best_val_loss,
        "tokens_per_second": result.tokens_per_second,
        "train_seconds": result.seconds,
        "total_seconds": seconds,
        "stopped_by": result.stopped_by,
        "data": run.data,
        "model_config": model.config.to_dict(),
        "pretrain_config": pretrain_config.to_dict(),
        "train_config": train_config.to_dict(),
        "samples": run.samples,
    }
    with atomic_open(run.out / "report.json", "w") as file:
        json.dump(facts, file, indent=1)
    path = run.out / "report.md"
    with atomic_open(path, "w", encoding="utf-8") as file:
        file.write(_markdown(facts))
    return path


def _markdown(f):
    ppl = float(np.exp(min(f["val_loss"], 50))) if f["val_loss"] is not None else float("nan")
    d = f["data"]
    lines = [
        "# tinyllm speedrun",
        "",
        f"Preset `{f['preset']}` on {f['backend']}; {f['machine']}.",
        "",
        "| stage | result |",
        "|---|---|",
        f"| tokenizer | byte-level BPE, {d['vocab_size']:,} tokens: {d['tokens']:,} tokens of "
        f"`{d['corpus']}` ({d['train_tokens']:,} train / {d['val_tokens']:,} validation), "
        f"{d['tokenize_seconds']:.1f} s (tokenizer and ids are cached after the first run) |",
        f"| pretrain | {f['parameters']:,} parameters, {f['steps']:,} steps in "
        f"{f['train_seconds']:.0f} s ({f['tokens_per_second']:,.0f} tokens/s) |",
        f"| loss | train {f['train_loss']:.3f}, validation {f['val_loss']:.3f} "
        f"(perplexity {ppl:.1f}), best validation {f['best_val_loss']:.3f} |",
        f"| total | {f['total_seconds']:.0f} s |",
        "",
    ]
    if f["stopped_by"]:
        lines += [f"Stopped early by {f['stopped_by']}; resume with `--resume`.", ""]
    lines += ["![loss curves](loss.png)", "", "## Samples", ""]
    for text in f["samples"]:
        lines += ["```text", text, "```", ""]
    lines += ["## Configs", ""]
    for key in ("model_config", "pretrain_config", "train_config"):
        lines += [f"### {key}", "", "```json", json.dumps(f[key], indent=1), "```", ""]
    lines += [
        "The model folder here loads with `Transformer.from_pretrained` and `transformers`;",
        "`tinyllm sample` generates from it. `metrics.jsonl` holds every logged step.",
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
