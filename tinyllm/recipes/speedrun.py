"""``tinyllm speedrun``: the whole pipeline on the shipped corpus, end to end, with a report.

Stages, each timed:

1. **tokenizer** - a byte-level BPE trained on the training part of tiny Shakespeare;
2. **pretrain** - a small model trained from scratch (the shared ``Trainer``): on a CPU two
   Llama blocks (``tiny-llama-shallow``), which learn more per second here than GPT-2's,
   with text sampled from it at each evaluation;
3. **sft** - supervised fine-tuning of that model on the checkable tasks
   (``tinyllm.data.tasks``), into ``sft/``;
4. **dpo** - preference tuning of the SFT model against itself frozen, on right-vs-wrong
   answer pairs, into ``dpo/``;
5. **report** - ``report.md`` in the run folder: how each stage ended, the configs, the
   losses, training throughput, samples, and per stage the held-out task accuracy and
   preference measures before and after, with plots.

The preset follows the device: ``cpu`` (minutes on a 2-core laptop) unless the backend
computes on a GPU (CuPy, or JAX with a GPU), which gets ``gpu``, a bigger model trained
longer. Ctrl-C or SIGTERM stops at the next step, saves, skips the stages after it and
still writes the report; ``--resume`` continues the run, and on a finished run only
measures again and rewrites the report.

``dtype`` ("bfloat16" on JAX, "float16" on JAX or CuPy) is every stage's compute dtype
(``TrainConfig.dtype``): the matmuls of training and of the samples pretraining writes.
It is checked against the backend before the tokenizer is trained, not minutes later. The
held-out measures of SFT and DPO stay a float32 yardstick, comparable across runs.
"""

import json
import math
import os
import platform
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

import tinyllm

from ..backend import get_backend, use_backend
from ..backend.precision import check_compute_dtype
from ..files import atomic_open
from ..train import TrainConfig
from .dpo import DPOConfig, dpo
from .pretrain import PretrainConfig, describe_outcome, pretrain, show
from .sft import SFTConfig, sft


class Stage(NamedTuple):
    """One stage of a preset: its recipe's config and its training config."""

    config: object
    train: TrainConfig


POST_TRAINING = ("sft", "dpo")  # the stages after pretraining, in order
# The held-out prompts (and pairs) each post-training measurement uses
EVAL_EXAMPLES = 100

PRESETS = {
    # On a quiet 2-core AVX2 machine (one BLAS thread): pretrain 0.12 s a step (8 x 128
    # tokens; validation loss 3.43 in 269 s), SFT 0.13 s (8 packed rows), DPO 0.12 s; the
    # whole run under 6 minutes (benchmarks/README.md)
    "cpu": {
        "pretrain": Stage(
            PretrainConfig(preset="tiny-llama-shallow", tokenizer="bpe", vocab_size=1024,
                           context_length=128),
            TrainConfig(steps=2200, batch_size=8, lr=3e-3, min_lr=3e-4, warmup_steps=50,
                        eval_interval=1100, eval_batches=16, checkpoint_interval=1100),
        ),
        "sft": Stage(
            SFTConfig(examples=1500, eval_examples=EVAL_EXAMPLES),
            TrainConfig(steps=400, batch_size=8, lr=2e-3, min_lr=2e-4, warmup_steps=20,
                        eval_interval=100, checkpoint_interval=200),
        ),
        "dpo": Stage(
            DPOConfig(pairs=1000, eval_pairs=EVAL_EXAMPLES, samples=2),
            TrainConfig(steps=100, batch_size=16, lr=1e-4, min_lr=1e-5, warmup_steps=10,
                        eval_interval=100, checkpoint_interval=100),
        ),
    },
    "gpu": {
        "pretrain": Stage(
            PretrainConfig(preset="small", tokenizer="bpe", vocab_size=4096, context_length=256),
            TrainConfig(steps=3000, batch_size=64, lr=1e-3, min_lr=1e-4, warmup_steps=200,
                        eval_interval=500, eval_batches=20, checkpoint_interval=500),
        ),
        "sft": Stage(
            SFTConfig(examples=1500, eval_examples=EVAL_EXAMPLES),
            TrainConfig(steps=300, batch_size=32, lr=5e-4, min_lr=5e-5, warmup_steps=30,
                        eval_interval=100, checkpoint_interval=100),
        ),
        "dpo": Stage(
            DPOConfig(pairs=1000, eval_pairs=EVAL_EXAMPLES, samples=2),
            TrainConfig(steps=100, batch_size=32, lr=5e-5, min_lr=5e-6, warmup_steps=10,
                        eval_interval=50, checkpoint_interval=50),
        ),
    },
}  # fmt: skip


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


def speedrun(
    out="runs/speedrun", *, backend=None, preset=None, resume=False, steps=None,
    sft_steps=None, dpo_steps=None, eval_examples=None, progress=True, dtype="float32",
):  # fmt: skip
    """Run every stage into ``out``; returns the path of ``report.md``.

    ``steps``, ``sft_steps`` and ``dpo_steps`` replace the preset's training lengths (0
    skips a post-training stage); ``eval_examples`` the number of held-out prompts;
    ``dtype`` the compute dtype of every stage (see the module doc).
    """
    with use_backend(backend):  # None: the current backend
        check_compute_dtype(get_backend(), dtype)
        name = preset or preset_for(get_backend())
        if name not in PRESETS:
            raise ValueError(f"unknown speedrun preset {name!r}; choose one of {sorted(PRESETS)}")
        stages, out = PRESETS[name], Path(out)
        started = time.perf_counter()
        pre_config, pre_train = stages["pretrain"]
        pre_config = pre_config.replace(out=str(out), resume=resume)
        pre_train = _train_config(pre_train, steps, progress, dtype)
        run = pretrain(pre_config, pre_train)
        seconds = {"pretrain": time.perf_counter() - started}
        post, model, stopped = {}, out, run.result.stopped_by
        for stage, (recipe, lengths) in zip(POST_TRAINING, ((sft, sft_steps), (dpo, dpo_steps))):
            config, train = stages[stage]
            if stopped or lengths == 0:
                continue
            changes = dict(model=str(model), out=str(out / stage), resume=resume)
            if eval_examples is not None:
                changes[_HELD_OUT[stage]] = eval_examples
            begun = time.perf_counter()
            train = _train_config(train, lengths, progress, dtype)
            post[stage] = recipe(config.replace(**changes), train)
            seconds[stage] = time.perf_counter() - begun
            model, stopped = out / stage, post[stage].result.stopped_by
        seconds["total"] = time.perf_counter() - started
        return write_report(run, pre_config, pre_train, name, seconds, post)


_HELD_OUT = {"sft": "eval_examples", "dpo": "eval_pairs"}  # each config's held-out count


def _train_config(train, steps, progress, dtype):
    """A preset's ``TrainConfig`` with another length (its warmup then follows the
    ``TrainConfig`` rule for that length), the progress bar on or off, and ``dtype``."""
    if steps is None:
        return train.replace(progress=progress, dtype=dtype)
    return train.replace(steps=steps, warmup_steps=None, progress=progress, dtype=dtype)


def write_report(run, pretrain_config, train_config, preset, seconds, post=None):
    """``report.md`` (and ``report.json``) in the run folder; returns the report's path.

    ``seconds``: each stage's wall time and the ``total``; ``post``: the post-training
    runs by stage name (an ``SFTRun``, a ``DPORun``). Every figure may be missing - a run
    stopped before its first evaluation has no validation loss, a finished run resumed
    trained nothing, a stopped stage has no measures after it - and the report says so.
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
        "total_seconds": seconds["total"],
        "stage_seconds": {k: v for k, v in seconds.items() if k != "total"},
        "data": run.data,
        "model_config": model.config.to_dict(),
        "pretrain_config": pretrain_config.to_dict(),
        "train_config": train_config.to_dict(),
        "samples": run.samples,
        "post_training": {name: _stage_facts(stage) for name, stage in (post or {}).items()},
    }
    facts = _nan_to_none(facts)
    with atomic_open(run.out / "report.json", "w") as file:
        json.dump(facts, file, indent=1)
    if facts["post_training"]:
        plot_stages(facts["post_training"], run.out / "stages.png")
    path = run.out / "report.md"
    with atomic_open(path, "w", encoding="utf-8") as file:
        file.write(_markdown(facts))
    return path


def _stage_facts(stage):
    """What the report keeps of a post-training run."""
    result = stage.result
    return {
        "outcome": describe_outcome(result, stage.steps),
        "steps": result.step,
        "train_loss": result.train_loss,
        "train_seconds": result.seconds,
        "before": stage.before,
        "after": stage.after,
        "folder": stage.out.name,
    }


# The measures the report shows for each post-training stage, with their headings
MEASURES = {
    "accuracy": "greedy answers right",
    "sampled_right": "sampled answers right",
    "preference_accuracy": "pairs: right answer likelier",
    "kl": "KL to the SFT model (nats)",
}


def plot_stages(post, path):
    """Bars of each measure (but the KL) for the pretrained model and after each stage."""
    from matplotlib.figure import Figure

    models = _models_measured(post)
    names = [m for m in MEASURES if m != "kl"]
    figure = Figure(figsize=(7, 3.2))
    axes = figure.subplots()
    width = 0.8 / len(models)
    for i, (label, measures) in enumerate(models):
        values = [measures.get(name) or 0.0 for name in names]
        axes.bar(np.arange(len(names)) + i * width, values, width, label=label)
    axes.set_xticks(
        np.arange(len(names)) + width * (len(models) - 1) / 2, [MEASURES[n] for n in names]
    )
    axes.set_ylim(0, 1)
    axes.set_ylabel("share of held-out prompts")
    axes.set_title("held-out task measures, stage by stage")
    axes.legend(fontsize=8)
    axes.grid(alpha=0.3, axis="y")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    return path


def _models_measured(post):
    """``(label, measures)`` for the pretrained model and the model after each stage."""
    models = []
    for name, stage in post.items():
        if not models:
            models.append(("pretrained" if name == "sft" else f"before {name}", stage["before"]))
        models.append((f"after {name}", stage["after"]))
    return models


def _nan_to_none(value):
    """JSON has no NaN: a figure nothing measured is null (in nested dicts too)."""
    if isinstance(value, dict):
        return {key: _nan_to_none(item) for key, item in value.items()}
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
    ]
    for name, stage in f["post_training"].items():
        lines.append(
            f"| {name} | {stage['outcome']}; {stage['steps']:,} steps in "
            f"{stage['train_seconds']:.0f} s, train loss {show(stage['train_loss'], '.3f')}; "
            f"the model in `{stage['folder']}/` |"
        )
    timings = ", ".join(f"{k} {v:.0f} s" for k, v in f["stage_seconds"].items())
    lines += [
        f"| total | {f['total_seconds']:.0f} s ({timings}) |",
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
    lines += _post_training_markdown(f["post_training"])
    lines += ["## Configs", ""]
    for key in ("model_config", "pretrain_config", "train_config"):
        lines += [f"### {key}", "", "```json", json.dumps(f[key], indent=1), "```", ""]
    lines += [
        "The model folder here loads with `Transformer.from_pretrained` and `transformers`;",
        "`tinyllm generate` streams text from it. `metrics.jsonl` holds every logged step.",
        "",
    ]
    return "\n".join(lines)


def _post_training_markdown(post):
    """The post-training section: the held-out measures of each model, and the plots."""
    if not post:
        return []
    models = _models_measured(post)
    names = [n for n in MEASURES if any(n in m for _, m in models)]
    tasks = sorted({n for _, m in models for n in m if n.startswith("accuracy_")})
    headings = [MEASURES[n] for n in names]
    headings += [f"{t.removeprefix('accuracy_')}: greedy right" for t in tasks]
    lines = [
        "## Post-training",
        "",
        "Measured on held-out test prompts of the checkable tasks (`tinyllm.data.tasks`): "
        "greedy answers exactly right, answers sampled at temperature 1 right, preference "
        "pairs whose right answer the model finds likelier than the wrong one, and the KL "
        "divergence from the SFT model on the model's own samples.",
        "",
        "| model | " + " | ".join(headings) + " |",
        "|---|" + "---|" * len(headings),
    ]
    for label, measures in models:
        cells = [show(measures.get(n), ".3f") for n in names + tasks]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "![post-training measures](stages.png)", ""]
    for name, stage in post.items():
        lines += [f"![{name} curves]({stage['folder']}/loss.png)", ""]
    return lines


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
