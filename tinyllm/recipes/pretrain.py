"""Pretraining from a corpus: tokenizer, token windows, model, the training loop, samples.

``pretrain(PretrainConfig(...))`` is what ``tinyllm pretrain`` runs. It

1. loads the corpus (``--corpus``: a shipped name, a text file, or ``hf:<dataset>``) and
   tokenizes it: one id per character (``--tokenizer char``, nanoGPT's Shakespeare recipe)
   or a byte-level BPE trained on the training split (``--tokenizer bpe``);
2. splits the ids 90/10 into training and validation text;
3. builds the model from a preset (its vocabulary resized to the tokenizer's);
4. trains with the shared ``Trainer``, sampling text at every evaluation;
5. leaves ``out`` as a model folder (config.json, model.safetensors, the tokenizer) that
   ``tinyllm generate``, ``Transformer.from_pretrained`` and ``transformers`` all read, with
   ``metrics.jsonl``, ``loss.png`` and ``checkpoints/`` beside it.

Ctrl-C or SIGTERM saves a checkpoint and returns at once: nothing is generated after the
loop stops. ``PretrainRun.outcome`` says how the run ended, and its figures (losses,
samples) come from the last evaluation logged in ``metrics.jsonl`` when this session
made none: a run stopped early, or a finished run resumed, still reports what it has.
"""

import dataclasses
import math
import time
from dataclasses import field
from pathlib import Path

import numpy as np

from ..backend import NAMES as BACKENDS
from ..backend import use_backend
from ..backend.threads import blas_threads, training_threads
from ..config import Config
from ..data import RandomBatches, corpus_tokens, train_val_split
from ..infer import generate
from ..models import PRESETS, Transformer, get_preset
from ..train import TrainConfig, Trainer, read_metrics

VAL_FRACTION = 0.1
TOKENIZERS = ("char", "bpe")


@dataclasses.dataclass(frozen=True)
class PretrainConfig(Config):
    preset: str = field(
        default="tiny",
        metadata={"help": "the model's shape (tinyllm.models.PRESETS)", "choices": tuple(PRESETS)},
    )
    corpus: str = field(
        default="tinyshakespeare",
        metadata={"help": "the text: a shipped corpus, a text file, or hf:<dataset>"},
    )
    tokenizer: str = field(
        default="char",
        metadata={
            "help": "char: one id per character; bpe: a byte-level BPE trained on the corpus",
            "choices": TOKENIZERS,
        },
    )
    vocab_size: int = field(
        default=1024, metadata={"help": "the BPE vocabulary's size (ignored for char)"}
    )
    context_length: int | None = field(
        default=None, metadata={"help": "tokens the model sees at once; none: the preset's"}
    )
    out: str = field(default="runs/pretrain", metadata={"help": "the run folder"})
    backend: str | None = field(
        default=None,
        metadata={"help": "the array library; none: the current one", "choices": BACKENDS},
    )
    resume: bool = field(
        default=False, metadata={"help": "continue the run in --out from its latest checkpoint"}
    )
    samples: int = field(default=2, metadata={"help": "texts generated at each evaluation"})
    sample_tokens: int = field(default=120, metadata={"help": "tokens in each sample"})
    temperature: float = field(
        default=0.8, metadata={"help": "sampling temperature; 0 always picks the likeliest token"}
    )
    top_k: int | None = field(
        default=40, metadata={"help": "sample among the k likeliest tokens only; none: all"}
    )

    def __post_init__(self):
        if self.tokenizer not in TOKENIZERS:
            raise ValueError(f"tokenizer={self.tokenizer!r}: expected 'char' or 'bpe'")
        for name in ("vocab_size", "samples", "sample_tokens"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)!r}: expected an integer >= 0")
        if not (isinstance(self.temperature, (int, float)) and self.temperature >= 0):
            raise ValueError(f"temperature={self.temperature!r}: expected a number >= 0")
        if self.top_k is not None and not (isinstance(self.top_k, int) and self.top_k >= 1):
            raise ValueError(f"top_k={self.top_k!r}: expected an integer >= 1 or None")


@dataclasses.dataclass
class PretrainRun:
    """What ``pretrain`` made: the model, its tokenizer, the result and the folder, with the
    figures a report needs when this session stopped early or had nothing left to train."""

    model: Transformer
    tokenizer: object
    result: object  # a TrainResult
    out: Path
    samples: list  # the newest evaluation's texts; [] before the first
    data: dict  # corpus facts for the report: characters, tokens, split sizes
    steps: int  # the steps the run was asked for (TrainConfig.steps)
    last_eval: dict | None  # the newest metrics.jsonl row with a validation loss

    @property
    def trained_steps(self):
        """Optimizer steps taken in this session (0 when a finished run is resumed)."""
        return self.result.steps_this_session

    @property
    def start_step(self):
        """Where this session began: 0, or the checkpoint it resumed from."""
        return self.result.step - self.result.steps_this_session

    @property
    def val_loss(self):
        """The newest validation loss (``val_step`` says when), None before the first."""
        return None if self.last_eval is None else self.last_eval["val_loss"]

    @property
    def val_step(self):
        return None if self.last_eval is None else self.last_eval["step"]

    @property
    def outcome(self):
        """How the run ended, in one sentence.

        >>> from tinyllm.train import TrainResult
        >>> result = TrainResult(step=37, train_loss=4.2, val_loss=None, best_val_loss=None,
        ...                      tokens_per_second=300.0, seconds=12.0, stopped_by="SIGINT",
        ...                      steps_this_session=37)
        >>> PretrainRun(None, None, result, Path("run"), [], {}, 2000, None).outcome
        'stopped by SIGINT at step 37 before the first evaluation; resume with --resume'
        """
        return describe_outcome(self.result, self.steps, evaluated=self.last_eval is not None)


def describe_outcome(result, steps, *, evaluated=True):
    """How a run of ``steps`` steps that returned ``result`` (a ``TrainResult``) ended, in
    one sentence; ``evaluated``: whether it was evaluated before it stopped."""
    step, stopped_by, trained = result.step, result.stopped_by, result.steps_this_session
    if trained == 0 and step >= steps:
        return f"this run had already finished at step {step}; nothing was trained"
    if stopped_by and step < steps:
        before = "" if evaluated else " before the first evaluation"
        return f"stopped by {stopped_by} at step {step}{before}; resume with --resume"
    start = step - trained
    resumed = f" (resumed from step {start})" if start else ""
    return f"finished at step {step}{resumed}"


def is_figure(value):
    """True for a number that can be shown; False for None and NaN (nothing measured)."""
    return value is not None and not math.isnan(value)


def show(value, spec):
    """``value`` formatted with ``spec``, or "-" when nothing was measured.

    >>> show(3.14159, ".2f"), show(None, ".2f"), show(float("nan"), ",.0f")
    ('3.14', '-', '-')
    """
    return format(value, spec) if is_figure(value) else "-"


def pretrain(config, train=None):
    """Run the recipe in the module docstring (``train``: a ``TrainConfig``, None for the
    defaults); returns a ``PretrainRun``."""
    train = TrainConfig() if train is None else train
    with use_backend(config.backend) as backend:  # None: the current backend
        threads = training_threads(get_preset(config.preset).d_model, backend.name)
        with blas_threads(threads):  # a narrow model: one thread, robust on a busy machine
            return _pretrain(config, train)


def _pretrain(config, train):
    start = time.perf_counter()
    view = corpus_tokens(
        config.corpus,
        view=config.tokenizer,
        vocab_size=config.vocab_size,
        val_fraction=VAL_FRACTION,
    )
    tokenizer, tokens = view.tokenizer, view.tokens.astype(np.int64)
    tokenize_seconds = time.perf_counter() - start
    end_of_text = getattr(tokenizer, "special_tokens", {}).get("<|endoftext|>")  # None: char
    model_config = get_preset(
        config.preset, vocab_size=tokenizer.vocab_size, eos_token_id=end_of_text
    )
    if config.context_length is not None:
        model_config = model_config.replace(context_length=config.context_length)
    context = model_config.context_length
    train_tokens, val_tokens = train_val_split(tokens, VAL_FRACTION)
    batches = RandomBatches(train_tokens, train.micro_batch_size, context, seed=train.seed)
    val_source = RandomBatches(val_tokens, train.micro_batch_size, context, seed=train.seed + 1)
    val_batches = [next(val_source) for _ in range(train.eval_batches)]
    model = Transformer(model_config, seed=train.seed)
    prompts = _prompts(tokenizer, val_tokens, config.samples)

    def sample(model):  # in the training's compute dtype: what the trained model does there
        return sample_texts(model, tokenizer, prompts, config, dtype=train.dtype)

    trainer = Trainer(
        model,
        train,
        batches,
        val_batches=val_batches,
        out_dir=config.out,
        sample_fn=sample if config.samples else None,
        tokenizer=tokenizer,
        title=f"pretrain {config.preset}",
    )
    result = trainer.fit(resume=config.resume)
    data = {
        "corpus": config.corpus,
        "tokens": len(tokens),
        "train_tokens": len(train_tokens),
        "val_tokens": len(val_tokens),
        "vocab_size": tokenizer.vocab_size,
        "tokenize_seconds": tokenize_seconds,
    }
    rows = read_metrics(Path(config.out) / "metrics.jsonl")  # this run's, resumed or not
    evaluations = [row for row in rows if "val_loss" in row]
    samples = result.samples
    if samples is None:  # the last step was not evaluated: the newest logged texts, if any
        sampled = [row["samples"] for row in rows if "samples" in row]
        samples = sampled[-1] if sampled else []
    return PretrainRun(
        model, tokenizer, result, Path(config.out), samples, data, steps=train.steps,
        last_eval=evaluations[-1] if evaluations else None,
    )  # fmt: skip


def sample_texts(model, tokenizer, prompts, config, seed=0, dtype="float32"):
    """One continuation of each prompt (a list of token-id lists), decoded to text;
    ``dtype``: the compute dtype of generation's forwards."""
    texts = []
    for index, prompt in enumerate(prompts):
        ids = generate(
            model,
            np.asarray([prompt]),
            config.sample_tokens,
            temperature=config.temperature,
            top_k=config.top_k,
            seed=seed + index,
            dtype=dtype,
        )
        texts.append(tokenizer.decode(ids[0].tolist()))
    return texts


def _prompts(tokenizer, val_tokens, n):
    """``n`` short prompts: the newline token (a fresh start), then lines of validation text."""
    newline = tokenizer.encode("\n")
    prompts = [newline]
    step = max(1, len(val_tokens) // max(n, 1))
    for i in range(1, n):
        prompts.append(val_tokens[i * step : i * step + 8].tolist())
    return prompts[:n]
