"""Supervised fine-tuning as a run: a pretrained model folder in, a chat model folder out.

1. Load the model and its tokenizer (which must have the chat tokens: a BPE run folder).
2. Conversations: the checkable tasks (``tinyllm.data.tasks``, the default) or a JSONL
   file / ``hf:<dataset>`` of ``messages``; each encoded with the chat template, the loss on
   the assistant's tokens only, packed into rows of the context length.
3. Train with the one ``Trainer`` and ``sft_loss``; at each evaluation, the exact-match
   accuracy of greedy answers to held-out validation prompts (tasks) and the perplexity of
   held-out responses.
4. Before and after, on held-out test prompts (tasks): the accuracy of greedy answers, the
   share of right sampled answers and of preference pairs whose right answer the model
   finds more likely (``task_measures``), in the run's ``sft.json``.

``fine_tune`` is this run with an optional step around the training that changes what
trains and what is written: LoRA (``lora.py``) freezes the model, adds adapters and writes
them in PEFT's format.
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from ..backend import use_backend
from ..data import RowBatches
from ..data.preferences import load_conversations
from ..data.sft import pack, sft_tokens
from ..data.tasks import task_examples
from ..infer.evaluate import exact_match, response_perplexity, task_measures
from ..train import TrainConfig, Trainer
from ..train.sft import sft_loss
from .posttrain import (
    HeldOut,
    PostTrainConfig,
    data_field,
    held_out,
    load_chat_model,
    split_off,
    training_threads_for,
    write_summary,
)

# Fine-tuning's training defaults (the other TrainConfig fields keep theirs): a few hundred
# steps from a pretrained model
TRAIN_DEFAULTS = dict(steps=400, batch_size=8, lr=2e-3, min_lr=2e-4, eval_interval=100)


@dataclass(frozen=True)
class SFTConfig(PostTrainConfig):
    model: str = field(default="runs/speedrun", metadata={"help": "the pretrained model folder"})
    data: str = data_field("messages")
    out: str = field(default="runs/sft", metadata={"help": "the run folder"})
    examples: int = field(default=1500, metadata={"help": "training conversations (tasks)"})
    eval_examples: int = field(
        default=100, metadata={"help": "held-out prompts for the accuracy, per evaluation"}
    )

    COUNTS = ("examples", "eval_examples")


@dataclass
class SFTRun:
    """What ``sft`` returns: the model, its tokenizer, the training result, the run folder
    and the held-out measures before and after."""

    model: object
    tokenizer: object
    result: object
    steps: int  # the steps the run was asked for
    out: Path
    before: dict  # task_measures on held-out test prompts (tasks only; else empty)
    after: dict


def sft(config, train=None):
    """Run the recipe in the module docstring; returns an ``SFTRun``."""
    return fine_tune(config, TrainConfig(**TRAIN_DEFAULTS) if train is None else train)


def fine_tune(config, train, name="sft", step=None):
    """The SFT run, written to ``<out>/<name>.json``. ``step`` (optional) works around the
    training: ``step.prepare(model, tokenizer, rows)`` changes the loaded model before it
    (LoRA adds its adapters; ``rows`` are the packed training rows) and
    ``step.finish(model, tokenizer)`` writes what it adds after; each returns a dict of
    facts for the summary."""
    with use_backend(config.backend):
        return _fine_tune(config, train, name, step)


def _fine_tune(config, train, name, step):
    model, tokenizer = load_chat_model(config.model)
    data = chat_data(config, train.seed)
    rows = packed_rows(tokenizer, data.train, model.config.context_length)
    facts = {} if step is None else step.prepare(model, tokenizer, rows)
    with training_threads_for(model):
        before = held_out_measures(model, tokenizer, data)
        trainer = Trainer(
            model, train, RowBatches(tuple(rows), train.micro_batch_size, seed=train.seed),
            loss_fn=sft_loss, eval_fn=lambda model: validation_scores(model, tokenizer, data),
            out_dir=config.out, tokenizer=tokenizer, title=name,
        )  # fmt: skip
        result = trainer.fit(resume=config.resume)
        stopped = result.stopped_by is not None
        after = {} if stopped else held_out_measures(model, tokenizer, data)  # a stop is quick
    if step is not None:
        facts |= step.finish(model, tokenizer)
    out = write_summary(config, name, before=before, after=after,
                        conversations=len(data.train), rows=len(rows.ids), **facts)  # fmt: skip
    return SFTRun(model, tokenizer, result, train.steps, out, before, after)


class ChatData(NamedTuple):
    """A chat run's conversations: ``train``, ``val_conversations`` held out for the response
    perplexity, and on the tasks the held-out validation and test examples with their
    preference pairs (``HeldOut``; None for data without checkable answers)."""

    train: list
    val_conversations: list
    val: HeldOut | None
    test: HeldOut | None


def chat_data(config, seed):
    """The conversations of ``config`` (an ``SFTConfig``): ``examples`` training tasks and
    ``eval_examples`` held out per split, or a file's conversations with 5% held out."""
    if config.data == "tasks":
        examples = task_examples(config.task_names, config.examples, split="train", seed=seed)
        val, test = (held_out(config, s, config.eval_examples, seed) for s in ("val", "test"))
        return ChatData([e.messages for e in examples], [e.messages for e in val.examples],
                        val, test)  # fmt: skip
    val, train = split_off(load_conversations(config.data), config.data)  # val: perplexity
    return ChatData(train, val, None, None)


def packed_rows(tokenizer, conversations, context):
    """``conversations`` encoded with the chat template (the loss on the assistant's tokens)
    and packed into rows of ``context`` tokens (``PackedRows``)."""
    examples = [
        sft_tokens(tokenizer, c, context_length=context, index=i)
        for i, c in enumerate(conversations)
    ]
    return pack(examples, context)


def validation_scores(model, tokenizer, data):
    """What a chat run logs at each evaluation: the perplexity of the held-out responses
    and, on the tasks, the accuracy of greedy answers to the validation prompts."""
    scores = {"response_ppl": response_perplexity(model, tokenizer, data.val_conversations)}
    if data.val is not None:
        scores["accuracy"] = exact_match(model, tokenizer, data.val.examples)[0]
    return scores


def held_out_measures(model, tokenizer, data):
    """``task_measures`` on the held-out test prompts and pairs (tasks only; else empty)."""
    if data.test is None:
        return {}
    return task_measures(model, tokenizer, data.test.examples, pairs=data.test.pairs)
