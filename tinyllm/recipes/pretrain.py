"""Pretraining from a corpus: tokenizer, token windows, model, the training loop, samples.

``pretrain(PretrainConfig(...))`` is what ``tinyllm pretrain`` runs. It

1. loads the corpus (``--corpus``: a shipped name, a text file, or ``hf:<dataset>``) and
   tokenizes it: one id per character (``--tokenizer char``, nanoGPT's Shakespeare recipe)
   or a byte-level BPE trained on the training split (``--tokenizer bpe``);
2. splits the ids 90/10 into training and validation text;
3. builds the model from a preset (its vocabulary resized to the tokenizer's);
4. trains with the shared ``Trainer``, sampling text at every evaluation;
5. leaves ``out`` as a model folder (config.json, model.safetensors, the tokenizer) that
   ``tinyllm sample``, ``Transformer.from_pretrained`` and ``transformers`` all read, with
   ``metrics.jsonl``, ``loss.png`` and ``checkpoints/`` beside it.
"""

import dataclasses
import time
from pathlib import Path

import numpy as np

from ..backend import use_backend
from ..backend.threads import blas_threads, training_threads
from ..config import Config
from ..data import RandomBatches, corpus_tokens, train_val_split
from ..infer import generate
from ..models import Transformer, get_preset
from ..train import TrainConfig, Trainer

VAL_FRACTION = 0.1


@dataclasses.dataclass(frozen=True)
class PretrainConfig(Config):
    preset: str = "tiny"  # a model preset (tinyllm.models.PRESETS)
    corpus: str = "tinyshakespeare"  # a shipped corpus, a text file, or hf:<dataset>
    tokenizer: str = "char"  # "char" (one id per character) or "bpe"
    vocab_size: int = 1024  # the BPE vocabulary (ignored for "char")
    context_length: int | None = None  # None: the preset's
    out: str = "runs/pretrain"  # the run folder
    backend: str | None = None  # numpy, cupy or jax; None: the current one
    resume: bool = False  # continue the run in ``out`` from its latest checkpoint
    samples: int = 2  # texts generated at each evaluation
    sample_tokens: int = 120  # tokens per sample
    temperature: float = 0.8
    top_k: int | None = 40

    def __post_init__(self):
        if self.tokenizer not in ("char", "bpe"):
            raise ValueError(f"tokenizer={self.tokenizer!r}: expected 'char' or 'bpe'")
        for name in ("vocab_size", "samples", "sample_tokens"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)!r}: expected an integer >= 0")


@dataclasses.dataclass
class PretrainRun:
    """What ``pretrain`` made: the model, its tokenizer, the result and the folder."""

    model: Transformer
    tokenizer: object
    result: object  # a TrainResult
    out: Path
    samples: list
    data: dict  # corpus facts for the report: characters, tokens, split sizes


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
    model_config = get_preset(config.preset, vocab_size=tokenizer.vocab_size)
    if config.context_length is not None:
        model_config = model_config.replace(context_length=config.context_length)
    context = model_config.context_length
    train_tokens, val_tokens = train_val_split(tokens, VAL_FRACTION)
    batches = RandomBatches(train_tokens, train.micro_batch_size, context, seed=train.seed)
    val_source = RandomBatches(val_tokens, train.micro_batch_size, context, seed=train.seed + 1)
    val_batches = [next(val_source) for _ in range(train.eval_batches)]
    model = Transformer(model_config, seed=train.seed)
    prompts = _prompts(tokenizer, val_tokens, config.samples)

    def sample(model):
        return sample_texts(model, tokenizer, prompts, config)

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
    samples = result.samples if result.samples is not None else sample(model)  # not twice
    return PretrainRun(model, tokenizer, result, Path(config.out), samples, data)


def sample_texts(model, tokenizer, prompts, config, seed=0):
    """One continuation of each prompt (a list of token-id lists), decoded to text."""
    texts = []
    for index, prompt in enumerate(prompts):
        ids = generate(
            model,
            np.asarray([prompt]),
            config.sample_tokens,
            temperature=config.temperature,
            top_k=config.top_k,
            seed=seed + index,
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
